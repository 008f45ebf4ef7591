//! The consumer's metrics.

use super::super::metrics::{LatencyFamily, Metrics, TopicLabel};

/// How often librdkafka reports statistics, hence how fresh the lag gauge is.
pub(super) const LAG_STATISTICS_INTERVAL_MS: &str = "5000";

/// Labels of the lag gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct LagLabels {
    /// The consumer group: a topic read by several groups (order-api and
    /// notification-service both read payment.completed) has a lag per group.
    pub(super) group: String,
    pub(super) topic: String,
    pub(super) partition: String,
}

/// Labels of the records counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RecordLabels {
    topic: String,
    outcome: &'static str,
}

/// The consumer loop's metrics.
#[derive(Clone)]
pub struct ConsumerMetrics {
    records: prometheus_client::metrics::family::Family<
        RecordLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    duration: LatencyFamily<TopicLabel>,
    pub(super) in_flight: prometheus_client::metrics::family::Family<
        TopicLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    pub(super) lag: prometheus_client::metrics::family::Family<
        LagLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl ConsumerMetrics {
    /// Registers the consumer families in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            records: metrics.counter_family(
                "foodorder_consumer_records",
                "Records consumed, by topic and outcome (processed, duplicate, dead_lettered; retried counts each failed try)",
            ),
            duration: metrics.latency_family(
                "foodorder_consumer_handler_duration_seconds",
                "Time from a record's first handling try to its outcome, retries included, by topic",
            ),
            in_flight: metrics.gauge_family(
                "foodorder_consumer_in_flight_records",
                "Records being handled now, by topic",
            ),
            lag: metrics.gauge_family(
                "foodorder_consumer_lag_records",
                "Records between each assigned partition's high watermark and the group's committed offset, by group, topic and partition",
            ),
        }
    }

    /// Exports every outcome of `topic` (and its in-flight gauge) from the start, at 0.
    pub(super) fn start(&self, topic: &str) {
        for outcome in ["processed", "duplicate", "dead_lettered", "retried"] {
            drop(self.records.get_or_create(&RecordLabels {
                topic: topic.to_owned(),
                outcome,
            }));
        }
        drop(self.in_flight.get_or_create(&TopicLabel {
            topic: topic.to_owned(),
        }));
    }

    pub(super) fn count(&self, topic: &str, outcome: &'static str) {
        self.records
            .get_or_create(&RecordLabels {
                topic: topic.to_owned(),
                outcome,
            })
            .inc();
    }

    pub(super) fn finished(&self, topic: &str, outcome: &'static str, started: std::time::Instant) {
        self.count(topic, outcome);
        self.duration
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}
