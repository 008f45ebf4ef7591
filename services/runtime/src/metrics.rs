//! Prometheus metrics, with the `prometheus-client` crate: a small, maintained
//! implementation of the OpenMetrics data model whose metric handles are plain
//! values (an `Arc` inside) that each component keeps and updates; the
//! OpenTelemetry SDK's Prometheus exporter would pull in a second metrics
//! pipeline for the same numbers.
//!
//! Every service builds one [`Metrics`] registry, hands it to its components
//! (each registers its own families: consumer, outbox relay, payment, …) and
//! serves it on its HTTP port at `GET /metrics` (see [`crate::health`]).
//! Values that are read rather than counted (pool connections, resident
//! memory, readiness) are refreshed by hooks at scrape time.
//!
//! Conventions: names start with `foodorder_` (process metrics keep their
//! standard names), counters end in `_total`, durations are histograms in
//! seconds, and every label takes a bounded set of values.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`Metrics::encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets for request and handler latencies, in seconds: 1 ms … 30 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
];

/// A histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A family of latency histograms.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new family of latency histograms.
pub fn latency_family<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug>()
-> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

type Hook = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Inner {
    registry: Mutex<Registry>,
    hooks: Mutex<Vec<Hook>>,
}

/// One service's metric registry. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with the process metrics (`process_resident_memory_bytes`,
    /// `process_start_time_seconds`) already in it.
    pub fn new() -> Self {
        let metrics = Self::default();
        metrics.register_process_metrics();
        metrics
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.0
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `metric` under `name`. Counters get their `_total` suffix from
    /// the encoder: pass the name without it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// A counter registered under `name` (without `_total`).
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::default();
        self.register(name, help, counter.clone());
        counter
    }

    /// A family of counters registered under `name` (without `_total`).
    pub fn counter_family<L>(&self, name: &str, help: &str) -> Family<L, Counter>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Counter>::default();
        self.register(name, help, family.clone());
        family
    }

    /// A gauge registered under `name`.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// A family of gauges registered under `name`.
    pub fn gauge_family<L>(&self, name: &str, help: &str) -> Family<L, Gauge>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Gauge>::default();
        self.register(name, help, family.clone());
        family
    }

    /// A family of latency histograms ([`LATENCY_BUCKETS`]) registered under `name`.
    pub fn latency_family<L>(&self, name: &str, help: &str) -> LatencyFamily<L>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = latency_family::<L>();
        self.register(name, help, family.clone());
        family
    }

    /// Runs `hook` before every scrape, to refresh values that are read rather than counted.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.0
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(hook));
    }

    /// The current values in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        // The hooks run without the lock held: one may register metrics itself.
        let hooks: Vec<Hook> = self
            .0
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for hook in hooks {
            hook();
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry()) {
            tracing::error!(%error, "failed to encode the metrics");
        }
        text
    }

    /// The current values in Prometheus's classic text format (0.0.4), for
    /// clients that do not ask for OpenMetrics (`promtool check metrics`,
    /// `curl`): a counter family is named with its `_total` suffix and there
    /// is no `# EOF`.
    pub fn encode_text(&self) -> String {
        to_classic_text(&self.encode())
    }

    /// `foodorder_db_pool_connections{state="in_use"|"idle"}` for `pool`.
    pub fn register_pool(&self, pool: &sqlx::PgPool) {
        let connections = self.gauge_family::<StateLabel>(
            "foodorder_db_pool_connections",
            "Connections of the service's PostgreSQL pool, by state",
        );
        let pool = pool.clone();
        self.on_scrape(move || {
            let (size, idle) = (i64::from(pool.size()), pool.num_idle() as i64);
            connections
                .get_or_create(&StateLabel { state: "in_use" })
                .set((size - idle).max(0));
            connections
                .get_or_create(&StateLabel { state: "idle" })
                .set(idle);
        });
    }

    fn register_process_metrics(&self) {
        let resident = self.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        );
        self.on_scrape(move || {
            if let Some(bytes) = resident_memory_bytes() {
                resident.set(bytes);
            }
        });
        let started = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_secs_f64())
                .unwrap_or_default(),
        );
        self.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            started,
        );
    }
}

/// A `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: &'static str,
}

/// A `topic` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The Kafka topic.
    pub topic: String,
}

/// OpenMetrics text → classic text format (see [`Metrics::encode_text`]).
fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("# TYPE ")?;
            let (name, kind) = rest.split_once(' ')?;
            (kind == "counter").then_some(name)
        })
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match metadata {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// The process's resident set size, from `/proc/self/status` (Linux).
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_suffix_and_process_metrics_are_there() {
        let metrics = Metrics::new();
        let placed = metrics.counter("foodorder_test_things", "Things");
        placed.inc_by(3);
        let latency = metrics.latency_family::<TopicLabel>("foodorder_test_seconds", "Latency");
        latency
            .get_or_create(&TopicLabel {
                topic: "t".to_owned(),
            })
            .observe(0.02);
        let text = metrics.encode();
        assert!(text.contains("foodorder_test_things_total 3"), "{text}");
        assert!(
            text.contains("foodorder_test_seconds_bucket{le=\"0.025\",topic=\"t\"} 1")
                || text.contains("foodorder_test_seconds_bucket{topic=\"t\",le=\"0.025\"} 1"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        let classic = metrics.encode_text();
        assert!(
            classic.contains("# TYPE foodorder_test_things_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP foodorder_test_things_total Things.\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE foodorder_test_seconds histogram\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
