//! The effectively-once consumer loop shared by the payment and notification
//! services.
//!
//! * Up to `max_in_flight` messages are handled concurrently; messages with the
//!   same key are handled one after another, in offset order.
//! * Auto commit is off. Offsets are committed per partition only up to the
//!   first message that is not finished, so a commit never passes an
//!   unfinished message; the handler's own transaction must have committed
//!   before it returns.
//! * A handler error is either retryable (database or broker down: retried
//!   with capped back-off, forever, until shutdown) or fatal (poison message:
//!   the original record goes to the dead-letter topic with diagnostic
//!   headers, and its offset is committed).
//! * On a rebalance, finished work of revoked partitions is committed and
//!   in-flight work is abandoned: its completion is not committed, the new
//!   owner re-delivers it, and the handler's deduplication makes that harmless.
//! * On shutdown: stop taking messages, let in-flight handlers finish, commit
//!   synchronously, flush the producer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::KafkaConfig;
use crate::health::Readiness;
use crate::kafka;
use crate::metrics::{Metrics, TopicLabel};
use crate::record_headers::{self, RawHeader};

/// DLQ header: topic the record was read from.
pub const DLQ_SOURCE_TOPIC: &str = "dlq-source-topic";
/// DLQ header: partition the record was read from.
pub const DLQ_SOURCE_PARTITION: &str = "dlq-source-partition";
/// DLQ header: offset of the record.
pub const DLQ_SOURCE_OFFSET: &str = "dlq-source-offset";
/// DLQ header: consumer group that gave up on it.
pub const DLQ_CONSUMER_GROUP: &str = "dlq-consumer-group";
/// DLQ header: why it could not be processed.
pub const DLQ_ERROR: &str = "dlq-error";
/// DLQ header: when it was dead-lettered (RFC 3339).
pub const DLQ_FAILED_AT: &str = "dlq-failed-at";

/// A record handed to a handler.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Option<Vec<u8>>,
    /// Record headers, names and values byte-exact (names need not be UTF-8).
    pub raw_headers: Vec<RawHeader>,
    /// The original header list, copied by librdkafka, for the dead-letter copy.
    original_headers: OriginalHeaders,
}

/// A byte-exact copy of a record's header list (rdkafka's type has no `Debug`).
#[derive(Clone, Default)]
struct OriginalHeaders(Option<OwnedHeaders>);

impl std::fmt::Debug for OriginalHeaders {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OriginalHeaders")
    }
}

impl ReceivedMessage {
    fn from_borrowed(message: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            raw_headers: record_headers::read(message),
            // `detach` copies the list inside librdkafka without reading a
            // name as text (rdkafka's name accessor panics on non-UTF-8).
            original_headers: OriginalHeaders(message.headers().map(|headers| headers.detach())),
        }
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|key| std::str::from_utf8(key).ok())
    }

    /// The UTF-8 headers as name → value.
    pub fn headers(&self) -> BTreeMap<String, String> {
        record_headers::utf8_map(&self.raw_headers)
    }
}

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be processed: dead-letter it.
    #[error("fatal: {0}")]
    Fatal(String),
    /// A dependency is down: retry the same message later.
    #[error("retryable: {0:#}")]
    Retryable(anyhow::Error),
}

impl From<sqlx::Error> for HandleError {
    /// Data the database rejects is poison (retrying cannot help); anything
    /// else (unreachable, deadlock, serialization failure …) is retried.
    fn from(error: sqlx::Error) -> Self {
        if crate::db::is_data_error(&error) {
            Self::Fatal(format!("the database rejected the message's data: {error}"))
        } else {
            Self::Retryable(anyhow::Error::new(error).context("database error"))
        }
    }
}

/// What handling a message did (for the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Its effect was applied now.
    Processed,
    /// Its effect had been applied already (a redelivery or a duplicate).
    Duplicate,
}

/// Processes one message. Must be idempotent: a message can be delivered again.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles `message`; returns once its effect is committed.
    fn handle(
        &self,
        message: &ReceivedMessage,
    ) -> impl Future<Output = Result<Handled, HandleError>> + Send;
}

/// Consumer loop settings.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// Consumer group id.
    pub group_id: String,
    /// Topic to consume.
    pub topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Most messages handled at once.
    pub max_in_flight: usize,
    /// How often finished offsets are committed.
    pub commit_interval: Duration,
    /// How long in-flight handlers may run after shutdown before they are abandoned.
    pub shutdown_grace: Duration,
}

#[derive(Default)]
struct PartitionProgress {
    /// Offsets dispatched and not finished.
    in_flight: BTreeSet<i64>,
    /// Next offset to read after the highest dispatched one.
    next_offset: Option<i64>,
    /// Last committed position.
    committed: Option<i64>,
}

impl PartitionProgress {
    /// The position that is safe to commit: the first unfinished offset, or past everything dispatched.
    fn committable(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next_offset)
    }
}

type ProgressMap = HashMap<(String, i32), PartitionProgress>;

#[derive(Clone, Default)]
struct Progress(Arc<Mutex<ProgressMap>>);

impl Progress {
    fn lock(&self) -> MutexGuard<'_, ProgressMap> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dispatched(&self, topic: &str, partition: i32, offset: i64) {
        let mut map = self.lock();
        let progress = map.entry((topic.to_owned(), partition)).or_default();
        progress.in_flight.insert(offset);
        progress.next_offset = Some(
            progress
                .next_offset
                .map_or(offset + 1, |next| next.max(offset + 1)),
        );
    }

    fn finished(&self, topic: &str, partition: i32, offset: i64) {
        // A revoked partition has no entry any more: its completion is not committed.
        if let Some(progress) = self.lock().get_mut(&(topic.to_owned(), partition)) {
            progress.in_flight.remove(&offset);
        }
    }

    /// Positions that advanced since the last commit, for the given partitions (all when `only` is None).
    fn to_commit(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        let mut map = self.lock();
        for ((topic, partition), progress) in map.iter_mut() {
            if let Some(only) = only
                && only.find_partition(topic, *partition).is_none()
            {
                continue;
            }
            if let Some(position) = progress.committable()
                && progress.committed != Some(position)
                && list
                    .add_partition_offset(topic, *partition, Offset::Offset(position))
                    .is_ok()
            {
                progress.committed = Some(position);
            }
        }
        list
    }

    /// Forgets what was marked committed (all partitions, or those listed), so
    /// the next commit sends those positions again: after a failed commit, and
    /// before the final one at shutdown.
    fn uncommitted(&self, only: Option<&TopicPartitionList>) {
        let mut map = self.lock();
        for ((topic, partition), progress) in map.iter_mut() {
            if only.is_none_or(|only| only.find_partition(topic, *partition).is_some()) {
                progress.committed = None;
            }
        }
    }

    fn forget(&self, partitions: &TopicPartitionList) {
        let mut map = self.lock();
        for element in partitions.elements() {
            map.remove(&(element.topic().to_owned(), element.partition()));
        }
    }
}

/// Commits finished work of revoked partitions and forgets them; counts
/// assignments, so that the loop can pause partitions it was newly given.
struct RebalanceContext {
    progress: Progress,
    assignments: Arc<std::sync::atomic::AtomicU64>,
    /// Ready while the consumer holds an assignment (an empty one counts: the
    /// group has more members than partitions).
    readiness: Readiness,
    /// Where the lag from librdkafka's statistics goes.
    metrics: ConsumerMetrics,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's periodic statistics: the lag of each partition this
    /// consumer is assigned (high watermark minus committed offset, or minus
    /// the low watermark while nothing is committed).
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.lag.clear();
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                if *partition < 0 || stats.fetch_state == "none" || stats.hi_offset < 0 {
                    continue;
                }
                // Nothing committed yet: everything retained is still to be read.
                let lag = if stats.committed_offset >= 0 {
                    stats.hi_offset - stats.committed_offset
                } else if stats.lo_offset >= 0 {
                    stats.hi_offset - stats.lo_offset
                } else {
                    continue;
                };
                self.metrics
                    .lag
                    .get_or_create(&LagLabels {
                        topic: topic.clone(),
                        partition: partition.to_string(),
                    })
                    .set(lag.max(0));
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let offsets = self.progress.to_commit(Some(partitions));
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "failed to commit offsets of revoked partitions");
            }
            self.progress.forget(partitions);
            self.readiness.set_assigned(false);
            tracing::info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed, it will be retried");
            self.progress.uncommitted(Some(offsets));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.assignments
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.readiness.set_assigned(true);
                tracing::info!(partitions = partitions.count(), "partitions assigned")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

type Consumer_ = StreamConsumer<RebalanceContext>;

/// Serialises handling of messages with the same key, in the order they were
/// read. A message's place in its key's line is taken in the loop, before its
/// task is spawned, so tasks that happen to start in another order still run
/// in offset order.
#[derive(Clone, Default)]
struct KeyQueues(Arc<Mutex<HashMap<Vec<u8>, KeyTail>>>);

/// The last message queued for a key: its ticket, and what its successor waits on.
struct KeyTail {
    ticket: u64,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// A message's place in its key's line.
struct KeyTurn {
    key: Vec<u8>,
    ticket: u64,
    /// Completes when the previous message with this key is done (or abandoned).
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped when this message is done, which lets the next one go.
    done: tokio::sync::oneshot::Sender<()>,
}

impl KeyQueues {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, KeyTail>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next place in `key`'s line (none for a keyless message).
    fn enqueue(&self, key: Option<&[u8]>, ticket: u64) -> Option<KeyTurn> {
        let key = key?.to_vec();
        let (done, waiter) = tokio::sync::oneshot::channel();
        let previous = self
            .lock()
            .insert(
                key.clone(),
                KeyTail {
                    ticket,
                    done: waiter,
                },
            )
            .map(|tail| tail.done);
        Some(KeyTurn {
            key,
            ticket,
            previous,
            done,
        })
    }

    /// Waits for the turn, runs `work`, then lets the next message go.
    async fn run<T>(&self, turn: Option<KeyTurn>, work: impl Future<Output = T>) -> T {
        let Some(turn) = turn else { return work.await };
        if let Some(previous) = turn.previous {
            // An error means the previous message's task ended without signalling: it is done too.
            let _ = previous.await;
        }
        let result = work.await;
        let mut map = self.lock();
        // Nobody queued behind us: drop the key's entry.
        if map
            .get(&turn.key)
            .is_some_and(|tail| tail.ticket == turn.ticket)
        {
            map.remove(&turn.key);
        }
        drop(turn.done);
        result
    }
}

/// Runs the consumer loop until `shutdown`.
pub async fn run<H: MessageHandler>(
    kafka_config: &KafkaConfig,
    settings: ConsumerSettings,
    handler: Arc<H>,
    readiness: Readiness,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let progress = Progress::default();
    let assignments = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let consumer: Arc<Consumer_> = Arc::new(
        kafka::client_config(kafka_config, &settings.group_id)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                kafka_config.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (kafka_config.session_timeout.as_millis() / 3)
                    .max(100)
                    .to_string(),
            )
            .set("partition.assignment.strategy", "range")
            // Statistics feed the lag gauge (see `RebalanceContext::stats`).
            .set("statistics.interval.ms", LAG_STATISTICS_INTERVAL_MS)
            .set(
                "max.poll.interval.ms",
                kafka_config.max_poll_interval.as_millis().to_string(),
            )
            .create_with_context(RebalanceContext {
                progress: progress.clone(),
                assignments: assignments.clone(),
                readiness: readiness.clone(),
                metrics: metrics.clone(),
            })
            .context("failed to create the kafka consumer")?,
    );
    let dead_letters = Arc::new(DeadLetters {
        producer: kafka::dead_letter_producer(kafka_config, &format!("{}-dlq", settings.group_id))?,
        kafka_config: kafka_config.clone(),
    });
    if !kafka::ensure_topics_with_retry(
        kafka_config,
        &kafka::platform_topics(kafka_config),
        &shutdown,
    )
    .await
    {
        return Ok(());
    }
    consumer
        .subscribe(&[&settings.topic])
        .context("failed to subscribe")?;
    tracing::info!(
        topic = settings.topic,
        group = settings.group_id,
        max_in_flight = settings.max_in_flight,
        "consumer started"
    );

    metrics.start(&settings.topic);
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let key_queues = KeyQueues::default();
    let mut next_ticket: u64 = 0;
    let settings = Arc::new(settings);
    let mut commit_timer = tokio::time::interval(settings.commit_interval);
    commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();

    // While every slot is busy the assigned partitions are paused, not left
    // unpolled: polling goes on, so rebalances are served and commits are made.
    let mut paused: Option<(TopicPartitionList, u64)> = None;
    loop {
        let saturated = permits.available_permits() == 0;
        let generation = assignments.load(std::sync::atomic::Ordering::SeqCst);
        if saturated
            && paused
                .as_ref()
                .is_none_or(|(_, paused_at)| *paused_at != generation)
        {
            if let Ok(assignment) = consumer.assignment()
                && consumer.pause(&assignment).is_ok()
            {
                paused = Some((assignment, generation));
            }
        } else if !saturated && let Some((assignment, _)) = paused.take() {
            // Partitions revoked meanwhile are not ours any more: resuming them is a no-op.
            let _ = consumer.resume(&assignment);
        }
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = commit_timer.tick() => {
                commit(&consumer, &progress, CommitMode::Async);
                continue;
            }
            // A slot freed up: go round to resume the partitions.
            _ = permits.acquire(), if saturated => continue,
            received = consumer.recv() => match received {
                Ok(message) => ReceivedMessage::from_borrowed(&message),
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        // Normally a slot is free; a record fetched just before the pause waits for one.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.context("semaphore closed")?,
        };
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        progress.dispatched(&message.topic, message.partition, message.offset);
        next_ticket += 1;
        let turn = key_queues.enqueue(message.key.as_deref(), next_ticket);
        let (handler, dead_letters, progress, key_queues, settings, shutdown, metrics) = (
            handler.clone(),
            dead_letters.clone(),
            progress.clone(),
            key_queues.clone(),
            settings.clone(),
            shutdown.clone(),
            metrics.clone(),
        );
        let topic = TopicLabel {
            topic: message.topic.clone(),
        };
        let in_flight = metrics.in_flight.get_or_create(&topic).clone();
        in_flight.inc();
        tasks.spawn(async move {
            let span = consumer_span(&message, &settings.group_id);
            let work = process(
                &*handler,
                &dead_letters,
                &settings,
                &message,
                &metrics,
                &shutdown,
            )
            .instrument(span);
            let finished = key_queues.run(turn, work).await;
            if finished {
                progress.finished(&message.topic, message.partition, message.offset);
            }
            in_flight.dec();
            drop(permit);
        });
    }

    readiness.set_assigned(false);
    tracing::info!(
        in_flight = tasks.len(),
        "consumer stopping, draining in-flight messages"
    );
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            abandoned = tasks.len(),
            "in-flight messages abandoned after the grace period; they will be redelivered"
        );
        tasks.abort_all();
    }
    progress.uncommitted(None);
    commit(&consumer, &progress, CommitMode::Sync);
    if let Err(error) = rdkafka::producer::Producer::flush(
        &dead_letters.producer,
        Timeout::After(Duration::from_secs(5)),
    ) {
        tracing::warn!(%error, "failed to flush the dead-letter producer");
    }
    consumer.unsubscribe();
    tracing::info!("consumer stopped");
    Ok(())
}

/// A CONSUMER span for one record: child of the producer's span (from the
/// record's trace-context headers) and linked to it.
fn consumer_span(message: &ReceivedMessage, group_id: &str) -> tracing::Span {
    let headers = message.headers();
    let span = tracing::info_span!(
        "kafka.process",
        otel.name = format!("{} process", message.topic),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = message.topic.as_str(),
        messaging.consumer.group.name = group_id,
        messaging.kafka.message.key = message.key_str(),
        messaging.kafka.destination.partition = message.partition,
        messaging.kafka.message.offset = message.offset,
        request_id = headers.get(crate::events::HEADER_REQUEST_ID).map(String::as_str),
    );
    crate::telemetry::continue_trace(&span, &headers, true);
    span
}

fn commit(consumer: &Consumer_, progress: &Progress, mode: CommitMode) {
    let offsets = progress.to_commit(None);
    if offsets.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&offsets, mode) {
        tracing::warn!(%error, "failed to commit offsets, they will be retried");
        progress.uncommitted(Some(&offsets));
    }
}

/// Handles one message until it is done (true) or abandoned at shutdown (false).
async fn process<H: MessageHandler>(
    handler: &H,
    dead_letters: &DeadLetters,
    settings: &ConsumerSettings,
    message: &ReceivedMessage,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let topic = message.topic.as_str();
    loop {
        // A panicking handler would leave its offset unfinished forever and
        // stall the partition's commits: treat it as poison instead.
        let outcome = std::panic::AssertUnwindSafe(handler.handle(message))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(HandleError::Fatal(format!("the handler panicked: {text}")))
            });
        match outcome {
            Ok(handled) => {
                let outcome = match handled {
                    Handled::Processed => "processed",
                    Handled::Duplicate => "duplicate",
                };
                metrics.finished(topic, outcome, started);
                return true;
            }
            Err(HandleError::Fatal(reason)) => {
                tracing::warn!(
                    topic = message.topic,
                    partition = message.partition,
                    offset = message.offset,
                    reason,
                    "message cannot be processed, dead-lettering it"
                );
                let done = dead_letter(dead_letters, settings, message, &reason, shutdown).await;
                if done {
                    metrics.finished(topic, "dead_lettered", started);
                }
                return done;
            }
            Err(HandleError::Retryable(error)) => {
                metrics.count(topic, "retried");
                tracing::warn!(
                    error = format!("{error:#}"),
                    offset = message.offset,
                    retry_in_ms = backoff.as_millis() as u64,
                    "message handling failed, retrying"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// How often librdkafka reports statistics, hence how fresh the lag gauge is.
const LAG_STATISTICS_INTERVAL_MS: &str = "5000";

/// Labels of the lag gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct LagLabels {
    topic: String,
    partition: String,
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
    duration: crate::metrics::LatencyFamily<TopicLabel>,
    in_flight: prometheus_client::metrics::family::Family<
        TopicLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    lag: prometheus_client::metrics::family::Family<
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
                "Records between each assigned partition's high watermark and the group's committed offset",
            ),
        }
    }

    /// Exports every outcome of `topic` (and its in-flight gauge) from the start, at 0.
    fn start(&self, topic: &str) {
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

    fn count(&self, topic: &str, outcome: &'static str) {
        self.records
            .get_or_create(&RecordLabels {
                topic: topic.to_owned(),
                outcome,
            })
            .inc();
    }

    fn finished(&self, topic: &str, outcome: &'static str, started: std::time::Instant) {
        self.count(topic, outcome);
        self.duration
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Where dead-letter copies go, and what is needed to recreate a missing topic.
struct DeadLetters {
    producer: FutureProducer,
    kafka_config: KafkaConfig,
}

/// The longest `dlq-error` header: an error text is diagnostic, not data.
const DLQ_ERROR_MAX_BYTES: usize = 1024;

/// Copies the original record (key, value and header list, byte for byte) to
/// the dead-letter topic with diagnostic headers; retries until acknowledged.
/// The dead-letter topics accept any record an event topic accepted plus the
/// diagnostics (see [`kafka::DLQ_MAX_MESSAGE_BYTES`]), and a topic that has
/// gone missing is created again, so a copy is never refused for good.
async fn dead_letter(
    dead_letters: &DeadLetters,
    settings: &ConsumerSettings,
    message: &ReceivedMessage,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    let failed_at = chrono::Utc::now().to_rfc3339();
    let partition = message.partition.to_string();
    let offset = message.offset.to_string();
    let reason = truncate_utf8(reason, DLQ_ERROR_MAX_BYTES);
    let diagnostics = [
        (DLQ_SOURCE_TOPIC, message.topic.as_str()),
        (DLQ_SOURCE_PARTITION, partition.as_str()),
        (DLQ_SOURCE_OFFSET, offset.as_str()),
        (DLQ_CONSUMER_GROUP, settings.group_id.as_str()),
        (DLQ_ERROR, reason),
        (DLQ_FAILED_AT, failed_at.as_str()),
    ];
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut headers = message.original_headers.0.clone().unwrap_or_default();
        for (name, value) in diagnostics {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&settings.dlq_topic).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &message.payload {
            record = record.payload(payload.as_slice());
        }
        match dead_letters.producer.send(record, Timeout::Never).await {
            Ok(_) => return true,
            Err((error, _)) => {
                tracing::warn!(%error, dlq_topic = settings.dlq_topic, retry_in_ms = backoff.as_millis() as u64, "failed to dead-letter a message, retrying");
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                    || error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopic)
                {
                    let specs: Vec<_> = kafka::platform_topics(&dead_letters.kafka_config)
                        .into_iter()
                        .filter(|spec| spec.name == settings.dlq_topic)
                        .collect();
                    if let Err(error) =
                        kafka::ensure_topics(&dead_letters.kafka_config, &specs).await
                    {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "failed to recreate the dead-letter topic"
                        );
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unfinished_offset() {
        let progress = Progress::default();
        for offset in 10..15 {
            progress.dispatched("t", 0, offset);
        }
        progress.finished("t", 0, 11);
        progress.finished("t", 0, 12);
        let first = progress.to_commit(None);
        assert_eq!(
            first.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(10)
        );
        progress.finished("t", 0, 10);
        let second = progress.to_commit(None);
        assert_eq!(
            second.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(13)
        );
        assert_eq!(progress.to_commit(None).count(), 0, "nothing new to commit");
        progress.finished("t", 0, 14);
        progress.finished("t", 0, 13);
        assert_eq!(
            progress
                .to_commit(None)
                .find_partition("t", 0)
                .unwrap()
                .offset(),
            Offset::Offset(15)
        );
    }

    #[test]
    fn long_error_texts_are_cut_on_a_character_boundary() {
        let text = "é".repeat(600);
        let cut = truncate_utf8(&text, DLQ_ERROR_MAX_BYTES);
        assert!(cut.len() <= DLQ_ERROR_MAX_BYTES && cut.len() >= DLQ_ERROR_MAX_BYTES - 1);
        assert_eq!(truncate_utf8("short", DLQ_ERROR_MAX_BYTES), "short");
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let progress = Progress::default();
        progress.dispatched("t", 0, 1);
        progress.dispatched("t", 1, 7);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 1);
        progress.forget(&revoked);
        progress.finished("t", 1, 7);
        let offsets = progress.to_commit(None);
        assert!(offsets.find_partition("t", 1).is_none());
        assert_eq!(
            offsets.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(1)
        );
    }

    #[tokio::test]
    async fn same_key_runs_one_at_a_time_in_the_order_read() {
        let queues = KeyQueues::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Places are taken in reading order 1..=8; the tasks then start in reverse.
        let turns: Vec<_> = (1..=8_u64)
            .map(|ticket| (ticket, queues.enqueue(Some(b"order-1"), ticket)))
            .collect();
        let mut handles = Vec::new();
        for (ticket, turn) in turns.into_iter().rev() {
            let (queues, order, active, max_seen) = (
                queues.clone(),
                order.clone(),
                active.clone(),
                max_seen.clone(),
            );
            handles.push(tokio::spawn(async move {
                queues
                    .run(turn, async {
                        let now = active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        order.lock().unwrap().push(ticket);
                        active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    })
                    .await;
            }));
            tokio::task::yield_now().await;
        }
        for handle in handles {
            handle.await.unwrap();
        }
        assert_eq!(max_seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(*order.lock().unwrap(), (1..=8).collect::<Vec<_>>());
        assert!(queues.lock().is_empty(), "entries are dropped when idle");
    }

    #[tokio::test]
    async fn other_keys_and_keyless_messages_do_not_wait() {
        let queues = KeyQueues::default();
        let blocked = queues.enqueue(Some(b"a"), 1);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let queues = queues.clone();
            async move { queues.run(blocked, async { wait.await.ok() }).await }
        });
        let other = queues.enqueue(Some(b"b"), 2);
        queues.run(other, async {}).await;
        queues.run(queues.enqueue(None, 3), async {}).await;
        release.send(()).unwrap();
        first.await.unwrap();
    }
}
