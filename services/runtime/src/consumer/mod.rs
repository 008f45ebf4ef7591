//! The effectively-once consumer framework shared by the consumer services:
//! the handler API here, and one module per concern —
//! [`progress`] (offsets and commits), [`key_order`] (same-key ordering),
//! [`dead_letter`] (poison records), [`rebalance`] (assignment, lag),
//! [`health`] (the readiness condition: assigned, commits succeed, the
//! coordinator answers), [`metrics`] and [`run_loop`] (the loop itself).
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
//! * Each try of a handler is bounded (`handler_timeout`): a try that does
//!   not finish in time (a database connection whose peer vanished silently
//!   answers nothing, and no server-side timeout reaches it) is abandoned, as
//!   at shutdown, and retried; handlers are idempotent, so that is harmless.
//! * On a rebalance, finished work of revoked partitions is committed and
//!   in-flight work is abandoned: its completion is not committed, the new
//!   owner re-delivers it, and the handler's deduplication makes that harmless.
//! * On shutdown: stop taking messages, let in-flight handlers finish, commit
//!   synchronously, flush the producer.

mod dead_letter;
mod health;
mod key_order;
mod metrics;
mod progress;
mod rebalance;
mod run_loop;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};

use crate::config::{DatabaseConfig, KafkaConfig, env_count, env_or, env_seconds};
use crate::health::ProbeSettings;
use crate::record_headers::{self, RawHeader};

pub use dead_letter::{
    DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_FAILED_AT, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
};
pub use health::COMMIT_FAILURE_GRACE;
pub use metrics::ConsumerMetrics;
pub use run_loop::run;

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
    pub(crate) original_headers: OriginalHeaders,
}

/// A byte-exact copy of a record's header list (rdkafka's type has no `Debug`).
#[derive(Clone, Default)]
pub(crate) struct OriginalHeaders(pub(crate) Option<OwnedHeaders>);

impl std::fmt::Debug for OriginalHeaders {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OriginalHeaders")
    }
}

impl ReceivedMessage {
    pub(crate) fn from_borrowed(message: &BorrowedMessage<'_>) -> Self {
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

    /// Work the handler needs done now and then, apart from any record (for
    /// example settling what a poison record left waiting); the consumer
    /// service runs it every [`MessageHandler::HOUSEKEEPING_INTERVAL`] while it
    /// consumes. None by default.
    fn housekeeping(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// How often [`MessageHandler::housekeeping`] runs.
    const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);
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
    /// Whether the service is ready only while this consumer is (see
    /// `consumer::health`: assigned, its commits succeed, its coordinator
    /// answers); default true. Otherwise its condition is only shown on
    /// `/healthz` (order-api's payment-outcome consumer does not gate PlaceOrder).
    pub gates_readiness: bool,
    /// The longest one try of the handler may take before it is abandoned
    /// and retried (default [`DEFAULT_HANDLER_TIMEOUT`]).
    pub handler_timeout: Duration,
}

/// How long one try of a handler may take by default: far beyond any
/// handler's normal work (the database's own deadlines are seconds), so it
/// only ends tries stuck on a dependency that stopped answering.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

impl ConsumerSettings {
    /// Consuming `topic` in `group_id`, dead-lettering to `dlq_topic`, with
    /// up to `max_in_flight` records at once and commits every 200 ms.
    pub fn new(
        group_id: &str,
        topic: &str,
        dlq_topic: &str,
        max_in_flight: usize,
        shutdown_grace: Duration,
    ) -> Self {
        Self {
            group_id: group_id.to_owned(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            max_in_flight,
            commit_interval: Duration::from_millis(200),
            shutdown_grace,
            gates_readiness: true,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
        }
    }
}

/// What every consumer service is configured with, read from variables named
/// with its prefix (`PAYMENT_`, `NOTIFICATION_`).
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// PostgreSQL settings.
    pub database: DatabaseConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// `<PREFIX>_MAX_IN_FLIGHT`: records handled at once.
    pub max_in_flight: usize,
    /// `<PREFIX>_CONSUMER_GROUP`: the consumer group.
    pub group_id: String,
    /// `<PREFIX>_HEALTH_ADDR`: `/healthz`, `/readyz` and `/metrics`.
    pub health_addr: SocketAddr,
    /// `SHUTDOWN_GRACE_SECONDS` (default 10): in-flight records may finish within this.
    pub shutdown_grace: Duration,
    /// `<PREFIX>_HANDLER_TIMEOUT_MS` (default 60000): one try of the handler
    /// that takes longer is abandoned and retried (see [`ConsumerSettings::handler_timeout`]).
    pub handler_timeout: Duration,
    /// `READINESS_PROBE_INTERVAL_MS`, `READINESS_PROBE_TIMEOUT_MS`: the readiness probes.
    pub readiness_probes: ProbeSettings,
}

impl ConsumerConfig {
    /// Reads the settings named with `prefix`, with these defaults.
    pub fn from_env(
        prefix: &str,
        default_group: &str,
        default_max_in_flight: usize,
        default_port: u16,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            database: DatabaseConfig::from_env()?,
            kafka: KafkaConfig::from_env()?,
            max_in_flight: env_count(&format!("{prefix}_MAX_IN_FLIGHT"), default_max_in_flight)?,
            group_id: env_or(
                &format!("{prefix}_CONSUMER_GROUP"),
                default_group.to_owned(),
            )?,
            health_addr: env_or(
                &format!("{prefix}_HEALTH_ADDR"),
                SocketAddr::from(([0, 0, 0, 0], default_port)),
            )?,
            shutdown_grace: env_seconds("SHUTDOWN_GRACE_SECONDS", 10.0)?,
            handler_timeout: Duration::from_millis(env_count(
                &format!("{prefix}_HANDLER_TIMEOUT_MS"),
                DEFAULT_HANDLER_TIMEOUT.as_millis() as u64,
            )?),
            readiness_probes: ProbeSettings::from_env()?,
        })
    }

    /// Settings for a test: the test broker with topics of its own, a fresh
    /// group named after `service`, the endpoint on an ephemeral port.
    pub fn for_tests(service: &str) -> Self {
        Self {
            database: DatabaseConfig::for_tests(),
            kafka: KafkaConfig::for_tests(),
            max_in_flight: 64,
            group_id: format!("{service}-test-{}", uuid::Uuid::new_v4()),
            health_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_grace: Duration::from_secs(5),
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            readiness_probes: ProbeSettings::default(),
        }
    }

    /// The consumer loop's settings for topic `topic` and dead-letter topic
    /// `dead_letter_topic` (names without the prefix, which is added here).
    pub fn settings(&self, topic: &str, dead_letter_topic: &str) -> ConsumerSettings {
        ConsumerSettings {
            handler_timeout: self.handler_timeout,
            ..ConsumerSettings::new(
                &self.group_id,
                &self.kafka.topic(topic),
                &self.kafka.topic(dead_letter_topic),
                self.max_in_flight,
                self.shutdown_grace,
            )
        }
    }
}
