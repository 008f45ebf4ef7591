//! The loop: poll, dispatch up to `max_in_flight` records (pausing the
//! partitions while every slot is busy), handle each with retries, commit
//! what finished, and drain at shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dead_letter::{DeadLetters, dead_letter};
use super::health::ConsumerHealth;
use super::key_order::KeyQueues;
use super::metrics::{ConsumerMetrics, LAG_STATISTICS_INTERVAL_MS};
use super::progress::Progress;
use super::rebalance::RebalanceContext;
use super::{ConsumerSettings, HandleError, Handled, MessageHandler, ReceivedMessage};
use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::health::{Condition, ProbeSettings};
use crate::kafka::{self, TopicSpec};
use crate::metrics::TopicLabel;

type Consumer_ = StreamConsumer<RebalanceContext>;

/// Most pre-fetched records held per consumer, in KiB (librdkafka's default is 64 MiB).
const PREFETCH_KIB: &str = "4096";

/// How long every slot may stay busy before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// Runs the consumer loop until `shutdown`, keeping `condition` (see
/// `consumer::health`) with coordinator probes as often as `probes` says.
pub async fn run<H: MessageHandler>(
    kafka_config: &KafkaConfig,
    settings: ConsumerSettings,
    handler: Arc<H>,
    condition: Condition,
    probes: ProbeSettings,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let health = ConsumerHealth::new(condition);
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
            // Memory bound: librdkafka prefetches up to 64 MiB by default; a
            // few MiB keep the handlers fed at thousands of records a second.
            .set("queued.max.messages.kbytes", PREFETCH_KIB)
            // Each partition's fetch may overshoot that bound by this much (a
            // larger record is still fetched whole).
            .set("fetch.message.max.bytes", "262144")
            // Statistics feed the lag gauge (see `RebalanceContext::stats`).
            .set("statistics.interval.ms", LAG_STATISTICS_INTERVAL_MS)
            .set(
                "max.poll.interval.ms",
                kafka_config.max_poll_interval.as_millis().to_string(),
            )
            .create_with_context(RebalanceContext {
                progress: progress.clone(),
                assignments: assignments.clone(),
                health: health.clone(),
                metrics: metrics.clone(),
                group: settings.group_id.clone(),
            })
            .context("failed to create the kafka consumer")?,
    );
    let dead_letters = Arc::new(DeadLetters {
        producer: kafka::dead_letter_producer(kafka_config, &format!("{}-dlq", settings.group_id))?,
        kafka_config: kafka_config.clone(),
    });
    if !kafka::ensure_topics_with_retry(
        kafka_config,
        &[
            TopicSpec::event(kafka_config, &settings.topic),
            TopicSpec::dead_letter(kafka_config, &settings.dlq_topic),
        ],
        &shutdown,
    )
    .await
    {
        return Ok(());
    }
    consumer
        .subscribe(&[&settings.topic])
        .context("failed to subscribe")?;
    let watch = tokio::spawn(health.clone().watch(
        consumer.clone(),
        settings.topic.clone(),
        probes,
        shutdown.clone(),
    ));
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

    // While every slot stays busy the assigned partitions are paused, not left
    // unpolled: polling goes on, so rebalances are served and commits are made.
    // Pausing is expensive: it drops what librdkafka had fetched, and a
    // resumed partition delivers again only after up to a second (measured:
    // a saturated payment consumer with fast handlers ran at exactly
    // max_in_flight records a second). So a saturation that passes within
    // PAUSE_AFTER does not pause, and paused partitions are resumed once half
    // the slots are free, not one.
    let resume_at = (settings.max_in_flight / 2).max(1);
    let mut paused: Option<(TopicPartitionList, u64)> = None;
    let mut errors = ErrorLog::default();
    loop {
        let saturated = permits.available_permits() == 0;
        let generation = assignments.load(std::sync::atomic::Ordering::SeqCst);
        if saturated && paused.is_none() {
            let freed = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = tokio::time::timeout(PAUSE_AFTER, permits.acquire()) => permit.is_ok(),
            };
            if freed {
                continue;
            }
        }
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
        } else if permits.available_permits() >= resume_at
            && let Some((assignment, _)) = paused.take()
        {
            // Partitions revoked meanwhile are not ours any more: resuming them is a no-op.
            let _ = consumer.resume(&assignment);
        }
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = commit_timer.tick() => {
                commit(&consumer, &progress, CommitMode::Async);
                continue;
            }
            // Enough slots freed up: go round to resume the partitions.
            _ = permits.acquire_many(resume_at as u32), if paused.is_some() => continue,
            received = consumer.recv() => match received {
                Ok(message) => ReceivedMessage::from_borrowed(&message),
                Err(error) => {
                    // librdkafka recovers by itself; these are reports. Reading
                    // them slowly (a sleep per error) once left a backlog of
                    // outage reports in front of the next assignment for
                    // minutes: read them at once, log at most one a second.
                    errors.report(&error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
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
        let in_flight = InFlight::new(metrics.in_flight.get_or_create(&topic).clone());
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
            drop(in_flight);
            drop(permit);
        });
    }

    health.unassigned("the consumer is stopping");
    let _ = watch.await;
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
        request_id = headers
            .get(foodorder_contract::events::HEADER_REQUEST_ID)
            .and_then(|id| crate::telemetry::loggable_request_id(id)),
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let started = std::time::Instant::now();
    let topic = message.topic.as_str();
    loop {
        // A panicking handler would leave its offset unfinished forever and
        // stall the partition's commits: treat it as poison instead. A try
        // stuck on a dependency that stopped answering is abandoned (as at
        // shutdown) and retried.
        let attempt = std::panic::AssertUnwindSafe(handler.handle(message)).catch_unwind();
        let outcome = match tokio::time::timeout(settings.handler_timeout, attempt).await {
            Ok(outcome) => outcome.unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(HandleError::Fatal(format!("the handler panicked: {text}")))
            }),
            Err(_) => Err(HandleError::Retryable(anyhow::anyhow!(
                "the handler did not finish within {:?} (a dependency did not answer); abandoned, to be retried",
                settings.handler_timeout
            ))),
        };
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
                // Boxed: a rare path need not enlarge every in-flight task.
                let done = Box::pin(dead_letter(
                    dead_letters,
                    settings,
                    message,
                    &reason,
                    shutdown,
                ))
                .await;
                if done {
                    metrics.finished(topic, "dead_lettered", started);
                }
                return done;
            }
            Err(HandleError::Retryable(error)) => {
                metrics.count(topic, "retried");
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{error:#}"),
                    offset = message.offset,
                    retry_in_ms = delay.as_millis() as u64,
                    "message handling failed, retrying"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Counts a record in the in-flight gauge while it lives: dropped when its
/// task ends, including a task aborted at shutdown.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Consumer errors, logged at most once a second with a count of those left out.
#[derive(Default)]
struct ErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn report(&mut self, error: &rdkafka::error::KafkaError) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(%error, similar_errors_not_logged = self.suppressed, "kafka consumer error");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::OriginalHeaders;
    use super::*;

    /// Hangs on its first try (a dependency that stopped answering), then succeeds.
    struct HangsOnce(AtomicUsize);

    impl MessageHandler for HangsOnce {
        async fn handle(&self, _message: &ReceivedMessage) -> Result<Handled, HandleError> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok(Handled::Processed)
        }
    }

    #[tokio::test]
    async fn a_try_that_hangs_is_abandoned_and_retried() {
        // Nothing here talks to a broker: the producer is only created.
        let kafka_config = KafkaConfig::local("127.0.0.1:1", "t-");
        let dead_letters = DeadLetters {
            producer: kafka::dead_letter_producer(&kafka_config, "test").unwrap(),
            kafka_config,
        };
        let settings = ConsumerSettings {
            handler_timeout: Duration::from_millis(100),
            ..ConsumerSettings::new("group", "topic", "topic.dlq", 1, Duration::from_secs(1))
        };
        let message = ReceivedMessage {
            topic: "topic".into(),
            partition: 0,
            offset: 7,
            key: None,
            payload: None,
            raw_headers: Vec::new(),
            original_headers: OriginalHeaders::default(),
        };
        let handler = HangsOnce(AtomicUsize::new(0));
        let metrics = ConsumerMetrics::new(&crate::metrics::Metrics::new());
        let done = tokio::time::timeout(
            Duration::from_secs(30),
            process(
                &handler,
                &dead_letters,
                &settings,
                &message,
                &metrics,
                &CancellationToken::new(),
            ),
        )
        .await
        .expect("the hanging try is cut");
        assert!(done, "the record is finished by the second try");
        assert_eq!(handler.0.load(Ordering::SeqCst), 2);
    }
}
