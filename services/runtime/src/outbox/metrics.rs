//! The relay's metrics: rows published and their latency, and the backlog
//! (unsent rows and the age of the oldest) sampled every few seconds, which
//! also keeps the `outbox` health condition shown on `/healthz`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::Schema;
use crate::health::{Condition, millis, seconds};
use crate::metrics::{LatencyFamily, Metrics, TopicLabel};

/// The relay's metrics.
#[derive(Clone)]
pub struct OutboxMetrics {
    pub(super) unsent: Family<TopicLabel, Gauge>,
    pub(super) oldest_age: Family<TopicLabel, Gauge<f64, AtomicU64>>,
    pub(super) published: Family<TopicLabel, Counter>,
    pub(super) publish_duration: LatencyFamily<TopicLabel>,
}

impl OutboxMetrics {
    /// Registers the outbox families in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let oldest_age = Family::<TopicLabel, Gauge<f64, AtomicU64>>::default();
        metrics.register(
            "foodorder_outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox row not yet published, by topic (0 when none)",
            oldest_age.clone(),
        );
        Self {
            unsent: metrics.gauge_family(
                "foodorder_outbox_unsent_rows",
                "Outbox rows not yet published (parked rows excluded), by topic",
            ),
            oldest_age,
            published: metrics.counter_family(
                "foodorder_outbox_published",
                "Outbox rows the broker acknowledged, by topic",
            ),
            publish_duration: metrics.latency_family(
                "foodorder_outbox_publish_duration_seconds",
                "Time from handing an outbox row to the producer to the broker's acknowledgement, by topic",
            ),
        }
    }
}

/// How often the backlog gauges are refreshed.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// How old the oldest unsent row may be before the `outbox` health condition
/// is unmet (the threshold of the FoodOrderOutboxStalled alert).
pub const OUTBOX_STALLED_AFTER: Duration = Duration::from_secs(30);

/// When the broker last acknowledged one of the relay's records. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct LastPublished(Arc<Mutex<Option<Instant>>>);

impl LastPublished {
    /// Records an acknowledgement now.
    pub(super) fn mark(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    fn describe(&self) -> String {
        match *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(at) => format!("last publish acknowledged {} ago", millis(at.elapsed())),
            None => "no publish acknowledged since the start".to_owned(),
        }
    }
}

/// The relay's health condition and what feeds it.
pub(super) struct BacklogStatus {
    pub(super) condition: Condition,
    pub(super) last_published: LastPublished,
}

impl BacklogStatus {
    /// Met while the oldest unsent row is younger than [`OUTBOX_STALLED_AFTER`].
    fn show(&self, backlog: &Result<Vec<(String, i64, f64)>, sqlx::Error>) {
        let published = self.last_published.describe();
        let rows = match backlog {
            Ok(rows) => rows,
            Err(error) => {
                return self.condition.unmet(format!(
                    "the backlog could not be read ({error}); {published}"
                ));
            }
        };
        let unsent: i64 = rows.iter().map(|(_, rows, _)| rows).sum();
        let oldest = rows.iter().map(|(_, _, age)| *age).fold(0.0_f64, f64::max);
        let oldest = Duration::try_from_secs_f64(oldest).unwrap_or_default();
        if unsent == 0 {
            self.condition.met(format!("nothing unsent; {published}"));
        } else if oldest < OUTBOX_STALLED_AFTER {
            self.condition.met(format!(
                "{unsent} unsent, the oldest {} old; {published}",
                seconds(oldest)
            ));
        } else {
            self.condition.unmet(format!(
                "not draining: {unsent} unsent, the oldest {} old (over {}); {published}",
                seconds(oldest),
                seconds(OUTBOX_STALLED_AFTER)
            ));
        }
    }
}

/// Refreshes the backlog gauges (unsent rows, age of the oldest) and the
/// `outbox` condition every [`BACKLOG_INTERVAL`] until `shutdown`. A topic
/// with no backlog reads 0.
pub(super) async fn watch_backlog(
    pool: PgPool,
    schema: &'static Schema,
    topics: Vec<String>,
    metrics: OutboxMetrics,
    status: Option<BacklogStatus>,
    shutdown: CancellationToken,
) {
    let mut known: std::collections::BTreeSet<String> = topics.iter().cloned().collect();
    let mut interval = tokio::time::interval(BACKLOG_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let sql = format!(
            "SELECT topic, count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) \
             FROM {}.outbox WHERE sent_at IS NULL AND parked_at IS NULL \
             AND (cardinality($1::text[]) = 0 OR topic = ANY($1)) GROUP BY topic",
            schema.name
        );
        let query = sqlx::query_as(&sql).bind(&topics).fetch_all(&pool);
        // Bounded: a connection that stopped answering must not stop the
        // watch (nor the relay's shutdown, which waits for it).
        let backlog: Result<Vec<(String, i64, f64)>, sqlx::Error> = tokio::select! {
            () = shutdown.cancelled() => return,
            read = tokio::time::timeout(BACKLOG_INTERVAL, query) => read.unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("postgresql did not answer within {BACKLOG_INTERVAL:?}"),
                )))
            }),
        };
        if let Some(status) = &status {
            status.show(&backlog);
        }
        let backlog = match backlog {
            Ok(rows) => rows,
            Err(error) => {
                tracing::debug!(%error, "failed to read the outbox backlog");
                continue;
            }
        };
        known.extend(backlog.iter().map(|(topic, _, _)| topic.clone()));
        for topic in &known {
            let (rows, age) = backlog
                .iter()
                .find(|(name, _, _)| name == topic)
                .map_or((0, 0.0), |(_, rows, age)| (*rows, age.max(0.0)));
            let label = TopicLabel {
                topic: topic.clone(),
            };
            metrics.unsent.get_or_create(&label).set(rows);
            metrics.oldest_age.get_or_create(&label).set(age);
        }
    }
}
