//! Each service's small HTTP endpoint (order-api 9101, payment 9102,
//! notification 9103):
//!
//! * `GET /healthz` (liveness): 200 while the process serves, whatever its
//!   dependencies do;
//! * `GET /readyz` (readiness): 200 while PostgreSQL and the broker answer
//!   and, for a consumer, while it is subscribed and holds its assignment;
//!   503 otherwise, with the reasons in the body;
//! * `GET /metrics`: the service's Prometheus metrics (OpenMetrics text).
//!
//! Deliberately tiny (no HTTP framework for three GET routes; every response
//! closes its connection). [`watch_dependencies`] keeps the readiness
//! conditions up to date; order-api mirrors them into grpc.health.v1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// How often [`watch_dependencies`] checks PostgreSQL and the broker.
pub const DEPENDENCY_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one dependency check may take before it counts as a failure.
const DEPENDENCY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

struct Conditions {
    database: AtomicBool,
    broker: AtomicBool,
    assigned: AtomicBool,
    stopping: AtomicBool,
    needs_assignment: bool,
    ready: watch::Sender<bool>,
}

/// The readiness conditions a service shares between its parts. Cheap to clone.
#[derive(Clone)]
pub struct Readiness(Arc<Conditions>);

impl Default for Readiness {
    /// A consumer's readiness: dependencies and assignment.
    fn default() -> Self {
        Self::new(true)
    }
}

impl Readiness {
    /// Readiness that also waits for a consumer assignment when `needs_assignment`.
    /// Dependencies count as reachable until a check says otherwise.
    pub fn new(needs_assignment: bool) -> Self {
        Self(Arc::new(Conditions {
            database: AtomicBool::new(true),
            broker: AtomicBool::new(true),
            assigned: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            needs_assignment,
            ready: watch::channel(!needs_assignment).0,
        }))
    }

    /// A server's readiness (no consumer assignment to wait for).
    pub fn for_server() -> Self {
        Self::new(false)
    }

    /// Records whether the consumer holds its assignment.
    pub fn set_assigned(&self, assigned: bool) {
        self.0.assigned.store(assigned, Ordering::SeqCst);
        self.refresh();
    }

    /// Records whether PostgreSQL answers.
    pub fn set_database(&self, reachable: bool) {
        self.0.database.store(reachable, Ordering::SeqCst);
        self.refresh();
    }

    /// Records whether the broker answers.
    pub fn set_broker(&self, reachable: bool) {
        self.0.broker.store(reachable, Ordering::SeqCst);
        self.refresh();
    }

    /// Records that the service is shutting down: not ready from now on.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.refresh();
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.unmet().is_empty()
    }

    /// The conditions that are not met, for `/readyz` and the logs.
    pub fn unmet(&self) -> Vec<&'static str> {
        let conditions = &self.0;
        let mut unmet = Vec::new();
        if conditions.stopping.load(Ordering::SeqCst) {
            unmet.push("shutting down");
        }
        if !conditions.database.load(Ordering::SeqCst) {
            unmet.push("postgresql unreachable");
        }
        if !conditions.broker.load(Ordering::SeqCst) {
            unmet.push("kafka unreachable");
        }
        if conditions.needs_assignment && !conditions.assigned.load(Ordering::SeqCst) {
            unmet.push("no consumer assignment");
        }
        unmet
    }

    /// Readiness as it changes (the current value first).
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.0.ready.subscribe()
    }

    fn refresh(&self) {
        let ready = self.is_ready();
        self.0.ready.send_if_modified(|current| {
            let changed = *current != ready;
            *current = ready;
            changed
        });
    }

    /// `foodorder_ready`: 1 while ready, 0 otherwise.
    pub fn register(&self, metrics: &Metrics) {
        let gauge = metrics.gauge(
            "foodorder_ready",
            "1 while the service is ready (its dependencies answer and, for a consumer, it holds its assignment)",
        );
        let readiness = self.clone();
        metrics.on_scrape(move || {
            gauge.set(i64::from(readiness.is_ready()));
        });
    }
}

/// Consecutive failed checks before a dependency counts as unreachable: one
/// slow answer does not take the service out of rotation.
const FAILURES_BEFORE_DOWN: u32 = 2;

/// Checks PostgreSQL (over a connection of its own, so a busy pool does not
/// read as an outage) and the broker (a metadata request) every
/// [`DEPENDENCY_CHECK_INTERVAL`], and records the results in `readiness`
/// until `shutdown`: a dependency is down after [`FAILURES_BEFORE_DOWN`]
/// failed checks in a row and up again after one good one. Transitions are
/// logged; `foodorder_dependency_up{dependency}` shows each check's result.
pub async fn watch_dependencies(
    database_options: sqlx::postgres::PgConnectOptions,
    kafka: KafkaConfig,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let up = metrics.gauge_family::<DependencyLabel>(
        "foodorder_dependency_up",
        "1 while the last check of a dependency (postgresql, kafka) succeeded, 0 otherwise",
    );
    let broker: Option<Arc<BaseConsumer>> = crate::kafka::client_config(&kafka, "readiness")
        .create()
        .map(Arc::new)
        .map_err(|error| tracing::error!(%error, "failed to create the broker health client"))
        .ok();
    let mut connection: Option<sqlx::PgConnection> = None;
    let mut interval = tokio::time::interval(DEPENDENCY_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut database = Dependency::new("postgresql");
    let mut kafka_broker = Dependency::new("kafka");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let database_now = check_database(&database_options, &mut connection).await;
        let broker_now = match &broker {
            Some(client) => {
                let client = client.clone();
                tokio::task::spawn_blocking(move || {
                    let answered = client
                        .fetch_metadata(None, DEPENDENCY_CHECK_TIMEOUT)
                        .is_ok_and(|metadata| !metadata.brokers().is_empty());
                    // Serve the client's own events (errors, logs) so they do not pile up.
                    let _ = client.poll(Duration::ZERO);
                    answered
                })
                .await
                .unwrap_or(false)
            }
            None => false,
        };
        for (dependency, now) in [
            (&mut database, database_now),
            (&mut kafka_broker, broker_now),
        ] {
            up.get_or_create(&DependencyLabel {
                dependency: dependency.name,
            })
            .set(i64::from(now));
            dependency.observe(now);
        }
        readiness.set_database(database.up);
        readiness.set_broker(kafka_broker.up);
    }
}

/// The `dependency` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DependencyLabel {
    dependency: &'static str,
}

/// One dependency's state with its run of failed checks.
struct Dependency {
    name: &'static str,
    up: bool,
    failures: u32,
}

impl Dependency {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            up: true,
            failures: 0,
        }
    }

    fn observe(&mut self, answered: bool) {
        self.failures = if answered { 0 } else { self.failures + 1 };
        let up = answered || (self.up && self.failures < FAILURES_BEFORE_DOWN);
        if up != self.up {
            log_transition(self.name, up);
            self.up = up;
        }
    }
}

fn log_transition(dependency: &str, reachable: bool) {
    if reachable {
        tracing::info!(dependency, "dependency reachable again");
    } else {
        tracing::warn!(dependency, "dependency unreachable, reporting not ready");
    }
}

async fn check_database(
    options: &sqlx::postgres::PgConnectOptions,
    connection: &mut Option<sqlx::PgConnection>,
) -> bool {
    let checked = tokio::time::timeout(DEPENDENCY_CHECK_TIMEOUT, async {
        if connection.is_none() {
            *connection = Some(sqlx::PgConnection::connect_with(options).await?);
        }
        match connection.as_mut() {
            Some(connection) => connection.ping().await,
            None => Ok(()),
        }
    })
    .await;
    let healthy = matches!(checked, Ok(Ok(())));
    if !healthy {
        // A fresh connection next time: this one may be broken or half-open.
        *connection = None;
    }
    healthy
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// The longest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// The longest a connection may take, request and response together.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown`.
/// At most [`MAX_CONNECTIONS`] at once, each bounded by [`CONNECTION_TIMEOUT`],
/// so slow or hostile clients cannot pile up.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (mut stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(%error, "http endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let (readiness, metrics) = (readiness.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                let request = read_request_head(&mut stream).await?;
                let response = respond(&request, &readiness, &metrics);
                stream.write_all(&response).await?;
                stream.shutdown().await
            })
            .await;
            drop(slot);
        });
    }
}

/// Reads until the end of the request head (`\r\n\r\n`), the peer's end of
/// stream, or [`MAX_REQUEST_BYTES`].
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0_u8; 1024];
    while head.len() < MAX_REQUEST_BYTES && !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The whole HTTP/1.1 response to `request`.
fn respond(request: &str, readiness: &Readiness, metrics: &Metrics) -> Vec<u8> {
    let mut words = request.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "alive\n".to_owned()),
        ("GET", "/readyz") => match readiness.unmet() {
            unmet if unmet.is_empty() => ("200 OK", "text/plain", "ready\n".to_owned()),
            unmet => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {}\n", unmet.join(", ")),
            ),
        },
        // Prometheus asks for OpenMetrics; other clients get the classic text format.
        ("GET", "/metrics") if accepts_openmetrics(request) => {
            ("200 OK", crate::metrics::CONTENT_TYPE, metrics.encode())
        }
        ("GET", "/metrics") => (
            "200 OK",
            crate::metrics::TEXT_CONTENT_TYPE,
            metrics.encode_text(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether the request's `Accept` header asks for OpenMetrics.
fn accepts_openmetrics(request: &str) -> bool {
    request.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    })
}

/// Binds `address` for the HTTP endpoint.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to bind the http endpoint (health, metrics) on {address}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_condition() {
        let readiness = Readiness::default();
        let mut changes = readiness.changes();
        assert!(!readiness.is_ready(), "no assignment yet");
        readiness.set_assigned(true);
        assert!(readiness.is_ready());
        assert!(changes.has_changed().unwrap());
        assert!(*changes.borrow_and_update());
        readiness.set_database(false);
        assert_eq!(readiness.unmet(), ["postgresql unreachable"]);
        readiness.set_broker(false);
        assert_eq!(
            readiness.unmet(),
            ["postgresql unreachable", "kafka unreachable"]
        );
        assert!(!*changes.borrow_and_update());
        readiness.set_database(true);
        readiness.set_broker(true);
        assert!(readiness.is_ready());
        assert!(
            Readiness::for_server().is_ready(),
            "a server waits for no assignment"
        );
    }

    #[test]
    fn a_dependency_is_down_after_two_failed_checks_and_up_after_one_good_one() {
        let mut dependency = Dependency::new("postgresql");
        dependency.observe(false);
        assert!(dependency.up, "one slow answer is not an outage");
        dependency.observe(false);
        assert!(!dependency.up);
        dependency.observe(false);
        assert!(!dependency.up);
        dependency.observe(true);
        assert!(dependency.up);
        dependency.observe(false);
        dependency.observe(true);
        assert!(dependency.up, "failures must be consecutive");
    }

    #[test]
    fn stopping_is_not_ready() {
        let readiness = Readiness::for_server();
        readiness.set_stopping();
        assert_eq!(readiness.unmet(), ["shutting down"]);
    }

    #[test]
    fn routes_answer_with_the_right_status() {
        let readiness = Readiness::for_server();
        let metrics = Metrics::new();
        readiness.register(&metrics);
        let get = |path: &str| {
            String::from_utf8(respond(
                &format!("GET {path} HTTP/1.1\r\n\r\n"),
                &readiness,
                &metrics,
            ))
            .unwrap()
        };
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").starts_with("HTTP/1.1 200"));
        let scraped = get("/metrics?x=1");
        assert!(scraped.contains("foodorder_ready 1"), "{scraped}");
        assert!(scraped.contains("text/plain; version=0.0.4"), "{scraped}");
        let openmetrics = String::from_utf8(respond(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
            &readiness,
            &metrics,
        ))
        .unwrap();
        assert!(
            openmetrics.contains("application/openmetrics-text"),
            "{openmetrics}"
        );
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        readiness.set_broker(false);
        let not_ready = get("/readyz");
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.ends_with("not ready: kafka unreachable\n"),
            "{not_ready}"
        );
        assert!(get("/metrics").contains("foodorder_ready 0"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        let post = String::from_utf8(respond(
            "POST /readyz HTTP/1.1\r\n\r\n",
            &readiness,
            &metrics,
        ))
        .unwrap();
        assert!(post.starts_with("HTTP/1.1 405"));
    }
}
