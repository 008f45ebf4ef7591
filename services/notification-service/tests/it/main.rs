//! The notification service's integration tests (one binary): against a real PostgreSQL and a real broker.

mod notifications;
