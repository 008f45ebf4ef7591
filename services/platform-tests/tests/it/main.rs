//! Cross-service tests (one binary): the three services as real processes, on a real PostgreSQL and a real broker (and Jaeger for the tracing test).

mod broker_restart;
mod end_to_end;
mod jaeger;
mod kafka_acls;
mod roles;
mod schema_split;
mod support;
mod tracing;
