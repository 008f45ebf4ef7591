//! The payment service's integration tests (one binary): against a real PostgreSQL and a real broker.

mod crash_safety;
mod migrate_only;
mod outages;
mod payment_flow;
mod rebalance;
mod support;
