//! How the order API is put together on the [`ServiceHost`]: the gRPC server
//! (its own listener, so tests can use port 0 and read the port back) with
//! health and reflection, the group-commit writers drained after it stops,
//! the outbox relay for `order.placed`, the `payment.completed` and
//! `order.unprocessable` consumers, and the order-status listener behind
//! WatchOrder.
//!
//! Three pools, each bounded by the database deadlines: the service's own
//! (`DATABASE_MAX_CONNECTIONS`: the writers, the relay, the listeners), the
//! readers' (`ORDER_API_READ_DB_CONNECTIONS`) and the payment-outcome
//! consumer's (`ORDER_API_CONSUMER_DB_CONNECTIONS`), so that neither readers
//! nor a backlog of outcomes can take the writers' connections.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use foodorder_contract::topics::{ORDER_PLACED, ORDER_UNPROCESSABLE, PAYMENT_COMPLETED};
use foodorder_contract::v1::order_service_server::{OrderServiceServer, SERVICE_NAME};
use foodorder_runtime::consumer::ConsumerSettings;
use foodorder_runtime::db;
use foodorder_runtime::health::{DatabaseProbe, Readiness};
use foodorder_runtime::host::{ServiceEndpoint, ServiceHost};
use foodorder_runtime::outbox::RelayConfig;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::backpressure::{self, Backpressure};
use crate::config::Config;
use crate::group_commit::{GroupCommit, GroupCommitConfig};
use crate::grpc_telemetry::{GrpcMetrics, GrpcTelemetryLayer};
use crate::limits::CallLimitLayer;
use crate::payment_outcomes::PaymentOutcomeHandler;
use crate::rate_limit::{ClientRateLimit, RateLimitLayer};
use crate::service::{OrderServiceImpl, WatchLimits};
use crate::unprocessable::UnprocessableHandler;
use crate::watch::OrderWatchHub;
use crate::{DEAD_LETTER_TOPIC, SCHEMA};

/// How much longer than a call's deadline a writer waits for its batch.
const WRITER_GRACE: Duration = Duration::from_secs(1);

/// Service name: logs, traces, Kafka client ids.
pub const NAME: &str = "order-api";

/// A built, not yet running, order API.
pub struct Application {
    host: ServiceHost,
    local_addr: SocketAddr,
    watch_hub: OrderWatchHub,
}

impl Application {
    /// Starts the HTTP endpoint (which answers, not ready, while the database
    /// is reached), connects to PostgreSQL (creating the database, migrating
    /// the `orders` schema) and binds the gRPC listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        check_tls(&config)?;
        let endpoint = ServiceEndpoint::start(config.http_addr).await?;
        let pool = db::connect_and_migrate(&config.database, &SCHEMA).await?;
        Self::build_on(config, pool, endpoint).await
    }

    /// Binds both listeners, on the database of `pool` (already migrated for
    /// `orders`): the service opens its pools there with `pool`'s connection
    /// settings and `config.database`'s sizes and deadlines.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        check_tls(&config)?;
        let endpoint = ServiceEndpoint::start(config.http_addr).await?;
        Self::build_on(config, pool, endpoint).await
    }

    async fn build_on(
        config: Config,
        pool: PgPool,
        endpoint: ServiceEndpoint,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("failed to bind {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        let pool = db::reopen(&pool, &config.database, config.database.max_connections);
        let host = ServiceHost::with_endpoint(NAME, pool, &SCHEMA, config.kafka.clone(), endpoint);
        let watch_hub = OrderWatchHub::default();
        let host = assemble(config, host, listener, watch_hub.clone());
        Ok(Self {
            host,
            local_addr,
            watch_hub,
        })
    }

    /// The address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.host.http_addr()
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port the gRPC server listens on.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The WatchOrder fan-out, to observe how many orders are being watched.
    pub fn watch_hub(&self) -> OrderWatchHub {
        self.watch_hub.clone()
    }

    /// Serves until `shutdown`, then stops in the host's order: calls, the
    /// writers' queue, the relay after its last row, the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.host.run_until_stopped(shutdown).await
    }
}

fn assemble(
    config: Config,
    host: ServiceHost,
    listener: TcpListener,
    watch_hub: OrderWatchHub,
) -> ServiceHost {
    let order_placed = host.kafka().topic(ORDER_PLACED);
    let metrics = host.metrics().clone();
    let readiness = host.readiness().clone();
    let pool = host.pool().clone();

    let read_pool = db::reopen(&pool, &config.database, config.read_db_connections);
    let watch_limits = WatchLimits::new(config.watch_max_streams, config.watch_max_db_reads);
    watch_limits.register(&metrics, config.watch_max_streams);
    // A writer gives a batch up only after every caller in it has had its
    // answer (DEADLINE_EXCEEDED at the latest), so no caller is told anything
    // but "it may have been placed" about a batch whose outcome is unknown.
    let group_commit = GroupCommitConfig {
        batch_timeout: config.request_timeout + WRITER_GRACE,
        ..config.group_commit.clone()
    };
    let (placing, writers) = GroupCommit::new(&group_commit, &order_placed, &metrics);
    let writers = writers.start(pool.clone());
    let closer = placing.clone();

    // Admission: backpressure on the orders awaiting payment, and the
    // per-client rate limit; their refusals are counted together.
    let rejected = backpressure::rejected_calls(&metrics);
    let backpressure = Backpressure::new(&config.backpressure, &rejected);
    let rate_limit = ClientRateLimit::new(&config.rate_limit, &rejected);
    if let Some(rate_limit) = &rate_limit {
        rate_limit.register(&metrics);
    }

    // Payment outcomes move orders to their final status. Their own
    // connections: a backlog of outcomes never takes PlaceOrder's.
    let mut outcomes = ConsumerSettings::new(
        &config.consumer_group,
        &host.kafka().topic(PAYMENT_COMPLETED),
        &host.kafka().topic(DEAD_LETTER_TOPIC),
        config.max_in_flight,
        config.shutdown_grace,
    );
    // Ready means an order could commit now: the broker and the payment
    // outcomes only inform (/healthz); the outbox holds orders while the broker is away.
    outcomes.gates_readiness = false;
    outcomes.handler_timeout = config.handler_timeout;
    let outcome_handler = PaymentOutcomeHandler::new(
        db::side_pool(&pool, config.consumer_db_connections),
        &metrics,
        &foodorder_runtime::batch::BatchMetrics::new(&metrics),
    );
    // What becomes of the order ids the payment service declares
    // unprocessable: rare, one connection of its own.
    let mut unprocessable = ConsumerSettings::new(
        &config.unprocessable_group(),
        &host.kafka().topic(ORDER_UNPROCESSABLE),
        &host.kafka().topic(DEAD_LETTER_TOPIC),
        config.max_in_flight.min(8),
        config.shutdown_grace,
    );
    unprocessable.gates_readiness = false;
    unprocessable.handler_timeout = config.handler_timeout;
    let unprocessable_handler = UnprocessableHandler::new(db::side_pool(&pool, 1), &metrics);

    let mut host = host;
    if backpressure.enabled() {
        // Shown on /healthz; never gates readiness: GetOrder and WatchOrder
        // still work, and the other instances see the same backlog anyway.
        let condition = host.readiness().inform("backpressure", "not counted yet");
        let (backpressure, metrics) = (backpressure.clone(), metrics.clone());
        // A connection of its own: writers busy with a burst never delay the count.
        let count_pool = db::side_pool(&pool, 1);
        let (interval, timeout) = (config.backpressure.check_interval, config.request_timeout);
        host = host.background(move |stop| {
            backpressure.run(count_pool, interval, timeout, condition, metrics, stop)
        });
    }
    if let Some(rate_limit) = rate_limit.clone() {
        host = host.background(move |stop| rate_limit.run_housekeeping(stop));
    }

    host.shutdown_grace(config.shutdown_grace)
        .readiness_probes(config.readiness_probes)
        .database_probe(write_probe())
        .relay(RelayConfig {
            topics: vec![order_placed.clone()],
            ..config.relay.clone()
        })
        .consumer(outcomes, outcome_handler)
        .consumer(unprocessable, unprocessable_handler)
        .background({
            let (watch_hub, pool) = (watch_hub.clone(), pool.clone());
            move |stop| watch_hub.run_listener(pool, stop)
        })
        .server(move |intake| {
            let service = OrderServiceImpl::new(
                read_pool,
                placing,
                watch_hub,
                watch_limits,
                intake.clone(),
                config.request_timeout,
            )
            .with_backpressure(backpressure);
            serve(
                config, listener, service, rate_limit, metrics, readiness, intake,
            )
        })
        .drain(async move {
            // The server has stopped: what it queued is placed, then the writers end.
            closer.close();
            futures::future::join_all(writers).await;
        })
}

/// Refuses to start with TLS settings the server could not use (a file that
/// cannot be read, holds no certificate or key, or a key rustls refuses),
/// before anything else starts.
fn check_tls(config: &Config) -> anyhow::Result<()> {
    if let Some(tls) = &config.tls {
        tonic::transport::Server::builder()
            .tls_config(tls.server_config()?)
            .with_context(|| {
                format!(
                    "ORDER_API_TLS_CERT {} and ORDER_API_TLS_KEY {} are not a usable certificate and key",
                    tls.cert.display(),
                    tls.key.display()
                )
            })?;
    }
    Ok(())
}

/// The readiness probe of the write path: the locks a PlaceOrder batch takes
/// (`repository::place_batch`: inserts into the orders, their items and the
/// outbox; reads of the menu and of stored idempotency keys), a transaction
/// id, not read-only; rolled back.
pub fn write_probe() -> DatabaseProbe {
    DatabaseProbe::write_path(
        &["orders.orders", "orders.order_items", "orders.outbox"],
        &["orders.menu_items"],
    )
}

/// The gRPC server: the order service, grpc.health.v1 following readiness,
/// and reflection; it stops accepting calls when `intake` is cancelled.
async fn serve(
    config: Config,
    listener: TcpListener,
    service: OrderServiceImpl,
    rate_limit: Option<ClientRateLimit>,
    metrics: foodorder_runtime::metrics::Metrics,
    readiness: Readiness,
    intake: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrderServiceServer<OrderServiceImpl>>()
        .await;
    let health_follower = tokio::spawn(follow_readiness(
        readiness,
        health_reporter.clone(),
        intake.clone(),
    ));
    let reflection_v1 = reflection_builder()
        .build_v1()
        .context("failed to build reflection v1")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("failed to build reflection v1alpha")?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(tls.server_config()?)
            .context("the TLS certificate and key are not usable")?;
    }
    tracing::info!(
        address = %listener.local_addr()?,
        tls = config.tls.is_some(),
        "order-api listening"
    );
    server
        // Dead clients are found and their streams closed; a live one is never cut.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .max_concurrent_streams(config.max_concurrent_streams)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(GrpcTelemetryLayer::new(GrpcMetrics::new(&metrics)))
        // Inside the telemetry layer: a refused or shed call is counted and
        // traced. The rate limit first: a client over its rate never takes
        // one of the places of the calls in progress.
        .layer(RateLimitLayer::new(rate_limit))
        .layer(CallLimitLayer::new(config.max_concurrent_calls, &metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(OrderServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            intake.cancelled().await;
            let _ = health_follower.await;
            for service in ["", SERVICE_NAME] {
                health_reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        })
        .await
        .context("grpc server failed")
}

/// grpc.health.v1 follows readiness, for the server as a whole ("") and the
/// order service, until `intake` stops, which sets NOT_SERVING for good.
async fn follow_readiness(
    readiness: Readiness,
    health_reporter: HealthReporter,
    intake: CancellationToken,
) {
    let mut changes = readiness.changes();
    loop {
        let status = if *changes.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health_reporter.set_service_status("", status).await;
        health_reporter
            .set_service_status(SERVICE_NAME, status)
            .await;
        tokio::select! {
            () = intake.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Reflection over the contract, gRPC health and google.rpc error details (so
/// grpcurl can decode BadRequest and PreconditionFailure in error responses).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(foodorder_contract::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
