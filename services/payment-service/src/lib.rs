//! The payment service: consumes `order.placed`, pays through a deliberately
//! unreliable mock gateway (latency, timeouts, declines) with retries and a
//! circuit breaker, and records exactly one payment attempt and the order's
//! final status per order, publishing `payment.completed` via the outbox.

pub mod breaker;
pub mod config;
pub mod gateway;
pub mod gateway_control;
pub mod handler;
pub mod processor;
pub mod startup;

pub use config::Config;
pub use startup::{build, run};

use foodorder_runtime::db::Schema;

/// The payment service's schema: payment requests and attempts, the gateway ledger, outbox.
pub static SCHEMA: Schema = Schema::new("payments", sqlx::migrate!("../../migrations/payments"));

/// Where `order.placed` records the payment service cannot read go.
pub const DEAD_LETTER_TOPIC: &str = "payment.dlq";
