//! Readiness: the conditions a service must meet to take work (PostgreSQL and
//! the broker answer; a consumer holds its assignment; it is not stopping),
//! and [`watch_dependencies`], which keeps them up to date. The HTTP endpoint
//! ([`crate::http`]) serves them as `/readyz`; order-api mirrors them into
//! grpc.health.v1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::Connection;
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
    needs_assignment: AtomicBool,
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
            needs_assignment: AtomicBool::new(needs_assignment),
            ready: watch::channel(!needs_assignment).0,
        }))
    }

    /// A server's readiness (no consumer assignment to wait for).
    pub fn for_server() -> Self {
        Self::new(false)
    }

    /// From now on the service is ready only while its consumer holds its assignment.
    pub fn require_assignment(&self) {
        self.0.needs_assignment.store(true, Ordering::SeqCst);
        self.refresh();
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
        if conditions.needs_assignment.load(Ordering::SeqCst)
            && !conditions.assigned.load(Ordering::SeqCst)
        {
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
}
