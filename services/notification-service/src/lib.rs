//! The notification service: consumes `payment.completed` and sends exactly
//! one structured notification per order, deduplicated in PostgreSQL in the
//! same transaction that records it.

pub mod config;
pub mod handler;
pub mod notifier;
pub mod startup;

pub use config::Config;
pub use startup::{build, run};

use foodorder_runtime::db::Schema;

/// The notification service's schema: the notifications sent.
pub static SCHEMA: Schema = Schema::new(
    "notifications",
    sqlx::migrate!("../../migrations/notifications"),
);

/// Where `payment.completed` records the notification service cannot read go.
pub const DEAD_LETTER_TOPIC: &str = "notification.dlq";
