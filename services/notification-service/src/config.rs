//! The notification service's configuration, read from environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use foodorder_common::config::{DatabaseConfig, KafkaConfig, env_count, env_or, env_seconds};

/// Everything the notification service needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// PostgreSQL settings.
    pub database: DatabaseConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// `NOTIFICATION_MAX_IN_FLIGHT` (default 64): messages handled concurrently.
    pub max_in_flight: usize,
    /// `NOTIFICATION_CONSUMER_GROUP` (default `notification-service`).
    pub group_id: String,
    /// `NOTIFICATION_HEALTH_ADDR` (default `0.0.0.0:9103`): `GET /healthz` (liveness) and `GET /readyz` (subscribed, holding its assignment).
    pub health_addr: SocketAddr,
    /// `SHUTDOWN_GRACE_SECONDS` (default 10).
    pub shutdown_grace: Duration,
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
    /// Reads the configuration from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            database: DatabaseConfig::from_env()?,
            kafka: KafkaConfig::from_env()?,
            max_in_flight: env_count("NOTIFICATION_MAX_IN_FLIGHT", 64)?,
            group_id: env_or(
                "NOTIFICATION_CONSUMER_GROUP",
                "notification-service".to_owned(),
            )?,
            health_addr: env_or(
                "NOTIFICATION_HEALTH_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 9103)),
            )?,
            shutdown_grace: env_seconds("SHUTDOWN_GRACE_SECONDS", 10.0)?,
            incidents: Incidents {
                send_delay: env_seconds("NOTIFICATION_SEND_DELAY", 0.0)?,
                leak_bytes_per_message: env_or("NOTIFICATION_LEAK_BYTES_PER_MESSAGE", 0)?,
            },
        })
    }
}
