//! Readiness and health: named conditions, each kept up to date by a
//! background probe with its own deadline, and read at once — never waiting
//! on a dependency — by `/readyz`, `/healthz` ([`crate::http`]), order-api's
//! grpc.health.v1 and `foodorder_ready`.
//!
//! A condition either *gates* readiness (the service is ready while every
//! gating condition is met and it is not stopping) or only *informs* (shown
//! on `/healthz`, logged when it changes, never taking the service out of
//! rotation). What each service registers:
//!
//! * `database` (gates): [`watch_database`] over a connection of its own, so
//!   a busy pool is not an outage: a ping, or for order-api a write probe
//!   ([`DatabaseProbe::write_path`]) that takes the locks a PlaceOrder takes
//!   and rolls back;
//! * `kafka` (informs): [`watch_broker`], a metadata request;
//! * `consumer <topic>` (gates, unless the consumer is set not to): held by
//!   the consumer itself — assigned, its offset commits succeed and its group
//!   coordinator answers (see `consumer::health`);
//! * `outbox` (informs): the relay's backlog and its last acknowledged publish.
//!
//! Every probe runs on an interval with a deadline of its own, so a hung
//! dependency makes its probe fail rather than hang, and a state is never
//! older than one interval plus one deadline. A met condition becomes unmet
//! after [`FAILURES_BEFORE_UNMET`] failed probes in a row (one slow answer
//! does not take a service out of rotation) and met again after one good one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, env_count};
use crate::metrics::Metrics;

/// Consecutive failed probes before a met condition counts as unmet.
pub const FAILURES_BEFORE_UNMET: u32 = 2;

/// Whether a condition decides readiness or only informs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The service is ready only while this condition is met.
    Gates,
    /// Shown on `/healthz` and logged; readiness does not depend on it.
    Informs,
}

/// One condition as it stands, for the HTTP endpoint.
#[derive(Clone, Debug)]
pub struct ConditionReport {
    /// The condition's name (`database`, `consumer order.placed` …).
    pub name: String,
    /// Whether it gates readiness.
    pub role: Role,
    /// Whether it is met.
    pub met: bool,
    /// What the last check found: the reason when unmet.
    pub detail: String,
    /// How long it has been met, or unmet.
    pub for_: Duration,
    /// How long ago it was last checked.
    pub checked_ago: Duration,
}

struct Entry {
    name: String,
    role: Role,
    met: bool,
    detail: String,
    since: Instant,
    checked: Instant,
}

struct Board {
    entries: Mutex<Vec<Entry>>,
    stopping: AtomicBool,
    draining: AtomicBool,
    ready: watch::Sender<bool>,
}

impl Board {
    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The conditions a service shares between its parts. Cheap to clone.
#[derive(Clone)]
pub struct Readiness(Arc<Board>);

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Readiness with no condition yet: ready until a gating condition is
    /// registered or shutdown starts.
    pub fn new() -> Self {
        Self(Arc::new(Board {
            entries: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready: watch::channel(true).0,
        }))
    }

    /// Registers a condition that gates readiness, unmet with `reason` until
    /// its keeper says otherwise.
    pub fn gate(&self, name: &str, reason: &str) -> Condition {
        self.register_condition(name, Role::Gates, reason)
    }

    /// Registers a condition shown on `/healthz` only, unmet with `reason`
    /// until its keeper says otherwise.
    pub fn inform(&self, name: &str, reason: &str) -> Condition {
        self.register_condition(name, Role::Informs, reason)
    }

    fn register_condition(&self, name: &str, role: Role, reason: &str) -> Condition {
        let now = Instant::now();
        let index = {
            let mut entries = self.0.entries();
            entries.push(Entry {
                name: name.to_owned(),
                role,
                met: false,
                detail: reason.to_owned(),
                since: now,
                checked: now,
            });
            entries.len() - 1
        };
        self.refresh();
        Condition {
            board: self.0.clone(),
            index,
        }
    }

    /// Records that the service is shutting down: not ready from now on.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.refresh();
    }

    /// Records that the service is about to be stopped (a Kubernetes
    /// `preStop` hook, see `POST /drain`): not ready from now on, so that
    /// traffic is routed elsewhere, while everything keeps working until the
    /// stop itself (SIGTERM) stops the intake.
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.refresh();
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        !self.0.stopping.load(Ordering::SeqCst)
            && !self.0.draining.load(Ordering::SeqCst)
            && self
                .0
                .entries()
                .iter()
                .all(|entry| entry.met || entry.role == Role::Informs)
    }

    /// Why the service is not ready (`database: write probe timed out after
    /// 1.5 s`, `shutting down` …); empty when it is.
    pub fn unmet(&self) -> Vec<String> {
        let mut unmet = Vec::new();
        if self.0.stopping.load(Ordering::SeqCst) {
            unmet.push("shutting down".to_owned());
        } else if self.0.draining.load(Ordering::SeqCst) {
            unmet.push("draining: about to stop".to_owned());
        }
        unmet.extend(
            self.0
                .entries()
                .iter()
                .filter(|entry| !entry.met && entry.role == Role::Gates)
                .map(|entry| format!("{}: {}", entry.name, entry.detail)),
        );
        unmet
    }

    /// Every condition as it stands, in the order they were registered.
    pub fn report(&self) -> Vec<ConditionReport> {
        let now = Instant::now();
        self.0
            .entries()
            .iter()
            .map(|entry| ConditionReport {
                name: entry.name.clone(),
                role: entry.role,
                met: entry.met,
                detail: entry.detail.clone(),
                for_: now.saturating_duration_since(entry.since),
                checked_ago: now.saturating_duration_since(entry.checked),
            })
            .collect()
    }

    /// Readiness as it changes (the current value first).
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.0.ready.subscribe()
    }

    fn refresh(&self) {
        refresh(&self.0);
    }

    /// `foodorder_ready`: 1 while ready, 0 otherwise.
    pub fn register(&self, metrics: &Metrics) {
        let gauge = metrics.gauge(
            "foodorder_ready",
            "1 while the service is ready (every readiness condition of /readyz is met), 0 otherwise",
        );
        let readiness = self.clone();
        metrics.on_scrape(move || {
            gauge.set(i64::from(readiness.is_ready()));
        });
    }
}

fn refresh(board: &Arc<Board>) {
    let ready = Readiness(board.clone()).is_ready();
    board.ready.send_if_modified(|current| {
        let changed = *current != ready;
        *current = ready;
        changed
    });
}

/// One registered condition, held by whatever keeps it up to date. Cheap to clone.
#[derive(Clone)]
pub struct Condition {
    board: Arc<Board>,
    index: usize,
}

impl Condition {
    /// Records that the condition is met; `detail` says what the check found.
    pub fn met(&self, detail: impl Into<String>) {
        self.set(true, detail.into());
    }

    /// Records that the condition is not met, and why.
    pub fn unmet(&self, reason: impl Into<String>) {
        self.set(false, reason.into());
    }

    /// Whether the condition is met now.
    pub fn is_met(&self) -> bool {
        self.board.entries()[self.index].met
    }

    fn set(&self, met: bool, detail: String) {
        let now = Instant::now();
        let changed = {
            let mut entries = self.board.entries();
            let entry = &mut entries[self.index];
            entry.checked = now;
            let changed = (entry.met != met).then(|| (entry.name.clone(), entry.role));
            if changed.is_some() {
                entry.met = met;
                entry.since = now;
            }
            entry.detail.clone_from(&detail);
            changed
        };
        let Some((condition, role)) = changed else {
            return;
        };
        match (role, met) {
            (Role::Gates, true) => tracing::info!(condition, detail, "readiness condition met"),
            (Role::Gates, false) => tracing::warn!(
                condition,
                reason = detail,
                "readiness condition unmet, reporting not ready"
            ),
            (Role::Informs, true) => {
                tracing::info!(
                    condition,
                    detail,
                    "health condition met (does not gate readiness)"
                )
            }
            (Role::Informs, false) => tracing::warn!(
                condition,
                reason = detail,
                "health condition unmet (does not gate readiness)"
            ),
        }
        if role == Role::Gates {
            refresh(&self.board);
        }
    }
}

/// How often probes run and how long one may take.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    /// `READINESS_PROBE_INTERVAL_MS` (default 1000): time between the starts of two probes.
    pub interval: Duration,
    /// `READINESS_PROBE_TIMEOUT_MS` (default 1500): the longest one probe may
    /// take, connecting included, before it counts as failed.
    pub timeout: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(1500),
        }
    }
}

impl ProbeSettings {
    /// Reads `READINESS_PROBE_INTERVAL_MS` and `READINESS_PROBE_TIMEOUT_MS`.
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Self::default();
        Ok(Self {
            interval: Duration::from_millis(env_count(
                "READINESS_PROBE_INTERVAL_MS",
                defaults.interval.as_millis() as u64,
            )?),
            timeout: Duration::from_millis(env_count(
                "READINESS_PROBE_TIMEOUT_MS",
                defaults.timeout.as_millis() as u64,
            )?),
        })
    }
}

/// Met/unmet from a run of probe results: unmet at the start, met after one
/// good probe, unmet again after [`FAILURES_BEFORE_UNMET`] failed ones in a row.
#[derive(Debug, Default)]
pub(crate) struct Debounce {
    met: bool,
    failures: u32,
}

impl Debounce {
    /// Takes one probe's result; returns whether the condition is met now.
    pub(crate) fn observe(&mut self, succeeded: bool) -> bool {
        if succeeded {
            self.failures = 0;
            self.met = true;
        } else {
            self.failures += 1;
            if self.failures >= FAILURES_BEFORE_UNMET {
                self.met = false;
            }
        }
        self.met
    }

    /// Whether the condition is met, after the probes seen so far.
    pub(crate) fn is_met(&self) -> bool {
        self.met
    }
}

/// One kind of check [`run_probes`] repeats.
trait Probe: Send {
    /// What this probe is called in the reasons (`write probe`, `ping` …).
    fn what(&self) -> String;

    /// Checks once: what it found, or why it failed.
    fn check(&mut self, timeout: Duration) -> impl Future<Output = Result<String, String>> + Send;

    /// Called when a check was cut at its deadline: forget any half-used state.
    fn abandon(&mut self) {}
}

/// Runs `probe` every `settings.interval`, each check bounded by
/// `settings.timeout`, and keeps `condition` (and `up`, 1/0 per check) up to
/// date until `shutdown`.
async fn run_probes(
    mut probe: impl Probe,
    condition: Condition,
    up: Gauge,
    settings: ProbeSettings,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(settings.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut debounce = Debounce::default();
    let mut last_good = String::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let checked = tokio::select! {
            () = shutdown.cancelled() => return,
            checked = tokio::time::timeout(settings.timeout, probe.check(settings.timeout)) => checked,
        };
        let outcome = checked.unwrap_or_else(|_| {
            probe.abandon();
            Err(format!(
                "{} timed out after {}",
                probe.what(),
                seconds(settings.timeout)
            ))
        });
        up.set(i64::from(outcome.is_ok()));
        match outcome {
            Ok(detail) => {
                debounce.observe(true);
                condition.met(detail.clone());
                last_good = detail;
            }
            Err(reason) => {
                if debounce.observe(false) {
                    condition.met(format!(
                        "{last_good}; the last check failed ({reason}), one more failure makes this unmet"
                    ));
                } else {
                    condition.unmet(reason);
                }
            }
        }
    }
}

/// What the database probe does: a ping, or a write-path probe.
#[derive(Clone, Debug)]
pub struct DatabaseProbe {
    /// Tables locked `ROW EXCLUSIVE` (what an INSERT or UPDATE takes).
    writes: Vec<String>,
    /// Tables locked `ACCESS SHARE` (what a SELECT takes).
    reads: Vec<String>,
}

impl Default for DatabaseProbe {
    fn default() -> Self {
        Self::ping()
    }
}

impl DatabaseProbe {
    /// `SELECT 1`: PostgreSQL answers.
    pub fn ping() -> Self {
        Self {
            writes: Vec::new(),
            reads: Vec::new(),
        }
    }

    /// Proves that a transaction writing `writes` and reading `reads` could
    /// commit now: in one round trip, a transaction takes the locks such a
    /// transaction takes (`ROW EXCLUSIVE` on `writes`, `ACCESS SHARE` on
    /// `reads`) under a `lock_timeout` of half the probe's deadline, obtains
    /// a transaction id (refused by a standby, or near wraparound), checks
    /// that it is not read-only, and rolls back. It writes no row (the
    /// transaction id it uses, one per probe, is what any order consumes). A table
    /// locked by a migration or `VACUUM FULL`, a read-only database, a
    /// stalled server or a hung connection all fail it.
    pub fn write_path(writes: &[&str], reads: &[&str]) -> Self {
        Self {
            writes: writes.iter().map(|table| (*table).to_owned()).collect(),
            reads: reads.iter().map(|table| (*table).to_owned()).collect(),
        }
    }

    fn is_write_path(&self) -> bool {
        !self.writes.is_empty() || !self.reads.is_empty()
    }

    /// The probe's script, bounded server-side by `timeout` (the client's deadline).
    fn script(&self, timeout: Duration) -> String {
        let lock_ms = (timeout.as_millis() / 2).max(1);
        let statement_ms = timeout.as_millis().max(1);
        let mut script = format!(
            "BEGIN; SET LOCAL lock_timeout = '{lock_ms}ms'; SET LOCAL statement_timeout = '{statement_ms}ms'; "
        );
        if !self.writes.is_empty() {
            script.push_str(&format!(
                "LOCK TABLE {} IN ROW EXCLUSIVE MODE; ",
                self.writes.join(", ")
            ));
        }
        if !self.reads.is_empty() {
            script.push_str(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE; ",
                self.reads.join(", ")
            ));
        }
        script.push_str(
            "SELECT pg_current_xact_id()::text AS xid, current_setting('transaction_read_only') AS read_only; ROLLBACK",
        );
        script
    }
}

/// The database probe's state: its own connection, opened when needed and
/// dropped after any failure (it may be broken or half-open).
struct DatabaseCheck {
    options: sqlx::postgres::PgConnectOptions,
    probe: DatabaseProbe,
    connection: Option<sqlx::PgConnection>,
}

impl Probe for DatabaseCheck {
    fn what(&self) -> String {
        if self.probe.is_write_path() {
            "write probe".to_owned()
        } else {
            "ping".to_owned()
        }
    }

    async fn check(&mut self, timeout: Duration) -> Result<String, String> {
        let started = Instant::now();
        let what = self.what();
        let result = self.check_once(timeout).await;
        if result.is_err() {
            self.connection = None;
        }
        result
            .map(|()| format!("{what} answered in {}", millis(started.elapsed())))
            .map_err(|reason| format!("{what} failed: {reason}"))
    }

    fn abandon(&mut self) {
        self.connection = None;
    }
}

impl DatabaseCheck {
    async fn check_once(&mut self, timeout: Duration) -> Result<(), String> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot @ None => slot.insert(
                self.options
                    .connect()
                    .await
                    .map_err(|error| format!("cannot connect: {error}"))?,
            ),
        };
        if !self.probe.is_write_path() {
            return connection.ping().await.map_err(|error| error.to_string());
        }
        let script = self.probe.script(timeout);
        let rows = sqlx::Executor::fetch_all(&mut *connection, sqlx::raw_sql(&script))
            .await
            .map_err(|error| describe_database_error(&error, &self.probe, timeout))?;
        let read_only: String = rows
            .first()
            .and_then(|row| row.try_get("read_only").ok())
            .ok_or("the probe returned no row")?;
        if read_only != "off" {
            return Err("the database is read-only".to_owned());
        }
        Ok(())
    }
}

fn describe_database_error(
    error: &sqlx::Error,
    probe: &DatabaseProbe,
    timeout: Duration,
) -> String {
    let code = match error {
        sqlx::Error::Database(database) => database.code().map(|code| code.into_owned()),
        _ => None,
    };
    match code.as_deref() {
        Some("55P03") => format!(
            "could not lock {} within {} (a migration, VACUUM FULL or LOCK TABLE holds one)",
            probe
                .writes
                .iter()
                .chain(&probe.reads)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            millis(timeout / 2)
        ),
        Some("57014") => format!("statement timeout ({}) passed", millis(timeout)),
        _ => error.to_string(),
    }
}

/// The database's readiness condition, `database`: `probe` over a connection
/// of its own (from `options`: give it an `application_name` of its own, to
/// tell it apart in `pg_stat_activity`) every `settings.interval`, each bounded by
/// `settings.timeout`, until `shutdown`; `foodorder_dependency_up{dependency="postgresql"}`
/// shows each check.
pub async fn watch_database(
    options: sqlx::postgres::PgConnectOptions,
    probe: DatabaseProbe,
    condition: Condition,
    settings: ProbeSettings,
    up: DependencyUp,
    shutdown: CancellationToken,
) {
    let up = up.gauge("postgresql");
    let check = DatabaseCheck {
        options,
        probe,
        connection: None,
    };
    run_probes(check, condition, up, settings, shutdown).await;
}

/// The broker's check: a metadata request over a client of its own.
struct BrokerCheck {
    client: Option<Arc<BaseConsumer>>,
}

impl Probe for BrokerCheck {
    fn what(&self) -> String {
        "metadata request".to_owned()
    }

    async fn check(&mut self, timeout: Duration) -> Result<String, String> {
        let Some(client) = self.client.clone() else {
            return Err("the health client could not be created".to_owned());
        };
        let started = Instant::now();
        let answer = tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(None, timeout)
                .map(|metadata| metadata.brokers().len());
            // Serve the client's own events (errors, logs) so they do not pile up.
            let _ = client.poll(Duration::ZERO);
            metadata
        })
        .await
        .map_err(|error| format!("the metadata request panicked: {error}"))?;
        match answer {
            Ok(0) => Err("the metadata answer lists no broker".to_owned()),
            Ok(brokers) => Ok(format!(
                "metadata answered in {}, {brokers} broker{} listed",
                millis(started.elapsed()),
                if brokers == 1 { "" } else { "s" }
            )),
            Err(error) => Err(format!("no metadata answer: {error}")),
        }
    }
}

/// The broker's health condition (`kafka`, informs on every service: a
/// consumer's own condition is what gates): a metadata request every
/// `settings.interval` (at least 2 s), until `shutdown`;
/// `foodorder_dependency_up{dependency="kafka"}` shows each check.
pub async fn watch_broker(
    kafka: KafkaConfig,
    condition: Condition,
    settings: ProbeSettings,
    up: DependencyUp,
    shutdown: CancellationToken,
) {
    let up = up.gauge("kafka");
    let client = crate::kafka::client_config(&kafka, "health")
        .create()
        .map(Arc::new)
        .map_err(|error| tracing::error!(%error, "failed to create the broker health client"))
        .ok();
    let settings = ProbeSettings {
        interval: settings.interval.max(Duration::from_secs(2)),
        ..settings
    };
    run_probes(BrokerCheck { client }, condition, up, settings, shutdown).await;
}

/// The `dependency` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DependencyLabel {
    dependency: &'static str,
}

/// `foodorder_dependency_up{dependency}`: one gauge per dependency, set by its probe.
#[derive(Clone)]
pub struct DependencyUp(prometheus_client::metrics::family::Family<DependencyLabel, Gauge>);

impl DependencyUp {
    /// Registers the family in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        Self(metrics.gauge_family(
            "foodorder_dependency_up",
            "1 while the last check of a dependency succeeded (postgresql: the readiness probe; kafka: a metadata request), 0 otherwise",
        ))
    }

    fn gauge(&self, dependency: &'static str) -> Gauge {
        self.0
            .get_or_create(&DependencyLabel { dependency })
            .clone()
    }
}

/// `1.5 s`.
pub(crate) fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// `12 ms`, or seconds from 10 s on.
pub(crate) fn millis(duration: Duration) -> String {
    if duration < Duration::from_secs(10) {
        format!("{} ms", duration.as_millis())
    } else {
        seconds(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_gating_condition_and_none_that_informs() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready(), "nothing to wait for");
        let mut changes = readiness.changes();
        let database = readiness.gate("database", "not checked yet");
        let consumer = readiness.gate("consumer t", "waiting for a partition assignment");
        let broker = readiness.inform("kafka", "not checked yet");
        assert!(!readiness.is_ready());
        assert!(changes.has_changed().unwrap());
        assert!(!*changes.borrow_and_update());
        database.met("ping answered in 1 ms");
        consumer.met("6 partitions assigned");
        assert!(readiness.is_ready(), "the broker only informs");
        assert!(*changes.borrow_and_update());
        database.unmet("ping timed out after 1.5 s");
        broker.unmet("no metadata answer");
        assert_eq!(readiness.unmet(), ["database: ping timed out after 1.5 s"]);
        assert!(!*changes.borrow_and_update());
        let report = readiness.report();
        assert_eq!(report.len(), 3);
        assert_eq!(
            (report[2].name.as_str(), report[2].role, report[2].met),
            ("kafka", Role::Informs, false)
        );
        database.met("ping answered in 1 ms");
        assert!(readiness.is_ready());
        readiness.set_stopping();
        assert_eq!(readiness.unmet(), ["shutting down"]);
    }

    #[test]
    fn a_condition_is_unmet_after_two_failed_probes_and_met_after_one_good_one() {
        let mut debounce = Debounce::default();
        assert!(!debounce.observe(false), "unmet until a good probe");
        assert!(debounce.observe(true));
        assert!(debounce.observe(false), "one slow answer is not an outage");
        assert!(!debounce.observe(false));
        assert!(!debounce.observe(false));
        assert!(debounce.observe(true));
        debounce.observe(false);
        assert!(debounce.observe(true), "failures must be consecutive");
    }

    #[test]
    fn the_write_probe_takes_the_locks_and_bounds_itself() {
        let probe = DatabaseProbe::write_path(&["s.a", "s.b"], &["s.menu"]);
        let script = probe.script(Duration::from_millis(1500));
        assert!(
            script.starts_with(
                "BEGIN; SET LOCAL lock_timeout = '750ms'; SET LOCAL statement_timeout = '1500ms'; "
            ),
            "{script}"
        );
        assert!(script.contains("LOCK TABLE s.a, s.b IN ROW EXCLUSIVE MODE; LOCK TABLE s.menu IN ACCESS SHARE MODE; "), "{script}");
        assert!(script.ends_with("; ROLLBACK"), "{script}");
        assert!(!DatabaseProbe::ping().is_write_path());
    }

    #[tokio::test]
    async fn a_probe_that_hangs_fails_at_its_deadline() {
        struct Hangs;
        impl Probe for Hangs {
            fn what(&self) -> String {
                "hanging probe".to_owned()
            }
            async fn check(&mut self, _timeout: Duration) -> Result<String, String> {
                std::future::pending().await
            }
        }
        tokio::time::pause();
        let readiness = Readiness::new();
        let condition = readiness.gate("database", "not checked yet");
        let shutdown = CancellationToken::new();
        let settings = ProbeSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(1500),
        };
        let probes = tokio::spawn(run_probes(
            Hangs,
            condition,
            Gauge::default(),
            settings,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            readiness.unmet(),
            ["database: hanging probe timed out after 1.5 s"]
        );
        shutdown.cancel();
        probes.await.unwrap();
    }
}
