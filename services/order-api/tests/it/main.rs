//! The order API's integration tests (one binary): against a real PostgreSQL and a real broker.

mod backpressure;
mod broker_outage;
mod database_bounds;
mod deadlines;
mod generated_input;
mod group_commit;
mod payment_outcomes;
mod place_order;
mod rate_limit;
mod read_and_watch;
mod readiness;
mod support;
mod tls;
mod two_instances;
mod unprocessable;
