//! What every foodorder service runs on, with no domain of its own: typed
//! configuration from the environment, the PostgreSQL pool with deadlines and
//! schema migration, Kafka clients and topic creation, the effectively-once
//! consumer framework, the transactional-outbox relay, telemetry, metrics,
//! the HTTP health endpoint, shutdown, and the [`host::ServiceHost`] that
//! starts and stops all of them in one declared order.

pub mod backoff;
pub mod batch;
pub mod config;
pub mod consumer;
pub mod db;
pub mod health;
pub mod host;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod record_headers;
pub mod shutdown;
pub mod telemetry;
