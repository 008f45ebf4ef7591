//! The notification service's configuration, read from environment variables.

use std::time::Duration;

use foodorder_runtime::config::{env_or, env_seconds};
use foodorder_runtime::consumer::ConsumerConfig;

/// Everything the notification service needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `NOTIFICATION_MAX_IN_FLIGHT` (default 64), `NOTIFICATION_CONSUMER_GROUP`
    /// (`notification-service`), `NOTIFICATION_HEALTH_ADDR` (`0.0.0.0:9103`),
    /// the database, Kafka and the shutdown grace.
    pub consumer: ConsumerConfig,
    /// Planned incidents, off by default.
    pub incidents: Incidents,
}

/// The planned incidents (the roadmap's drills), each switched on by a setting.
#[derive(Clone, Debug, Default)]
pub struct Incidents {
    /// `NOTIFICATION_SEND_DELAY` (seconds, default 0): every send takes this
    /// long, as a slow email provider would; the backlog (consumer lag) grows
    /// while records arrive faster than `max_in_flight / delay`.
    pub send_delay: Duration,
    /// `NOTIFICATION_LEAK_BYTES_PER_MESSAGE` (default 0): memory kept for good
    /// per handled record, a slow leak that `process_resident_memory_bytes` shows.
    pub leak_bytes_per_message: usize,
}

impl Config {
    /// Settings for a test (see [`ConsumerConfig::for_tests`]), no incidents.
    pub fn for_tests() -> Self {
        Self {
            consumer: ConsumerConfig::for_tests("notification"),
            incidents: Incidents::default(),
        }
    }

    /// Reads the configuration from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let config = Self {
            consumer: ConsumerConfig::from_env("NOTIFICATION", "notification-service", 64, 9103)?,
            incidents: Incidents {
                send_delay: env_seconds("NOTIFICATION_SEND_DELAY", 0.0)?,
                leak_bytes_per_message: env_or("NOTIFICATION_LEAK_BYTES_PER_MESSAGE", 0)?,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// How long one send may take: half of the shorter of the handler's bound
    /// and the time PostgreSQL lets a session sit idle in a transaction (a
    /// notification is sent inside its transaction, with the others of its
    /// batch). A send cut there fails alone: its claim is withdrawn and its
    /// record retried, while the batch commits the sends that went through.
    pub fn send_timeout(&self) -> Duration {
        let idle = self.consumer.database.timeouts.idle_in_transaction;
        let bound = if idle.is_zero() {
            self.consumer.handler_timeout
        } else {
            self.consumer.handler_timeout.min(idle)
        };
        bound / 2
    }

    /// A planned send delay must fit within a send's bound, or every send
    /// would be cut and retried for ever.
    fn validate(&self) -> anyhow::Result<()> {
        let send_delay = self.incidents.send_delay;
        let send_timeout = self.send_timeout();
        anyhow::ensure!(
            send_delay < send_timeout,
            "NOTIFICATION_SEND_DELAY ({send_delay:?}) must be shorter than a send's bound ({send_timeout:?}): \
             half of the shorter of NOTIFICATION_HANDLER_TIMEOUT_MS ({:?}) and \
             DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS ({:?}), since a notification is sent inside its transaction",
            self.consumer.handler_timeout,
            self.consumer.database.timeouts.idle_in_transaction
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_longer_than_the_bounds_is_refused_at_start() {
        let mut config = Config::for_tests();
        config.incidents.send_delay = Duration::from_secs(2);
        assert!(config.validate().is_ok());
        config.incidents.send_delay = Duration::from_secs(90);
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("NOTIFICATION_HANDLER_TIMEOUT_MS"),
            "{refused}"
        );
        config.consumer.handler_timeout = Duration::from_secs(600);
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS"),
            "{refused}"
        );
    }
}
