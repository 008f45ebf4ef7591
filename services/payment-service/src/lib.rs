//! The payment service: consumes `order.placed`, pays through a deliberately
//! unreliable mock gateway (latency, timeouts, declines) with retries and a
//! circuit breaker, and records exactly one payment attempt and the order's
//! final status per order, publishing `payment.completed` via the outbox.

pub mod breaker;
pub mod config;
pub mod gateway;
pub mod handler;
pub mod processor;
pub mod startup;

pub use config::Config;
pub use startup::Application;
