//! The transactional outbox: [`enqueue`] stores a Kafka record in the same
//! transaction as the business change, and [`OutboxRelay`] publishes stored
//! records through an idempotent producer and marks them sent only after the
//! broker acknowledged them.
//!
//! Each service has its own outbox table, `<schema>.outbox`, in the schema it
//! owns (see [`crate::db::Schema`]).
//!
//! Promptness without polling: the writer calls [`committed`] once its
//! transaction committed, which wakes the relay of the same process at once (a
//! writer and its outbox's relay run in one service). The relay also
//! `LISTEN`s on `<schema>_outbox` for rows written by anything else (`NOTIFY
//! <schema>_outbox` from psql or a tool), and a sweep every few seconds
//! catches rows nobody woke it for (a crash between commit and wake-up, an
//! instance whose relay is stuck: another instance's sweep publishes them).
//! Writers do not `NOTIFY`: PostgreSQL serialises every committing
//! transaction that notifies on one lock held through its WAL flush, so at a
//! few hundred notifying commits a second one slow flush stalled them all
//! (measured: commits waiting 2 s and cut by the lock timeout).
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several replicas can run
//! relays on one table without publishing a row concurrently.

mod metrics;
mod relay;

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{Postgres, Transaction};

use crate::db::Schema;

/// The channel on which `enqueue` notifies the relay of `schema`'s outbox.
pub fn notify_channel(schema: &Schema) -> String {
    format!("{}_outbox", schema.name)
}

/// A record to publish.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    /// Destination topic.
    pub topic: String,
    /// Record key (the order id).
    pub key: String,
    /// Record value (an encoded protobuf event).
    pub payload: Vec<u8>,
    /// Record headers.
    pub headers: BTreeMap<String, String>,
}

/// Stores `message` in the outbox inside the caller's transaction and notifies
/// the relay (the notification is delivered only if the transaction commits).
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    schema: &Schema,
    message: &OutboxMessage,
) -> Result<(), sqlx::Error> {
    enqueue_all(tx, schema, std::slice::from_ref(message)).await
}

/// Stores `messages` in the outbox inside the caller's transaction, in one
/// statement and in their order (ids ascending), and notifies the relay once.
pub async fn enqueue_all(
    tx: &mut Transaction<'_, Postgres>,
    schema: &Schema,
    messages: &[OutboxMessage],
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = messages
        .iter()
        .map(|message| message.topic.as_str())
        .collect();
    let keys: Vec<&str> = messages
        .iter()
        .map(|message| message.key.as_str())
        .collect();
    let payloads: Vec<&[u8]> = messages
        .iter()
        .map(|message| message.payload.as_slice())
        .collect();
    let headers: Vec<serde_json::Value> = messages
        .iter()
        .map(|message| serde_json::to_value(&message.headers).unwrap_or_default())
        .collect();
    sqlx::query(&format!(
        "INSERT INTO {}.outbox (topic, message_key, payload, headers) \
         SELECT topic, message_key, payload, headers \
         FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::jsonb[]) WITH ORDINALITY \
           AS batch (topic, message_key, payload, headers, position) ORDER BY position",
        schema.name
    ))
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The in-process wake-up of each schema's relay.
fn wake_up(schema: &Schema) -> std::sync::Arc<tokio::sync::Notify> {
    static WAKE_UPS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Notify>>>,
    > = std::sync::OnceLock::new();
    WAKE_UPS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(schema.name.to_owned())
        .or_default()
        .clone()
}

/// Tells the relay of `schema`'s outbox in this process that rows were
/// committed: it drains at once (a wake-up while it drains is kept for its
/// next round). Call it after the transaction that enqueued them committed.
pub fn committed(schema: &Schema) {
    wake_up(schema).notify_one();
}

/// How the relay behaves.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction (`OUTBOX_BATCH_SIZE`, default 256).
    pub batch_size: i64,
    /// Interval of the safety sweep (`OUTBOX_SWEEP_INTERVAL_MS`, default 5000).
    pub sweep_interval: Duration,
    /// First back-off after a failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest back-off between retries while the broker or database is down.
    pub max_backoff: Duration,
    /// Sent rows older than this are deleted by the sweep (`OUTBOX_RETENTION_HOURS`, default 24).
    pub retention: Duration,
    /// Topics this relay publishes; rows for other topics are left to the
    /// service that owns them (empty: every topic).
    pub topics: Vec<String>,
    /// The longest one batch (claim, publish, mark) may take: a batch stuck
    /// on a database or broker that stopped answering is abandoned and
    /// retried. Records the broker acknowledged but the relay did not mark
    /// are published again; consumers deduplicate.
    pub batch_timeout: Duration,
}

/// How long one relay batch may take by default: the broker's acks (at most
/// `KAFKA_MESSAGE_TIMEOUT_MS` each, waiting for queue room included) and a few
/// statements, with room to spare.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(60);

impl RelayConfig {
    /// Reads the relay settings from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            batch_size: crate::config::env_count("OUTBOX_BATCH_SIZE", 256)?,
            sweep_interval: Duration::from_millis(crate::config::env_count(
                "OUTBOX_SWEEP_INTERVAL_MS",
                5_000,
            )?),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            retention: Duration::from_secs(
                3600 * crate::config::env_or::<u64>("OUTBOX_RETENTION_HOURS", 24)?,
            ),
            topics: Vec::new(),
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
        })
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            sweep_interval: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
            topics: Vec::new(),
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
        }
    }
}

pub use metrics::{OUTBOX_STALLED_AFTER, OutboxMetrics};
pub use relay::{OutboxRelay, run_relay_with_topics};
