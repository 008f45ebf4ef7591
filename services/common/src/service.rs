//! The runtime of a consumer service (payment, notification): its HTTP
//! endpoint (`/healthz`, `/readyz`, `/metrics`), the dependency checks behind
//! readiness, an optional outbox relay for the events it emits, and the
//! consumer loop; torn down in order: stop intake → drain → commit → stop the
//! relay (flushing its producer) → close the pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, KafkaConfig, env_count, env_or, env_seconds};
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
    /// The schema the service owns (its outbox is there).
    pub schema: &'static crate::db::Schema,
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
            self.metrics.clone(),
            background.clone(),
        ));
        let relay = self.relay.map(|relay_config| {
            tokio::spawn(outbox::run_relay_with_topics(
                self.pool.clone(),
                self.schema,
                self.kafka.clone(),
                relay_config,
                self.name,
                OutboxMetrics::new(&self.metrics),
                background.clone(),
            ))
        });
        let housekeeping = tokio::spawn({
            let (handler, stop) = (self.handler.clone(), background.clone());
            async move {
                let mut interval = tokio::time::interval(H::HOUSEKEEPING_INTERVAL);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = interval.tick() => handler.housekeeping().await,
                    }
                }
            }
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
        readiness.set_stopping();
        background.cancel();
        let _ = housekeeping.await;
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
        schema: &crate::db::Schema,
        health_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let pool = crate::db::connect_and_migrate(database, schema).await?;
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

/// What every consumer service is configured with, read from variables named
/// with its prefix (`PAYMENT_`, `NOTIFICATION_`).
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// PostgreSQL settings.
    pub database: DatabaseConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// `<PREFIX>_MAX_IN_FLIGHT`: records handled at once.
    pub max_in_flight: usize,
    /// `<PREFIX>_CONSUMER_GROUP`: the consumer group.
    pub group_id: String,
    /// `<PREFIX>_HEALTH_ADDR`: `/healthz`, `/readyz` and `/metrics`.
    pub health_addr: SocketAddr,
    /// `SHUTDOWN_GRACE_SECONDS` (default 10): in-flight records may finish within this.
    pub shutdown_grace: Duration,
}

impl ConsumerConfig {
    /// Reads the settings named with `prefix`, with these defaults.
    pub fn from_env(
        prefix: &str,
        default_group: &str,
        default_max_in_flight: usize,
        default_port: u16,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            database: DatabaseConfig::from_env()?,
            kafka: KafkaConfig::from_env()?,
            max_in_flight: env_count(&format!("{prefix}_MAX_IN_FLIGHT"), default_max_in_flight)?,
            group_id: env_or(
                &format!("{prefix}_CONSUMER_GROUP"),
                default_group.to_owned(),
            )?,
            health_addr: env_or(
                &format!("{prefix}_HEALTH_ADDR"),
                SocketAddr::from(([0, 0, 0, 0], default_port)),
            )?,
            shutdown_grace: env_seconds("SHUTDOWN_GRACE_SECONDS", 10.0)?,
        })
    }

    /// The consumer loop's settings for `topic`, dead-lettering to `dlq_topic`.
    pub fn settings(&self, topic: &str, dlq_topic: &str) -> ConsumerSettings {
        ConsumerSettings::new(
            &self.group_id,
            topic,
            dlq_topic,
            self.max_in_flight,
            self.shutdown_grace,
        )
    }
}

/// A consumer service is its configuration, which says what it needs and
/// builds its handler: [`ConsumerApplication`] and [`main`] do the rest
/// (pool and migrations, HTTP endpoint, readiness, relay, consumer loop,
/// shutdown, telemetry).
pub trait ConsumerApp: Sized + Send + 'static {
    /// Service name: logs, traces, Kafka client ids.
    const NAME: &'static str;
    /// The schema the service owns.
    const SCHEMA: &'static crate::db::Schema;
    /// The message handler.
    type Handler: MessageHandler;
    /// The settings every consumer service has.
    fn consumer(&self) -> &ConsumerConfig;
    /// Builds the consumer over `pool`, registering its metrics in `metrics`.
    fn assemble(self, pool: &PgPool, metrics: &Metrics) -> Assembly<Self::Handler>;
}

/// What a [`ConsumerApp`] assembles.
pub struct Assembly<H> {
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Consumer loop settings.
    pub settings: ConsumerSettings,
    /// An outbox relay, for services that emit events.
    pub relay: Option<RelayConfig>,
    /// The handler.
    pub handler: H,
}

/// A built, not yet running, consumer service.
pub struct ConsumerApplication<A> {
    app: A,
    resources: ServiceResources,
}

impl<A: ConsumerApp> ConsumerApplication<A> {
    /// Connects to PostgreSQL (creating the database, running migrations) and binds the HTTP endpoint.
    pub async fn build(app: A) -> anyhow::Result<Self> {
        let consumer = app.consumer();
        let resources =
            ServiceResources::connect(&consumer.database, A::SCHEMA, consumer.health_addr).await?;
        Ok(Self { app, resources })
    }

    /// Uses an existing, migrated pool.
    pub async fn build_with_pool(app: A, pool: PgPool) -> anyhow::Result<Self> {
        let resources = ServiceResources::with_pool(pool, app.consumer().health_addr).await?;
        Ok(Self { app, resources })
    }

    /// Address of the HTTP endpoint.
    pub fn health_addr(&self) -> SocketAddr {
        self.resources.health_addr()
    }

    /// Consumes until `shutdown`, then drains, commits, stops the relay and closes the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ServiceResources {
            pool,
            health_listener,
            metrics,
        } = self.resources;
        let assembly = self.app.assemble(&pool, &metrics);
        ConsumerService {
            name: A::NAME,
            pool,
            schema: A::SCHEMA,
            kafka: assembly.kafka,
            settings: assembly.settings,
            relay: assembly.relay,
            health_listener,
            metrics,
            handler: Arc::new(assembly.handler),
        }
        .run(shutdown)
        .await
    }
}

/// The whole `main` of a consumer service: telemetry, configuration (read by
/// `from_env`), build, run until SIGINT/SIGTERM, flush the telemetry.
pub async fn main<A: ConsumerApp>(from_env: fn() -> anyhow::Result<A>) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::init(A::NAME);
    let config = from_env().context("failed to read the configuration")?;
    let application = ConsumerApplication::build(config)
        .await
        .inspect_err(|error| {
            tracing::error!(
                error = format!("{error:#}"),
                service = A::NAME,
                "failed to start"
            );
        })?;
    let result = application
        .run_until_stopped(crate::shutdown::token_on_signal())
        .await;
    telemetry.shutdown().await;
    result
}
