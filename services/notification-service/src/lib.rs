//! The notification service: consumes `payment.completed` and sends exactly
//! one structured notification per order, deduplicated in PostgreSQL in the
//! same transaction that records it.

pub mod config;
pub mod handler;
pub mod notifier;
pub mod startup;

pub use config::Config;
pub use startup::Application;
