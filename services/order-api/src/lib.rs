//! The order API: a tonic gRPC server for `foodorder.v1.OrderService` with
//! server reflection and gRPC health, backed by PostgreSQL, publishing
//! `OrderPlaced` events through the transactional outbox, recording payment
//! outcomes from `PaymentCompleted` events and deciding what becomes of the
//! orders the payment service declares unprocessable (`OrderUnprocessable`).
//! It owns the `orders` schema.

pub mod backpressure;
pub mod config;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod group_commit;
pub mod grpc_telemetry;
pub mod limits;
pub mod payment_outcomes;
pub mod rate_limit;
pub mod repository;
pub mod request_context;
pub mod service;
pub mod startup;
pub mod tls;
pub mod unprocessable;
pub mod watch;

pub use config::Config;
pub use startup::Application;

use foodorder_runtime::db::Schema;

/// The order API's schema: menu, orders, order items, payment summaries, outbox.
pub static SCHEMA: Schema = Schema::new("orders", sqlx::migrate!("../../migrations/orders"));

/// Where `payment.completed` and `order.unprocessable` records the order API
/// cannot read go.
pub const DEAD_LETTER_TOPIC: &str = "order.dlq";
