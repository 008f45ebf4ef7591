//! Building and running the payment service: pool and migrations, the
//! `order.placed` consumer, the outbox relay for `payment.completed`, and the
//! `/healthz` endpoint; ordered teardown on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use foodorder_common::consumer::{self, ConsumerSettings};
use foodorder_common::health::{self, Readiness};
use foodorder_common::{db, outbox};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::gateway::MockGateway;
use crate::handler::PaymentHandler;
use crate::processor::PaymentProcessor;

/// A built, not yet running, payment service.
pub struct Application {
    config: Config,
    pool: PgPool,
    health_listener: TcpListener,
}

impl Application {
    /// Connects to PostgreSQL (creating the database, running migrations) and binds the health endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(&config.database).await?;
        Self::build_with_pool(config, pool).await
    }

    /// Uses an existing, migrated pool.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        let health_listener = health::bind(config.health_addr).await?;
        Ok(Self {
            config,
            pool,
            health_listener,
        })
    }

    /// Address of the health endpoint.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Consumes until `shutdown`, then drains in-flight payments, commits, stops the relay.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            health_listener,
        } = self;
        let background = CancellationToken::new();
        let readiness = Readiness::default();
        let health_task = tokio::spawn(health::serve(
            health_listener,
            readiness.clone(),
            background.clone(),
        ));
        let relay = tokio::spawn(outbox::run_relay_with_topics(
            pool.clone(),
            config.kafka.clone(),
            config.relay.clone(),
            "payment-service",
            background.clone(),
        ));

        let processor = Arc::new(PaymentProcessor::new(
            MockGateway::new(pool.clone(), config.gateway.clone()),
            CircuitBreaker::new(config.breaker.clone()),
            config.payment.clone(),
        ));
        let handler = Arc::new(PaymentHandler::new(
            pool.clone(),
            processor,
            config.kafka.topics.payment_completed.clone(),
            config.crash_after_charge,
        ));
        let settings = ConsumerSettings {
            group_id: config.group_id.clone(),
            topic: config.kafka.topics.order_placed.clone(),
            dlq_topic: config.kafka.topics.payment_dlq.clone(),
            max_in_flight: config.max_in_flight,
            commit_interval: std::time::Duration::from_millis(200),
            shutdown_grace: config.shutdown_grace,
        };
        readiness.set(true);
        tracing::info!(health = %config.health_addr, max_in_flight = config.max_in_flight, "payment-service ready");
        let consumed = consumer::run(&config.kafka, settings, handler, shutdown).await;
        readiness.set(false);

        background.cancel();
        if let Ok(Err(error)) = relay.await {
            tracing::error!(error = format!("{error:#}"), "outbox relay failed");
        }
        let _ = health_task.await;
        pool.close().await;
        tracing::info!("payment-service stopped");
        consumed
    }
}
