//! Code every foodorder service shares, written once: typed configuration from
//! the environment, telemetry set-up, the shutdown signal, the PostgreSQL pool
//! and migrations, Kafka client builders and headers, event helpers and the
//! transactional-outbox relay.

pub mod backoff;
pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod fuzzing;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod record_headers;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
