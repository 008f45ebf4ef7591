//! How the notification service is put together on the [`ServiceHost`]: the
//! `payment.completed` consumer with the notification handler.

use foodorder_contract::topics::PAYMENT_COMPLETED;
use foodorder_runtime::health::DatabaseProbe;
use foodorder_runtime::host::ServiceHost;
use foodorder_runtime::shutdown::unless_stopped;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handler::NotificationHandler;
use crate::notifier::LogNotifier;
use crate::{DEAD_LETTER_TOPIC, SCHEMA};

/// Service name: logs, traces, Kafka client ids.
pub const NAME: &str = "notification-service";

/// Builds the service on its host: over `pool` when given (already migrated
/// for the `notifications` schema), else connecting to PostgreSQL (creating the
/// database, migrating the schema); the HTTP endpoint is bound.
pub async fn build(config: Config, pool: Option<PgPool>) -> anyhow::Result<ServiceHost> {
    let host = ServiceHost::for_consumer(NAME, &SCHEMA, &config.consumer, pool).await?;
    let handler = NotificationHandler::new(host.pool().clone(), LogNotifier)
        .with_metrics(host.metrics())
        .with_send_timeout(config.send_timeout())
        .with_incidents(config.incidents);
    let settings = config
        .consumer
        .settings(PAYMENT_COMPLETED, DEAD_LETTER_TOPIC);
    // Ready when a notification could be recorded.
    Ok(host
        .database_probe(DatabaseProbe::write_path(
            &["notifications.notifications"],
            &[],
        ))
        .consumer(settings, handler))
}

/// Reads the configuration, builds the service and runs it until `shutdown`.
pub async fn run(shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match unless_stopped(&shutdown, build(config, None)).await? {
        Some(host) => host.run_until_stopped(shutdown).await,
        None => Ok(()),
    }
}
