//! The order API's configuration, read from environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use foodorder_common::config::{DatabaseConfig, KafkaConfig, env_or, env_seconds};
use foodorder_common::outbox::RelayConfig;

/// Everything the order API needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `ORDER_API_ADDR` (default `0.0.0.0:50051`); port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// PostgreSQL settings.
    pub database: DatabaseConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Outbox relay settings.
    pub relay: RelayConfig,
    /// `SHUTDOWN_GRACE_SECONDS` (default 10): how long calls in flight (and
    /// open streams) may run after a shutdown signal before they are cut.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            listen_addr: env_or("ORDER_API_ADDR", SocketAddr::from(([0, 0, 0, 0], 50051)))?,
            database: DatabaseConfig::from_env()?,
            kafka: KafkaConfig::from_env()?,
            relay: RelayConfig::from_env()?,
            shutdown_grace: env_seconds("SHUTDOWN_GRACE_SECONDS", 10.0)?,
        })
    }
}
