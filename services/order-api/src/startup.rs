//! Building and running the order API: binds its own listener (so tests can
//! use port 0 and read the port back), wires gRPC health and reflection,
//! starts the outbox relay and the order-status listener, and tears everything
//! down in order on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use foodorder_common::consumer::{self, ConsumerMetrics, ConsumerSettings};
use foodorder_common::health::{self, Readiness};
use foodorder_common::metrics::Metrics;
use foodorder_common::{db, outbox};
use foodorder_proto::v1::order_service_server::{OrderServiceServer, SERVICE_NAME};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::config::Config;
use crate::group_commit::GroupCommit;
use crate::grpc_telemetry::{GrpcMetrics, GrpcTelemetryLayer};
use crate::payment_outcomes::PaymentOutcomeHandler;
use crate::service::{OrderServiceImpl, WatchLimits};
use crate::watch::OrderWatchHub;

/// How long, after the server stopped, the order writers may take to place
/// what was queued.
const WRITERS_GRACE: Duration = Duration::from_secs(5);

/// A built, not yet running, order API.
pub struct Application {
    config: Config,
    pool: PgPool,
    listener: TcpListener,
    local_addr: SocketAddr,
    http_listener: TcpListener,
    watch_hub: OrderWatchHub,
}

impl Application {
    /// Connects to PostgreSQL (creating the database and running migrations) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(&config.database, &db::ORDERS).await?;
        Self::build_with_pool(config, pool).await
    }

    /// Binds the listener, using an existing (already migrated) pool.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("failed to bind {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        let http_listener = health::bind(config.http_addr).await?;
        Ok(Self {
            config,
            pool,
            listener,
            local_addr,
            http_listener,
            watch_hub: OrderWatchHub::default(),
        })
    }

    /// The address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WatchOrder fan-out, to observe how many orders are being watched.
    pub fn watch_hub(&self) -> OrderWatchHub {
        self.watch_hub.clone()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` is cancelled, then drains calls, stops the relay and closes the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            pool,
            listener,
            http_listener,
            watch_hub,
            ..
        } = self;
        let metrics = Metrics::new();
        metrics.register_pool(&pool);
        let readiness = Readiness::for_server();
        readiness.register(&metrics);
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<OrderServiceServer<OrderServiceImpl>>()
            .await;

        let reflection_v1 = reflection_builder()
            .build_v1()
            .context("failed to build reflection v1")?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .context("failed to build reflection v1alpha")?;

        // Background tasks outlive the server so that orders accepted during
        // the drain are still published promptly.
        let background = CancellationToken::new();
        let http = tokio::spawn(health::serve(
            http_listener,
            readiness.clone(),
            metrics.clone(),
            background.clone(),
        ));
        let dependencies = tokio::spawn(health::watch_dependencies(
            (*pool.connect_options()).clone(),
            config.kafka.clone(),
            readiness.clone(),
            metrics.clone(),
            background.clone(),
        ));
        // grpc.health.v1 follows readiness until shutdown, which sets NOT_SERVING for good.
        let health_follower = tokio::spawn({
            let (mut changes, health_reporter, shutdown) = (
                readiness.changes(),
                health_reporter.clone(),
                shutdown.clone(),
            );
            async move {
                loop {
                    let status = if *changes.borrow_and_update() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    // The server as a whole ("") and the order service.
                    health_reporter.set_service_status("", status).await;
                    health_reporter
                        .set_service_status(SERVICE_NAME, status)
                        .await;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                }
            }
        });
        let relay = tokio::spawn(outbox::run_relay_with_topics(
            pool.clone(),
            &db::ORDERS,
            config.kafka.clone(),
            outbox::RelayConfig {
                topics: vec![config.kafka.topics.order_placed.clone()],
                ..config.relay.clone()
            },
            "order-api",
            outbox::OutboxMetrics::new(&metrics),
            background.clone(),
        ));
        // Payment outcomes (payment.completed) move orders to their final status.
        let payment_outcomes = tokio::spawn({
            let kafka = config.kafka.clone();
            let settings = ConsumerSettings::new(
                &config.consumer_group,
                &kafka.topics.payment_completed,
                &kafka.topics.order_dlq,
                config.max_in_flight,
                config.shutdown_grace,
            );
            // Its own connections: a backlog of outcomes never takes PlaceOrder's.
            let consumer_pool = db::side_pool(&pool, config.consumer_db_connections);
            let handler = Arc::new(PaymentOutcomeHandler::new(consumer_pool, &metrics));
            let (readiness, consumer_metrics, stop, shutdown) = (
                readiness.clone(),
                ConsumerMetrics::new(&metrics),
                background.clone(),
                shutdown.clone(),
            );
            async move {
                let consumed = consumer::run(
                    &kafka,
                    settings,
                    handler,
                    readiness,
                    consumer_metrics,
                    stop.clone(),
                )
                .await;
                // Without this consumer no order would ever finish: stopping on
                // its own takes the whole API down (to be restarted), not just it.
                let stopped_on_its_own = !stop.is_cancelled();
                if stopped_on_its_own {
                    tracing::error!(
                        "the payment.completed consumer stopped; shutting the order API down"
                    );
                    shutdown.cancel();
                }
                (consumed, stopped_on_its_own)
            }
        });
        let watch_listener = tokio::spawn(
            watch_hub
                .clone()
                .run_listener(pool.clone(), background.clone()),
        );

        let watch_limits = WatchLimits::new(config.watch_max_streams, config.watch_max_db_reads);
        watch_limits.register(&metrics, config.watch_max_streams);
        let (placing, writers) = GroupCommit::new(&config.group_commit, &metrics);
        let writers = writers.start(pool.clone());
        let service = OrderServiceImpl::new(
            pool.clone(),
            placing,
            config.kafka.topics.clone(),
            watch_hub,
            watch_limits,
            shutdown.clone(),
            &metrics,
        );
        let server = tonic::transport::Server::builder()
            // Dead clients are found and their streams closed; a live one is never cut.
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(GrpcTelemetryLayer::new(GrpcMetrics::new(&metrics)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(OrderServiceServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                let shutdown = shutdown.clone();
                let health_reporter = health_reporter.clone();
                let readiness = readiness.clone();
                async move {
                    shutdown.cancelled().await;
                    readiness.set_stopping();
                    let _ = health_follower.await;
                    for service in ["", SERVICE_NAME] {
                        health_reporter
                            .set_service_status(service, ServingStatus::NotServing)
                            .await;
                    }
                }
            });
        let mut server = Box::pin(server);
        let grace = config.shutdown_grace;
        let served = tokio::select! {
            served = &mut server => served,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "calls still open after the shutdown grace period, closing them");
                Ok(())
            }
        };
        // The server (and with it the service's queue) goes first: the writers
        // place what is queued, then end, and only then does the relay stop,
        // so every order committed is in the outbox before it drains.
        drop(server);
        if tokio::time::timeout(WRITERS_GRACE, futures::future::join_all(writers))
            .await
            .is_err()
        {
            tracing::warn!("order writers still busy after the shutdown grace period");
        }
        tracing::info!("grpc server stopped, stopping background tasks");
        background.cancel();
        match relay.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "outbox relay failed"),
            Err(error) => tracing::error!(%error, "outbox relay task panicked"),
        }
        let consumer_failure = match payment_outcomes.await {
            Ok((Ok(()), false)) => None,
            Ok((Ok(()), true)) => Some(anyhow::anyhow!("the payment.completed consumer stopped")),
            Ok((Err(error), _)) => Some(error.context("the payment.completed consumer failed")),
            Err(error) => Some(anyhow::anyhow!(
                "the payment.completed consumer task panicked: {error}"
            )),
        };
        let _ = watch_listener.await;
        let _ = dependencies.await;
        let _ = http.await;
        pool.close().await;
        tracing::info!("order-api stopped");
        served.context("grpc server failed")?;
        consumer_failure.map_or(Ok(()), Err)
    }
}

/// Reflection over the contract, gRPC health and google.rpc error details (so
/// grpcurl can decode BadRequest and PreconditionFailure in error responses).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(foodorder_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
