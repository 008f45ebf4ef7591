//! The relay: claims unsent outbox rows (`FOR UPDATE SKIP LOCKED`), publishes
//! them through an idempotent producer, marks them sent after the broker's
//! acknowledgement, parks the ones the broker refuses for good, and replaces a
//! producer that hit a fatal error.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::{BacklogStatus, LastPublished, watch_backlog};
use super::{OutboxMetrics, RelayConfig, notify_channel};
use crate::backoff::Backoff;
use crate::db::{self, Schema};
use crate::health::Condition;
use crate::metrics::{Metrics, TopicLabel};
use crate::{kafka, telemetry};

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    topic: String,
    message_key: String,
    payload: Vec<u8>,
    headers: sqlx::types::Json<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("{failed} of {claimed} records were not acknowledged by kafka: {first_error}")]
    Publish {
        failed: usize,
        claimed: usize,
        first_error: rdkafka::error::KafkaError,
    },
    #[error(
        "a batch did not finish within {0:?} (the database or the broker stopped answering); abandoned"
    )]
    TimedOut(Duration),
}

/// How long the batch in flight when shutdown comes may take to finish (its
/// records are acknowledged and its rows marked) before it is abandoned.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(5);

/// Makes a new producer when the current one hit a fatal error.
type ProducerFactory = Box<dyn Fn() -> anyhow::Result<FutureProducer> + Send + Sync>;

/// Publishes outbox rows to Kafka.
pub struct OutboxRelay {
    pool: PgPool,
    schema: &'static Schema,
    producer: std::sync::Mutex<FutureProducer>,
    make_producer: Option<ProducerFactory>,
    config: RelayConfig,
    metrics: OutboxMetrics,
    /// How long a record may wait for room in the producer's queue.
    enqueue_timeout: Timeout,
    status: Option<Condition>,
    last_published: LastPublished,
    /// Whether [`OutboxRelay::run`] watches the backlog itself (false when
    /// [`run_relay_with_topics`] already does).
    watch_backlog: bool,
}

impl OutboxRelay {
    /// A relay of `schema`'s outbox over `pool`, publishing with `producer`
    /// (which should be idempotent, acks=all).
    pub fn new(
        pool: PgPool,
        schema: &'static Schema,
        producer: FutureProducer,
        config: RelayConfig,
    ) -> Self {
        Self {
            pool,
            schema,
            producer: std::sync::Mutex::new(producer),
            make_producer: None,
            config,
            metrics: OutboxMetrics::new(&Metrics::default()),
            enqueue_timeout: Timeout::After(Duration::from_secs(10)),
            status: None,
            last_published: LastPublished::default(),
            watch_backlog: true,
        }
    }

    /// How long a record may wait for room in the producer's local queue
    /// (default 10 s; [`kafka::enqueue_timeout`] of the Kafka settings).
    pub fn with_enqueue_timeout(mut self, timeout: Timeout) -> Self {
        self.enqueue_timeout = timeout;
        self
    }

    /// Keeps `condition` (the `outbox` health condition): met while the
    /// oldest unsent row is younger than [`super::OUTBOX_STALLED_AFTER`],
    /// with the backlog and the last acknowledged publish as its detail.
    pub fn with_status(mut self, condition: Condition) -> Self {
        self.status = Some(condition);
        self
    }

    /// The backlog is watched by the caller, who reads `last_published`.
    fn with_backlog_watched_by_caller(mut self, last_published: LastPublished) -> Self {
        self.watch_backlog = false;
        self.last_published = last_published;
        self
    }

    /// Reports into `metrics` (by default the relay's metrics go nowhere).
    pub fn with_metrics(mut self, metrics: OutboxMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces the producer with a fresh one from `make_producer` after a fatal error.
    pub fn renewing_producer_with(mut self, make_producer: ProducerFactory) -> Self {
        self.make_producer = Some(make_producer);
        self
    }

    /// Runs until `shutdown` is cancelled; then finishes the batch in flight
    /// (within a grace), publishes what is left in one last bounded drain and
    /// flushes the producer.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        // Writers in this process wake the relay at once (see `outbox::committed`).
        let woken = super::wake_up(self.schema);
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        let mut last_cleanup = tokio::time::Instant::now();
        let backlog = self.watch_backlog.then(|| {
            tokio::spawn(watch_backlog(
                self.pool.clone(),
                self.schema,
                self.config.topics.clone(),
                self.metrics.clone(),
                self.status.clone().map(|condition| BacklogStatus {
                    condition,
                    last_published: self.last_published.clone(),
                }),
                shutdown.clone(),
            ))
        });
        tracing::info!("outbox relay started");
        while !shutdown.is_cancelled() {
            // Listen before draining so that no notification falls in between.
            if listener.is_none() {
                listener = tokio::select! {
                    () = shutdown.cancelled() => break,
                    listener = self.listen() => listener,
                };
            }
            // A batch is never dropped mid-publish when shutdown comes: the
            // records librdkafka already queued would still be delivered by
            // the flush while the rollback left their rows unsent, so the
            // final drain would publish them a second time. The batch in
            // flight finishes (within `IN_FLIGHT_GRACE`), no further one starts.
            let drain = self.drain(Some(&shutdown));
            tokio::pin!(drain);
            let drained = tokio::select! {
                drained = &mut drain => drained,
                () = shutdown.cancelled() => match tokio::time::timeout(IN_FLIGHT_GRACE, drain).await {
                    Ok(drained) => drained,
                    Err(_) => {
                        tracing::warn!(
                            grace_ms = IN_FLIGHT_GRACE.as_millis() as u64,
                            "the outbox batch in flight did not finish within the shutdown grace; \
                             records the broker acknowledged may be published again"
                        );
                        break;
                    }
                },
            };
            match drained {
                Ok(published) => {
                    backoff.reset();
                    if published > 0 {
                        tracing::debug!(published, "outbox drained");
                    }
                    if shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(error) if shutdown.is_cancelled() => {
                    tracing::warn!(%error, "the outbox batch in flight at shutdown failed");
                    break;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox relay failed, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            if last_cleanup.elapsed() >= self.config.sweep_interval {
                last_cleanup = tokio::time::Instant::now();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.delete_old_rows() => {}
                }
            }
            let wait_for_notification = async {
                match listener.as_mut() {
                    Some(active) => {
                        if let Err(error) = active.recv().await {
                            tracing::warn!(%error, "outbox listener lost its connection");
                            listener = None;
                        }
                    }
                    None => {
                        tokio::time::sleep(self.config.initial_backoff.max(Duration::from_secs(1)))
                            .await
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = woken.notified() => {}
                () = wait_for_notification => {}
                () = tokio::time::sleep(self.config.sweep_interval) => {}
            }
        }
        // Rows committed just before shutdown (calls drained by the server) go out now, not at the next start.
        match tokio::time::timeout(Duration::from_secs(5), self.drain(None)).await {
            Ok(Ok(published)) if published > 0 => {
                tracing::info!(published, "outbox drained at shutdown")
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "final outbox drain failed; the rows are published at the next start")
            }
            Err(_) => tracing::warn!(
                "final outbox drain timed out; the rows are published at the next start"
            ),
        }
        if let Err(error) = self
            .producer()
            .flush(Timeout::After(Duration::from_secs(5)))
        {
            tracing::warn!(%error, "failed to flush the outbox producer");
        }
        if let Some(backlog) = backlog {
            let _ = backlog.await;
        }
        tracing::info!("outbox relay stopped");
    }

    /// Opens the listener of the outbox channel, within
    /// [`db::statement_wait_bound`] (a database that does not answer must not
    /// hold the relay here; it sweeps instead and tries again next round).
    async fn listen(&self) -> Option<PgListener> {
        let bound = db::statement_wait_bound(&self.pool);
        let listening = async {
            let mut listener = PgListener::connect_with(&self.pool)
                .await
                .map_err(|error| {
                    (
                        error,
                        "failed to open the outbox listener, sweeping instead",
                    )
                })?;
            listener
                .listen(&notify_channel(self.schema))
                .await
                .map_err(|error| {
                    (
                        error,
                        "failed to listen on the outbox channel, sweeping instead",
                    )
                })?;
            Ok(listener)
        };
        match tokio::time::timeout(bound, listening).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err((error, message))) => {
                tracing::warn!(%error, "{message}");
                None
            }
            Err(_) => {
                tracing::warn!(
                    bound_ms = bound.as_millis() as u64,
                    "the database did not answer the outbox listener in time, sweeping instead"
                );
                None
            }
        }
    }

    /// Publishes every unsent row, batch by batch; returns how many were
    /// published. Once `shutdown` is cancelled, stops after the batch in
    /// flight (the final drain takes the rest).
    async fn drain(&self, shutdown: Option<&CancellationToken>) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            if shutdown.is_some_and(CancellationToken::is_cancelled) {
                return Ok(total);
            }
            let (published, claimed) =
                tokio::time::timeout(self.config.batch_timeout, self.publish_batch())
                    .await
                    .map_err(|_| RelayError::TimedOut(self.config.batch_timeout))??;
            total += published;
            if claimed < self.config.batch_size as usize {
                return Ok(total);
            }
        }
    }

    /// Claims one batch, publishes it, marks what the broker acknowledged.
    async fn publish_batch(&self) -> Result<(usize, usize), RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
            "SELECT id, topic, message_key, payload, headers FROM {}.outbox \
             WHERE sent_at IS NULL AND parked_at IS NULL \
             AND (cardinality($2::text[]) = 0 OR topic = ANY($2)) \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            self.schema.name
        ))
        .bind(self.config.batch_size)
        .bind(&self.config.topics)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok((0, 0));
        }
        let deliveries = rows.iter().map(|row| {
            // A PRODUCER span, child of the span that stored the row; the
            // consumer continues from this span's context.
            let span = tracing::info_span!(
                "outbox.publish",
                otel.name = format!("{} publish", row.topic),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.operation.type = "send",
                messaging.destination.name = row.topic.as_str(),
                messaging.kafka.message.key = row.message_key.as_str(),
                messaging.kafka.destination.partition = tracing::field::Empty,
                messaging.kafka.message.offset = tracing::field::Empty,
                request_id = row.headers.0.get(foodorder_contract::events::HEADER_REQUEST_ID).map(String::as_str),
                outbox_id = row.id,
            );
            telemetry::continue_trace(&span, &row.headers.0, false);
            let mut headers = row.headers.0.clone();
            headers.extend(telemetry::inject_span(&span));
            let producer = self.producer();
            let enqueue_timeout = self.enqueue_timeout;
            let record_span = span.clone();
            let metrics = &self.metrics;
            let last_published = &self.last_published;
            async move {
                let record = FutureRecord::to(&row.topic)
                    .key(row.message_key.as_bytes())
                    .payload(&row.payload)
                    .headers(kafka::to_kafka_headers(&headers));
                let started = std::time::Instant::now();
                let result = producer.send(record, enqueue_timeout).await;
                if let Ok(delivery) = &result {
                    record_span.record("messaging.kafka.destination.partition", delivery.partition);
                    record_span.record("messaging.kafka.message.offset", delivery.offset);
                    let topic = TopicLabel {
                        topic: row.topic.clone(),
                    };
                    metrics
                        .publish_duration
                        .get_or_create(&topic)
                        .observe(started.elapsed().as_secs_f64());
                    metrics.published.get_or_create(&topic).inc();
                    last_published.mark();
                }
                result
            }
            .instrument(span)
        });
        let results = join_all(deliveries).await;
        let mut sent_ids = Vec::with_capacity(rows.len());
        let mut parked = Vec::new();
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(delivery) => {
                    tracing::debug!(
                        outbox_id = row.id,
                        topic = row.topic,
                        key = row.message_key,
                        partition = delivery.partition,
                        offset = delivery.offset,
                        "published outbox record"
                    );
                    sent_ids.push(row.id);
                }
                Err((error, _message)) if is_permanent(&error) => {
                    tracing::error!(
                        outbox_id = row.id,
                        topic = row.topic,
                        key = row.message_key,
                        %error,
                        "the broker refuses this outbox record for good; parking it"
                    );
                    parked.push((row.id, error.to_string()));
                }
                Err((error, _message)) => {
                    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
                        self.renew_producer();
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        for (id, reason) in &parked {
            sqlx::query(&format!(
                "UPDATE {}.outbox SET parked_at = now(), park_reason = $2 WHERE id = $1",
                self.schema.name
            ))
            .bind(id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        if !sent_ids.is_empty() {
            sqlx::query(&format!(
                "UPDATE {}.outbox SET sent_at = now() WHERE id = ANY($1)",
                self.schema.name
            ))
            .bind(&sent_ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        match first_error {
            Some(error) => Err(RelayError::Publish {
                failed: rows.len() - sent_ids.len(),
                claimed: rows.len(),
                first_error: error,
            }),
            None => Ok((sent_ids.len() + parked.len(), rows.len())),
        }
    }

    /// The producer to publish with now.
    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces a producer that hit a fatal error (an idempotent producer that
    /// lost its sequence state refuses every record afterwards). Records it
    /// may have written are published again; consumers deduplicate.
    fn renew_producer(&self) {
        let Some(make_producer) = &self.make_producer else {
            return;
        };
        match make_producer() {
            Ok(producer) => {
                tracing::warn!("the outbox producer hit a fatal error; replaced it with a new one");
                *self
                    .producer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = producer;
            }
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "failed to replace the outbox producer"
            ),
        }
    }

    /// Deletes sent rows past the retention, in chunks that each stay well
    /// within the statement timeout (after a long outage there can be
    /// millions); each chunk is also given up on the client's side after
    /// [`db::statement_wait_bound`].
    async fn delete_old_rows(&self) {
        const CHUNK: i64 = 10_000;
        let retention_seconds = self.config.retention.as_secs_f64();
        let bound = db::statement_wait_bound(&self.pool);
        let delete = format!(
            "DELETE FROM {schema}.outbox WHERE id IN (SELECT id FROM {schema}.outbox \
             WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1) LIMIT $2)",
            schema = self.schema.name
        );
        let mut deleted = 0;
        loop {
            let chunk = sqlx::query(&delete)
                .bind(retention_seconds)
                .bind(CHUNK)
                .execute(&self.pool);
            let Ok(result) = tokio::time::timeout(bound, chunk).await else {
                tracing::warn!(
                    bound_ms = bound.as_millis() as u64,
                    "the database did not answer the deletion of old outbox rows in time"
                );
                break;
            };
            match result {
                Ok(done) => {
                    deleted += done.rows_affected();
                    if done.rows_affected() < CHUNK as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "failed to delete old outbox rows");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "deleted old outbox rows");
        }
    }
}

/// Creates the topics it publishes to (retrying until the broker answers), then runs
/// the relay until `shutdown`. This is what a service spawns. The backlog
/// (its gauges and `status`, see [`OutboxRelay::with_status`]) is watched
/// from the start, so a broker that is down when the service starts shows too.
#[allow(clippy::too_many_arguments)]
pub async fn run_relay_with_topics(
    pool: PgPool,
    schema: &'static Schema,
    kafka_config: crate::config::KafkaConfig,
    relay_config: RelayConfig,
    client_id: &str,
    metrics: OutboxMetrics,
    status: Condition,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer = kafka::idempotent_producer(&kafka_config, client_id)?;
    let last_published = LastPublished::default();
    let backlog = tokio::spawn(watch_backlog(
        pool.clone(),
        schema,
        relay_config.topics.clone(),
        metrics.clone(),
        Some(BacklogStatus {
            condition: status,
            last_published: last_published.clone(),
        }),
        shutdown.clone(),
    ));
    tracing::info!(topics = ?relay_config.topics, "outbox relay publishing");
    if !kafka::ensure_topics_with_retry(
        &kafka_config,
        &relay_config
            .topics
            .iter()
            .map(|topic| kafka::TopicSpec::event(&kafka_config, topic))
            .collect::<Vec<_>>(),
        &shutdown,
    )
    .await
    {
        let _ = backlog.await;
        return Ok(());
    }
    let client_id = client_id.to_owned();
    let kafka_config_for_queue = kafka_config.clone();
    OutboxRelay::new(pool, schema, producer, relay_config)
        .renewing_producer_with(Box::new(move || {
            kafka::idempotent_producer(&kafka_config, &client_id)
        }))
        .with_metrics(metrics)
        .with_enqueue_timeout(kafka::enqueue_timeout(&kafka_config_for_queue))
        .with_backlog_watched_by_caller(last_published)
        .run(shutdown)
        .await;
    let _ = backlog.await;
    Ok(())
}

/// Errors that repeating the same record cannot fix.
fn is_permanent(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}
