//! How the notification service is put together on the [`ServiceHost`]: the
//! `payment.completed` consumer with the notification handler.

use std::net::SocketAddr;

use foodorder_contract::topics::PAYMENT_COMPLETED;
use foodorder_runtime::host::ServiceHost;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handler::NotificationHandler;
use crate::notifier::LogNotifier;
use crate::{DEAD_LETTER_TOPIC, SCHEMA};

/// Service name: logs, traces, Kafka client ids.
pub const NAME: &str = "notification-service";

/// The notification service, built and ready to run.
pub struct Application {
    host: ServiceHost,
}

impl Application {
    /// Connects to PostgreSQL (creating the database, migrating the
    /// `notifications` schema) and binds the HTTP endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let consumer = &config.consumer;
        let host = ServiceHost::connect(
            NAME,
            &consumer.database,
            &SCHEMA,
            consumer.kafka.clone(),
            consumer.health_addr,
        )
        .await?;
        Ok(Self::assemble(config, host))
    }

    /// Uses an existing pool, already migrated for the `notifications` schema.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        let consumer = &config.consumer;
        let host = ServiceHost::with_pool(
            NAME,
            pool,
            &SCHEMA,
            consumer.kafka.clone(),
            consumer.health_addr,
        )
        .await?;
        Ok(Self::assemble(config, host))
    }

    fn assemble(config: Config, host: ServiceHost) -> Self {
        let handler = NotificationHandler::new(host.pool().clone(), LogNotifier)
            .with_metrics(host.metrics())
            .with_incidents(config.incidents);
        let host = host
            .consumer(
                config
                    .consumer
                    .settings(PAYMENT_COMPLETED, DEAD_LETTER_TOPIC),
                handler,
            )
            .shutdown_grace(config.consumer.shutdown_grace);
        Self { host }
    }

    /// Address of the HTTP endpoint.
    pub fn health_addr(&self) -> SocketAddr {
        self.host.http_addr()
    }

    /// Consumes until `shutdown`, then drains, commits and closes the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.host.run_until_stopped(shutdown).await
    }
}
