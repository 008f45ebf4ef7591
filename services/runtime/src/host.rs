//! One runtime for every service. A [`ServiceHost`] is built from a migrated
//! pool and a running HTTP endpoint ([`ServiceEndpoint`], which answers from
//! the first moment, while the database is still being reached), then given its stages — an outbox relay,
//! consumers, a server, drains, background tasks — and run. Every task runs
//! under one [`TaskTracker`]; the stop order is declared here, once:
//!
//! 1. stop taking work: readiness reports "shutting down", the server stops
//!    accepting calls and finishes open ones (cut after the grace period), the
//!    consumers stop fetching, finish in-flight records and commit;
//! 2. drain: what the stopped intake left queued (order-api's group-commit
//!    writers) is finished;
//! 3. stop the relay after its last row, then the background tasks, the
//!    readiness probes and the HTTP endpoint;
//! 4. close the pool.
//!
//! A stage that stops on its own or panics (a consumer that gives up, a
//! server that fails, a relay or background task that ends early) stops the
//! whole service, which exits non-zero to be restarted. Stopping has a
//! deadline: a service that cannot stop within it says so and exits non-zero.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DatabaseConfig, KafkaConfig};
use crate::consumer::{self, ConsumerConfig, ConsumerMetrics, ConsumerSettings, MessageHandler};
use crate::db::{self, Schema};
use crate::health::{self, Condition, DatabaseProbe, DependencyUp, ProbeSettings, Readiness};
use crate::metrics::Metrics;
use crate::outbox::{self, OutboxMetrics, RelayConfig};

type Stage = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type ServerStage = Box<dyn FnOnce(CancellationToken) -> Stage + Send>;
type BackgroundStage =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// How long the drains (step 2) may take before the service stops without them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long closing the pool (step 4) may wait for its connections to come back.
const POOL_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long steps 1–4 may take beyond the shutdown grace and the drain grace
/// (consumers finishing their records, the relay's last rows, the pool).
const STOP_SLACK: Duration = Duration::from_secs(20);

/// A service's stages and the order in which they start and stop.
pub struct ServiceHost {
    name: &'static str,
    schema: &'static Schema,
    pool: PgPool,
    kafka: KafkaConfig,
    metrics: Metrics,
    readiness: Readiness,
    database: Condition,
    database_probe: DatabaseProbe,
    probes: ProbeSettings,
    endpoint: ServiceEndpoint,
    shutdown_grace: Duration,
    intake: CancellationToken,
    relay: Option<RelayConfig>,
    consumers: Vec<(String, Stage)>,
    /// The consumers' metric families, registered once and shared by every
    /// consumer of the service (their series are told apart by topic).
    consumer_metrics: Option<ConsumerMetrics>,
    server: Option<ServerStage>,
    drains: Vec<Stage>,
    background: Vec<BackgroundStage>,
}

impl ServiceHost {
    /// Starts the HTTP endpoint on `http_addr`, then connects to PostgreSQL
    /// (creating the database, migrating `schema`): `/healthz` answers and
    /// `/readyz` says why not ready while the database is being reached.
    pub async fn connect(
        name: &'static str,
        database: &DatabaseConfig,
        schema: &'static Schema,
        kafka: KafkaConfig,
        http_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let endpoint = ServiceEndpoint::start(http_addr).await?;
        let pool = db::connect_and_migrate(database, schema).await?;
        Ok(Self::with_endpoint(name, pool, schema, kafka, endpoint))
    }

    /// A consumer service's host, from its [`ConsumerConfig`]: over `pool`
    /// when given (already migrated for `schema`), else connecting and
    /// migrating; its endpoint and shutdown grace.
    pub async fn for_consumer(
        name: &'static str,
        schema: &'static Schema,
        config: &ConsumerConfig,
        pool: Option<PgPool>,
    ) -> anyhow::Result<Self> {
        let (kafka, http_addr) = (config.kafka.clone(), config.health_addr);
        let host = match pool {
            Some(pool) => Self::with_pool(name, pool, schema, kafka, http_addr).await?,
            None => Self::connect(name, &config.database, schema, kafka, http_addr).await?,
        };
        Ok(host
            .shutdown_grace(config.shutdown_grace)
            .readiness_probes(config.readiness_probes))
    }

    /// Uses an existing pool, already migrated for `schema`, and starts the HTTP endpoint.
    pub async fn with_pool(
        name: &'static str,
        pool: PgPool,
        schema: &'static Schema,
        kafka: KafkaConfig,
        http_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let endpoint = ServiceEndpoint::start(http_addr).await?;
        Ok(Self::with_endpoint(name, pool, schema, kafka, endpoint))
    }

    /// Uses an existing pool, already migrated for `schema`, and an endpoint
    /// started before it (see [`ServiceEndpoint::start`]).
    pub fn with_endpoint(
        name: &'static str,
        pool: PgPool,
        schema: &'static Schema,
        kafka: KafkaConfig,
        endpoint: ServiceEndpoint,
    ) -> Self {
        let (metrics, readiness) = (endpoint.metrics.clone(), endpoint.readiness.clone());
        metrics.register_pool(&pool);
        let database = endpoint.database.clone();
        database.unmet("connected and migrated; not checked yet");
        Self {
            name,
            schema,
            pool,
            kafka,
            metrics,
            readiness,
            database,
            database_probe: DatabaseProbe::ping(),
            probes: ProbeSettings::default(),
            endpoint,
            shutdown_grace: Duration::from_secs(10),
            intake: CancellationToken::new(),
            relay: None,
            consumers: Vec::new(),
            consumer_metrics: None,
            server: None,
            drains: Vec::new(),
            background: Vec::new(),
        }
    }

    /// The service's pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The service's metric registry, for its stages to register their families.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The service's readiness, which its stages may follow.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The Kafka settings.
    pub fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    /// Address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// Serves the service's own `routes` on its HTTP endpoint, after the
    /// built-in ones and behind the same limits, from now on (see
    /// [`crate::http::ServiceRoutes`]; guard a control route with
    /// [`crate::http::SameHost`]).
    pub fn routes(self, routes: axum::Router) -> Self {
        self.endpoint.routes(routes);
        self
    }

    /// How long open calls may run after shutdown before they are cut (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How often the readiness probes run and how long each may take (default:
    /// every second, 1.5 s).
    pub fn readiness_probes(mut self, settings: ProbeSettings) -> Self {
        self.probes = settings;
        self
    }

    /// What the `database` readiness condition checks (default: a ping); see
    /// [`DatabaseProbe::write_path`].
    pub fn database_probe(mut self, probe: DatabaseProbe) -> Self {
        self.database_probe = probe;
        self
    }

    /// Publishes the schema's outbox to `config.topics` (created if absent).
    pub fn relay(mut self, config: RelayConfig) -> Self {
        self.relay = Some(config);
        self
    }

    /// Consumes with `handler`, with a readiness condition `consumer <topic>`
    /// of its own (assigned, commits succeed, the coordinator answers) that
    /// gates readiness when `settings.gates_readiness` and is only shown on
    /// `/healthz` otherwise. The handler's housekeeping runs as a background task.
    pub fn consumer<H: MessageHandler>(mut self, settings: ConsumerSettings, handler: H) -> Self {
        let name = format!("consumer {}", settings.topic);
        let waiting = "the consumer has not started yet";
        let condition = if settings.gates_readiness {
            self.readiness.gate(&name, waiting)
        } else {
            self.readiness.inform(&name, waiting)
        };
        let probes = self.probes;
        let handler = Arc::new(handler);
        self.background.push(Box::new({
            let handler = handler.clone();
            move |stop| Box::pin(housekeeping(handler, stop))
        }));
        let stage_name = format!("the consumer of {}", settings.topic);
        let registry = &self.metrics;
        let metrics = self
            .consumer_metrics
            .get_or_insert_with(|| ConsumerMetrics::new(registry))
            .clone();
        let (kafka, intake) = (self.kafka.clone(), self.intake.clone());
        let stage = async move {
            consumer::run(
                &kafka, settings, handler, condition, probes, metrics, intake,
            )
            .await
        };
        self.consumers.push((stage_name, Box::pin(stage)));
        self
    }

    /// The service's server: `serve(intake)` must stop accepting calls once
    /// `intake` is cancelled and return when the open ones are done (it is
    /// dropped, cutting them, after the shutdown grace).
    pub fn server<F, Fut>(mut self, serve: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.server = Some(Box::new(move |intake| Box::pin(serve(intake))));
        self
    }

    /// Work to finish once intake has stopped and before the relay stops
    /// (order-api's group-commit writers placing what is queued).
    pub fn drain(mut self, drain: impl Future<Output = ()> + Send + 'static) -> Self {
        self.drains.push(Box::pin(async move {
            drain.await;
            Ok(())
        }));
        self
    }

    /// A task that runs until the background stops (step 3).
    pub fn background<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background
            .push(Box::new(move |stop| Box::pin(task(stop))));
        self
    }

    /// Runs every stage until `shutdown` (or a stage stopping on its own), then
    /// stops them in the declared order.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        let Self {
            name,
            schema,
            pool,
            kafka,
            metrics,
            readiness,
            database,
            database_probe,
            probes,
            endpoint,
            shutdown_grace,
            intake,
            relay,
            consumers,
            consumer_metrics: _,
            server,
            drains,
            background: background_stages,
        } = self;
        let dependency_up = DependencyUp::register(&metrics);
        let broker = readiness.inform("kafka", "not checked yet");
        let outbox = relay
            .as_ref()
            .map(|_| readiness.inform("outbox", "not checked yet"));
        let http_addr = endpoint.addr;
        // The endpoint stops with the background (step 3).
        tracker.spawn({
            let stop = background.clone();
            async move {
                stop.cancelled().await;
                endpoint.stop().await;
            }
        });
        tracker.spawn(health::watch_database(
            pool.connect_options()
                .as_ref()
                .clone()
                .application_name(&format!("{name} readiness probe")),
            database_probe,
            database,
            probes,
            dependency_up.clone(),
            background.clone(),
        ));
        tracker.spawn(health::watch_broker(
            kafka.clone(),
            broker,
            probes,
            dependency_up,
            background.clone(),
        ));
        let relay_task = relay.zip(outbox).map(|(relay, status)| {
            let relayed = outbox::run_relay_with_topics(
                pool.clone(),
                schema,
                kafka.clone(),
                relay,
                name,
                OutboxMetrics::new(&metrics),
                status,
                background.clone(),
            );
            tracker.spawn(stopping_on_return(Box::pin(relayed), intake.clone()))
        });
        for stage in background_stages {
            let task = stage(background.clone());
            tracker.spawn(stopping_on_return(
                Box::pin(async move {
                    task.await;
                    Ok(())
                }),
                intake.clone(),
            ));
        }
        let server_task = server
            .map(|serve| tracker.spawn(stopping_on_return(serve(intake.clone()), intake.clone())));
        let consumer_tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)> = consumers
            .into_iter()
            .map(|(stage_name, stage)| {
                let task = tracker.spawn(stopping_on_return(stage, intake.clone()));
                (stage_name, task)
            })
            .collect();
        tracing::info!(service = name, http = %http_addr, "service started");

        tokio::select! {
            () = shutdown.cancelled() => tracing::info!(service = name, "shutdown requested"),
            () = intake.cancelled() => tracing::error!(service = name, "a stage stopped on its own; shutting down"),
        }
        let stopped_on_its_own = !shutdown.is_cancelled();
        let deadline = shutdown_grace + DRAIN_GRACE + STOP_SLACK;
        let stopping = Running {
            readiness,
            intake,
            background,
            tracker,
            pool,
            server_task,
            consumer_tasks,
            relay_task,
            drains,
            shutdown_grace,
        }
        .stop();
        let failures = match tokio::time::timeout(deadline, stopping).await {
            Ok(failures) => failures,
            Err(_) => {
                tracing::error!(
                    deadline_ms = deadline.as_millis() as u64,
                    "the service did not stop in time"
                );
                anyhow::bail!("{name} did not stop within {deadline:?}");
            }
        };
        tracing::info!(service = name, "service stopped");
        if let Some(error) = failures.into_iter().next() {
            return Err(error);
        }
        if stopped_on_its_own {
            anyhow::bail!("{name} stopped because one of its stages stopped on its own");
        }
        Ok(())
    }
}

/// A service's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/drain`
/// and the service's own routes, see [`ServiceHost::routes`]),
/// serving from the moment it is started, before the service has its
/// database: a service waiting for PostgreSQL answers its liveness probe and
/// says on `/readyz` what it waits for (`database: connecting …`), instead of
/// looking dead. Dropped without [`ServiceEndpoint::stop`] (a start that
/// failed), it stops serving at once.
pub struct ServiceEndpoint {
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    database: Condition,
    routes: crate::http::ServiceRoutes,
    stop: tokio_util::sync::DropGuard,
    task: JoinHandle<()>,
}

impl ServiceEndpoint {
    /// Binds `http_addr` and serves, with a `database` condition that is
    /// unmet ("connecting to PostgreSQL and migrating the schema") until the
    /// host takes it over.
    pub async fn start(http_addr: SocketAddr) -> anyhow::Result<Self> {
        let listener: TcpListener = crate::http::bind(http_addr).await?;
        let addr = listener.local_addr()?;
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        readiness.register(&metrics);
        let database = readiness.gate(
            "database",
            "connecting to PostgreSQL and migrating the schema",
        );
        let routes = crate::http::ServiceRoutes::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (readiness, metrics, routes, stop) = (
                readiness.clone(),
                metrics.clone(),
                routes.clone(),
                stop.clone(),
            );
            async move {
                if let Err(error) =
                    crate::http::serve_with(listener, readiness, metrics, routes, stop).await
                {
                    tracing::error!(%error, "http endpoint failed");
                }
            }
        });
        Ok(Self {
            addr,
            metrics,
            readiness,
            database,
            routes,
            stop: stop.drop_guard(),
            task,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `routes` too, from now on (see [`ServiceHost::routes`]).
    pub fn routes(&self, routes: axum::Router) {
        self.routes.add(routes);
    }

    /// Stops serving (open requests get a moment to finish) and waits for it.
    async fn stop(self) {
        let Self { stop, task, .. } = self;
        drop(stop);
        let _ = task.await;
    }
}

/// What [`ServiceHost::run_until_stopped`] started.
struct Running {
    readiness: Readiness,
    intake: CancellationToken,
    background: CancellationToken,
    tracker: TaskTracker,
    pool: PgPool,
    server_task: Option<JoinHandle<anyhow::Result<()>>>,
    consumer_tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    relay_task: Option<JoinHandle<anyhow::Result<()>>>,
    drains: Vec<Stage>,
    shutdown_grace: Duration,
}

impl Running {
    /// Steps 1 to 4 of the stop order; returns what failed on the way.
    async fn stop(self) -> Vec<anyhow::Error> {
        let Self {
            readiness,
            intake,
            background,
            tracker,
            pool,
            server_task,
            consumer_tasks,
            relay_task,
            drains,
            shutdown_grace,
        } = self;
        // 1. Stop taking work.
        readiness.set_stopping();
        intake.cancel();
        let mut failures = Vec::new();
        if let Some(mut task) = server_task {
            match tokio::time::timeout(shutdown_grace, &mut task).await {
                Ok(finished) => record_failure(&mut failures, "the server", finished),
                Err(_) => {
                    tracing::warn!(
                        grace_ms = shutdown_grace.as_millis() as u64,
                        "calls still open after the shutdown grace period, closing them"
                    );
                    task.abort();
                    let _ = task.await;
                }
            }
        }
        for (stage_name, task) in consumer_tasks {
            record_failure(&mut failures, &stage_name, task.await);
        }
        // 2. Finish what the intake left queued.
        if tokio::time::timeout(DRAIN_GRACE, futures::future::join_all(drains))
            .await
            .is_err()
        {
            tracing::warn!("drains still busy after the grace period");
        }
        // 3. The relay (after its last row) and everything else in the background.
        background.cancel();
        tracker.close();
        if let Some(task) = relay_task {
            record_failure(&mut failures, "the outbox relay", task.await);
        }
        tracker.wait().await;
        // 4. The pool, once its connections are back; one that does not come
        // back in time (a connection whose peer vanished) is not waited for.
        if tokio::time::timeout(POOL_CLOSE_GRACE, pool.close())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = POOL_CLOSE_GRACE.as_millis() as u64,
                "database connections still in use after the grace period; stopping without them"
            );
        }
        failures
    }
}

/// Runs `stage`; if it returns (or panics) while `intake` is still open, it
/// stopped on its own, and the whole service stops with it.
async fn stopping_on_return(stage: Stage, intake: CancellationToken) -> anyhow::Result<()> {
    // Cancels intake however the stage ends, unwinding from a panic included.
    let _stop_on_exit = intake.clone().drop_guard();
    let result = stage.await;
    if !intake.is_cancelled() {
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "stage failed");
        }
        intake.cancel();
    }
    result
}

async fn housekeeping<H: MessageHandler>(handler: Arc<H>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(H::HOUSEKEEPING_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => handler.housekeeping().await,
        }
    }
}

fn record_failure(
    failures: &mut Vec<anyhow::Error>,
    stage_name: &str,
    finished: Result<anyhow::Result<()>, tokio::task::JoinError>,
) {
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(error)) => failures.push(error.context(format!("{stage_name} failed"))),
        Err(error) => failures.push(anyhow::anyhow!("{stage_name} panicked: {error}")),
    }
}

/// The whole `main` of a service: telemetry, then `start` (which reads the
/// configuration, builds and runs the service until SIGINT/SIGTERM), then the
/// telemetry flush.
///
/// With the argument `--migrate-only`, the service only brings its `schema`
/// up to date (creating the database if needed, with the `DATABASE_*`
/// settings) and exits: what a Kubernetes init container runs before the
/// service's new version starts, so that a migration that fails stops the
/// rollout before any pod of the new version takes traffic.
pub async fn main<F, Fut>(
    name: &'static str,
    schema: &'static Schema,
    start: F,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let migrate = match arguments.as_slice() {
        [] => false,
        [only] if only == "--migrate-only" => true,
        // A typo in an init container must fail it, not start the service.
        _ => anyhow::bail!(
            "{name}: unknown arguments {arguments:?} (the service takes none, or --migrate-only)"
        ),
    };
    let telemetry = crate::telemetry::init(name);
    let shutdown = crate::shutdown::token_on_signal();
    let result = if migrate {
        migrate_only(schema, shutdown).await
    } else {
        start(shutdown).await
    };
    let result = result.inspect_err(|error| {
        tracing::error!(
            error = format!("{error:#}"),
            service = name,
            "stopped with an error"
        )
    });
    telemetry.shutdown().await;
    result.context("the service failed")
}

/// `--migrate-only`: migrates `schema` and returns (see [`main`]).
async fn migrate_only(schema: &'static Schema, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = DatabaseConfig::from_env()?;
    let Some(pool) =
        crate::shutdown::unless_stopped(&shutdown, db::connect_and_migrate(&config, schema))
            .await?
    else {
        return Ok(());
    };
    // Nothing is in use; still, a connection whose peer vanished is not waited on.
    let _ = tokio::time::timeout(POOL_CLOSE_GRACE, pool.close()).await;
    tracing::info!(
        schema = schema.name,
        "schema up to date; exiting (--migrate-only)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    static SCHEMA: Schema = Schema::new("orders", sqlx::migrate!("../../migrations/orders"));

    async fn unused_address() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Routes a service adds once its endpoint already serves are served on
    /// the same port, and a same-host route accepts a loopback client.
    #[tokio::test]
    async fn routes_added_to_a_serving_endpoint_are_served() {
        use axum::routing::{get as route_get, put};
        let endpoint = ServiceEndpoint::start(unused_address().await)
            .await
            .unwrap();
        let address = endpoint.addr();
        assert!(get(address, "/knob").await.starts_with("HTTP/1.1 404"));
        endpoint.routes(
            axum::Router::new()
                .route("/knob", route_get(|| async { "off\n" }))
                .route("/knob", put(|_: crate::http::SameHost| async { "on\n" })),
        );
        let answer = get(address, "/knob").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("off\n"),
            "{answer}"
        );
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(
                b"PUT /knob HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("on\n"),
            "{answer}"
        );
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        endpoint.stop().await;
    }

    /// A service whose database cannot be reached answers its liveness
    /// probe and says why it is not ready: a Kubernetes liveness probe must
    /// not restart it in a loop while it waits.
    #[tokio::test]
    async fn the_endpoint_answers_while_the_database_is_unreachable() {
        let database_address = unused_address().await;
        let http_address = unused_address().await;
        let mut database = DatabaseConfig::for_tests();
        database.url =
            crate::config::Secret::new(format!("postgres://postgres@{database_address}/foodorder"));
        let kafka = KafkaConfig::local("127.0.0.1:1", "unused-");
        let starting = tokio::spawn(async move {
            ServiceHost::connect("test-service", &database, &SCHEMA, kafka, http_address)
                .await
                .map(|_| ())
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let healthz = loop {
            if tokio::net::TcpStream::connect(http_address).await.is_ok() {
                break get(http_address, "/healthz").await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the endpoint did not answer within 10 s of the start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        assert!(
            healthz.contains("database: UNMET") && healthz.contains("connecting to PostgreSQL"),
            "{healthz}"
        );
        let readyz = get(http_address, "/readyz").await;
        assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
        assert!(
            readyz.contains("not ready: database: connecting to PostgreSQL"),
            "{readyz}"
        );
        assert!(!starting.is_finished(), "still waiting for its database");
        starting.abort();
        let _ = starting.await;
        // A start given up stops serving.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(http_address).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the endpoint of an abandoned start still serves after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
