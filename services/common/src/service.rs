//! The runtime of a consumer service (payment, notification): its HTTP
//! endpoint (`/healthz`, `/readyz`, `/metrics`), the dependency checks behind
//! readiness, an optional outbox relay for the events it emits, and the
//! consumer loop; torn down in order: stop intake → drain → commit → stop the
//! relay (flushing its producer) → close the pool.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::consumer::{self, ConsumerMetrics, ConsumerSettings, MessageHandler};
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::outbox::{self, OutboxMetrics, RelayConfig};

/// Everything a consumer service runs.
pub struct ConsumerService<H> {
    /// Service name, for logs and Kafka client ids.
    pub name: &'static str,
    /// Database pool (closed at the end).
    pub pool: PgPool,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Consumer loop settings.
    pub settings: ConsumerSettings,
    /// Run an outbox relay too (for services that emit events).
    pub relay: Option<RelayConfig>,
    /// Bound listener for the HTTP endpoint.
    pub health_listener: TcpListener,
    /// The service's metrics (the handler registers its own families in it).
    pub metrics: Metrics,
    /// The message handler.
    pub handler: Arc<H>,
}

impl<H: MessageHandler> ConsumerService<H> {
    /// Runs until `shutdown`, then tears down in order.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let background = CancellationToken::new();
        let readiness = Readiness::default();
        readiness.register(&self.metrics);
        self.metrics.register_pool(&self.pool);
        let consumer_metrics = ConsumerMetrics::new(&self.metrics);
        let health_address = self.health_listener.local_addr()?;
        let health_task = tokio::spawn(health::serve(
            self.health_listener,
            readiness.clone(),
            self.metrics.clone(),
            background.clone(),
        ));
        let dependencies = tokio::spawn(health::watch_dependencies(
            (*self.pool.connect_options()).clone(),
            self.kafka.clone(),
            readiness.clone(),
            background.clone(),
        ));
        let relay = self.relay.map(|relay_config| {
            tokio::spawn(outbox::run_relay_with_topics(
                self.pool.clone(),
                self.kafka.clone(),
                relay_config,
                self.name,
                OutboxMetrics::new(&self.metrics),
                background.clone(),
            ))
        });
        tracing::info!(service = self.name, health = %health_address, max_in_flight = self.settings.max_in_flight, "service started; ready once the consumer holds its assignment");
        let consumed = consumer::run(
            &self.kafka,
            self.settings,
            self.handler,
            readiness.clone(),
            consumer_metrics,
            shutdown,
        )
        .await;
        readiness.set_assigned(false);
        background.cancel();
        let _ = dependencies.await;
        if let Some(relay) = relay
            && let Ok(Err(error)) = relay.await
        {
            tracing::error!(error = format!("{error:#}"), "outbox relay failed");
        }
        let _ = health_task.await;
        self.pool.close().await;
        tracing::info!(service = self.name, "service stopped");
        consumed
    }
}

/// What a consumer service needs before it runs: a migrated pool and its bound
/// health listener (bound early, so a busy port fails at start).
pub struct ServiceResources {
    /// Database pool.
    pub pool: PgPool,
    /// Bound listener for the HTTP endpoint.
    pub health_listener: TcpListener,
    /// The service's metric registry.
    pub metrics: Metrics,
}

impl ServiceResources {
    /// Connects to PostgreSQL (creating the database, running migrations) and binds `health_addr`.
    pub async fn connect(
        database: &crate::config::DatabaseConfig,
        health_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let pool = crate::db::connect_and_migrate(database).await?;
        Self::with_pool(pool, health_addr).await
    }

    /// Uses an existing, migrated pool and binds `health_addr`.
    pub async fn with_pool(
        pool: PgPool,
        health_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let health_listener = health::bind(health_addr).await?;
        Ok(Self {
            pool,
            health_listener,
            metrics: Metrics::new(),
        })
    }

    /// Address of the health endpoint.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        self.health_listener
            .local_addr()
            .expect("bound listener has an address")
    }
}
