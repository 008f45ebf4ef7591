//! Building and running the payment service: pool and migrations, the
//! `order.placed` consumer, the outbox relay for `payment.completed`, and the
//! `/healthz` endpoint (see `foodorder_common::service`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foodorder_common::consumer::ConsumerSettings;
use foodorder_common::outbox::RelayConfig;
use foodorder_common::service::{ConsumerService, ServiceResources};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::gateway::MockGateway;
use crate::handler::PaymentHandler;
use crate::processor::PaymentProcessor;
use sqlx::postgres::PgPoolOptions;

/// A built, not yet running, payment service.
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

    /// Consumes until `shutdown`, then drains in-flight payments, commits, stops the relay.
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
        // The mock gateway keeps its ledger through a pool of its own, as a
        // remote gateway would: consumers holding every service connection
        // must not make the gateway look slow (and trip the breaker).
        let gateway_pool = PgPoolOptions::new()
            .max_connections(config.gateway.db_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let processor = Arc::new(
            PaymentProcessor::new(
                MockGateway::new(gateway_pool, config.gateway.clone()),
                CircuitBreaker::new(config.breaker.clone()),
                config.payment.clone(),
            )
            .with_metrics(&metrics),
        );
        let handler = PaymentHandler::new(
            pool.clone(),
            processor,
            config.kafka.topics.payment_completed.clone(),
            config.crash_after_charge,
        );
        let relay = RelayConfig {
            topics: vec![config.kafka.topics.payment_completed.clone()],
            ..config.relay
        };
        ConsumerService {
            name: "payment-service",
            settings: ConsumerSettings {
                group_id: config.group_id.clone(),
                topic: config.kafka.topics.order_placed.clone(),
                dlq_topic: config.kafka.topics.payment_dlq.clone(),
                max_in_flight: config.max_in_flight,
                commit_interval: Duration::from_millis(200),
                shutdown_grace: config.shutdown_grace,
            },
            pool,
            kafka: config.kafka,
            relay: Some(relay),
            health_listener,
            metrics,
            handler: Arc::new(handler),
        }
        .run(shutdown)
        .await
    }
}
