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
        Ok(Self {
            consumer: ConsumerConfig::from_env("NOTIFICATION", "notification-service", 64, 9103)?,
            incidents: Incidents {
                send_delay: env_seconds("NOTIFICATION_SEND_DELAY", 0.0)?,
                leak_bytes_per_message: env_or("NOTIFICATION_LEAK_BYTES_PER_MESSAGE", 0)?,
            },
        })
    }
}
