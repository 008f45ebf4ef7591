//! Building and running the notification service: pool and migrations, the
//! `payment.completed` consumer and the `/healthz` endpoint (see
//! `foodorder_common::service`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foodorder_common::consumer::ConsumerSettings;
use foodorder_common::service::{ConsumerService, ServiceResources};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handler::NotificationHandler;
use crate::notifier::LogNotifier;

/// A built, not yet running, notification service.
pub struct Application {
    config: Config,
    resources: ServiceResources,
}

impl Application {
    /// Connects to PostgreSQL (creating the database, running migrations) and binds the health endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let resources = ServiceResources::connect(&config.database, config.health_addr).await?;
        Ok(Self { config, resources })
    }

    /// Uses an existing, migrated pool.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        let resources = ServiceResources::with_pool(pool, config.health_addr).await?;
        Ok(Self { config, resources })
    }

    /// Address of the health endpoint.
    pub fn health_addr(&self) -> SocketAddr {
        self.resources.health_addr()
    }

    /// Consumes until `shutdown`, then drains, commits and closes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            resources:
                ServiceResources {
                    pool,
                    health_listener,
                    metrics,
                },
        } = self;
        ConsumerService {
            name: "notification-service",
            settings: ConsumerSettings {
                group_id: config.group_id.clone(),
                topic: config.kafka.topics.payment_completed.clone(),
                dlq_topic: config.kafka.topics.notification_dlq.clone(),
                max_in_flight: config.max_in_flight,
                commit_interval: Duration::from_millis(200),
                shutdown_grace: config.shutdown_grace,
            },
            handler: Arc::new(
                NotificationHandler::new(pool.clone(), LogNotifier)
                    .with_metrics(&metrics)
                    .with_incidents(config.incidents),
            ),
            pool,
            kafka: config.kafka,
            relay: None,
            health_listener,
            metrics,
        }
        .run(shutdown)
        .await
    }
}
