//! Kafka client builders (idempotent producer, manual-commit consumer, admin),
//! idempotent topic creation, and record-header helpers.
//!
//! Every call to the broker is bounded:
//!
//! * every request a client sends times out after [`REQUEST_TIMEOUT`]
//!   (`socket.timeout.ms`), and a connection attempt after
//!   [`REQUEST_TIMEOUT`] too (`socket.connection.setup.timeout.ms`); TCP
//!   keepalive is on, so a connection whose peer vanished is noticed;
//! * a produced record is acknowledged or failed within
//!   `KAFKA_MESSAGE_TIMEOUT_MS` (`message.timeout.ms`, each broker's ack
//!   within `request.timeout.ms`, no longer), and waiting for room in the
//!   producer's local queue is bounded by it too ([`enqueue_timeout`]);
//! * admin calls (topic creation, configs) have [`REQUEST_TIMEOUT`] as their
//!   request and operation timeouts;
//! * flushing a producer at shutdown waits at most 5 s;
//! * an offset commit that waits for an unknown group coordinator fails after
//!   `KAFKA_SESSION_TIMEOUT_MS` (librdkafka's own bound), its request after
//!   [`REQUEST_TIMEOUT`]; the asynchronous commits of the loop never wait.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;

use crate::backoff::Backoff;
use crate::config::KafkaConfig;

/// The longest any single request to a broker (a produce, a fetch, a
/// commit, a metadata or admin request) or a connection attempt may take
/// (librdkafka's defaults are 60 s and 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Base client settings every client shares.
pub fn client_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    let request_timeout = REQUEST_TIMEOUT.as_millis().to_string();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", client_id)
        // Never let a produce or a fetch create a topic: topics are created
        // explicitly, with the configured partition counts.
        .set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        // Deadlines: no request and no connection attempt waits longer; a
        // connection whose peer went away without a word is found by TCP.
        .set("socket.timeout.ms", &request_timeout)
        .set("socket.connection.setup.timeout.ms", &request_timeout)
        .set("socket.keepalive.enable", "true")
        // Small requests go out at once: with Nagle's algorithm a request
        // written while another is unacknowledged waits for that ACK.
        .set("socket.nagle.disable", "true")
        .set("log_level", "4");
    if let Some(sasl) = &config.sasl {
        client
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", &sasl.mechanism)
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    client
}

/// How long a produce may wait for room in the producer's local queue before
/// it fails (rdkafka's `Timeout::Never` would wait for good while the broker
/// is unreachable and the queue full).
pub fn enqueue_timeout(config: &KafkaConfig) -> rdkafka::util::Timeout {
    rdkafka::util::Timeout::After(config.message_timeout)
}

/// An idempotent producer that waits for all in-sync replicas (`acks=all`).
pub fn idempotent_producer(
    config: &KafkaConfig,
    client_id: &str,
) -> anyhow::Result<FutureProducer> {
    producer_config(config, client_id)
        .create()
        .context("failed to create the kafka producer")
}

/// The producer of dead-letter copies: idempotent like the others, and able to
/// send a copy of the largest record an event topic accepts.
pub fn dead_letter_producer(
    config: &KafkaConfig,
    client_id: &str,
) -> anyhow::Result<FutureProducer> {
    producer_config(config, client_id)
        .set(
            "message.max.bytes",
            (DLQ_MAX_MESSAGE_BYTES + 4096).to_string(),
        )
        .create()
        .context("failed to create the dead-letter producer")
}

fn producer_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut producer = client_config(config, client_id);
    producer
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        )
        // Each broker's acknowledgement within the record's own deadline.
        .set(
            "request.timeout.ms",
            config
                .message_timeout
                .min(Duration::from_secs(30))
                .as_millis()
                .to_string(),
        );
    producer
}

/// The largest record batch the event topics accept: Kafka's own default
/// (`message.max.bytes`), set on the topics explicitly so that the dead-letter
/// topics can be sized from it.
pub const EVENT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The largest record the dead-letter topics accept: any record an event topic
/// accepted, plus room for the diagnostic headers added to its copy.
pub const DLQ_MAX_MESSAGE_BYTES: usize = EVENT_MAX_MESSAGE_BYTES + 65_536;

/// A topic to create: name, partition count and largest record.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// The topic's `max.message.bytes`.
    pub max_message_bytes: usize,
    /// A dead-letter topic (its limit is raised on an existing topic).
    pub dead_letter: bool,
}

impl TopicSpec {
    /// An event topic `name` (full name, prefix included) with the configured partition count.
    pub fn event(config: &KafkaConfig, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            partitions: config.event_partitions,
            max_message_bytes: EVENT_MAX_MESSAGE_BYTES,
            dead_letter: false,
        }
    }

    /// A dead-letter topic `name` (full name, prefix included), sized for the diagnostic headers.
    pub fn dead_letter(config: &KafkaConfig, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            partitions: config.dlq_partitions,
            max_message_bytes: DLQ_MAX_MESSAGE_BYTES,
            dead_letter: true,
        }
    }
}

/// Creates the topics that do not exist yet, with the configured replication
/// factor and, when set, `min.insync.replicas`. An existing topic is left alone,
/// except that a dead-letter topic whose `max.message.bytes` is below the
/// spec's is raised (one made by an older version would refuse the largest
/// dead-letter copies); that step is best-effort and never fails the start.
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config, "foodorder-admin")
        .create()
        .context("failed to create the kafka admin client")?;
    let max_message_bytes: Vec<String> = specs
        .iter()
        .map(|spec| spec.max_message_bytes.to_string())
        .collect();
    let min_insync_replicas = config.min_insync_replicas.map(|count| count.to_string());
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&max_message_bytes)
        .map(|(spec, max_message_bytes)| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
            .set("max.message.bytes", max_message_bytes);
            match &min_insync_replicas {
                Some(count) => topic.set("min.insync.replicas", count),
                None => topic,
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .context("failed to create kafka topics")?;
    let mut existing = Vec::new();
    let mut not_ours = Vec::new();
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created kafka topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "kafka topic already exists");
                existing.extend(
                    specs
                        .iter()
                        .filter(|spec| spec.name == topic && spec.dead_letter),
                );
            }
            // With ACLs, topics are the admin's to create: the broker refuses
            // the request (even for a topic that exists) before it looks.
            Err((topic, RDKafkaErrorCode::TopicAuthorizationFailed)) => not_ours.push(topic),
            Err((topic, code)) => anyhow::bail!("failed to create kafka topic {topic}: {code}"),
        }
    }
    if !not_ours.is_empty() {
        let missing = missing_topics(config, not_ours.clone()).await?;
        anyhow::ensure!(
            missing.is_empty(),
            "kafka topics {} do not exist and this principal may not create them: create them as the admin principal",
            missing.join(", ")
        );
        tracing::debug!(topics = ?not_ours, "kafka topics exist (made by the admin principal)");
    }
    for spec in existing {
        if let Err(error) = widen_max_message_bytes(&admin, spec, &options).await {
            tracing::warn!(
                topic = spec.name,
                error = format!("{error:#}"),
                wanted = spec.max_message_bytes,
                "could not check or raise the dead-letter topic's max.message.bytes; the largest records may not fit"
            );
        }
    }
    Ok(())
}

/// Which of `topics` the broker's metadata does not know (to this
/// principal: one it may not describe looks missing too). The metadata
/// request blocks (at most [`REQUEST_TIMEOUT`]), so it runs off the runtime.
async fn missing_topics(config: &KafkaConfig, topics: Vec<String>) -> anyhow::Result<Vec<String>> {
    let client = client_config(config, "foodorder-admin");
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = client
            .create()
            .context("failed to create the kafka metadata client")?;
        let metadata =
            rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, REQUEST_TIMEOUT)
                .context("failed to read the kafka topics' metadata")?;
        let known: std::collections::HashSet<&str> = metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none() && !topic.partitions().is_empty())
            .map(|topic| topic.name())
            .collect();
        Ok(topics
            .into_iter()
            .filter(|topic| !known.contains(topic.as_str()))
            .collect())
    })
    .await
    .context("the kafka metadata lookup panicked")?
}

/// Raises an existing topic's `max.message.bytes` to the spec's when it is
/// lower. The broker's AlterConfigs replaces a topic's whole set of
/// overrides, so the topic's other overrides are sent along unchanged; a
/// topic whose overrides cannot all be read back (a sensitive value, or a
/// broker that does not say where a value comes from) is left alone.
async fn widen_max_message_bytes(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
    options: &AdminOptions,
) -> anyhow::Result<()> {
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&spec.name)], options)
        .await
        .context("failed to describe a kafka topic")?;
    let Some(Ok(resource)) = described.into_iter().next() else {
        anyhow::bail!("failed to describe kafka topic {}", spec.name);
    };
    let current = resource
        .get("max.message.bytes")
        .and_then(|entry| entry.value.as_deref()?.parse::<usize>().ok());
    if current.is_some_and(|bytes| bytes >= spec.max_message_bytes) {
        return Ok(());
    }
    let overrides: Vec<&ConfigEntry> = resource
        .entries
        .iter()
        .filter(|entry| {
            entry.source == ConfigSource::DynamicTopic && entry.name != "max.message.bytes"
        })
        .collect();
    if overrides
        .iter()
        .any(|entry| entry.is_sensitive || entry.value.is_none())
    {
        tracing::warn!(
            topic = spec.name,
            current,
            wanted = spec.max_message_bytes,
            "kafka topic accepts smaller records than this platform may write, and has a sensitive setting that prevents raising it; raise max.message.bytes by hand"
        );
        return Ok(());
    }
    let wanted = spec.max_message_bytes.to_string();
    let mut alter =
        AlterConfig::new(ResourceSpecifier::Topic(&spec.name)).set("max.message.bytes", &wanted);
    for entry in &overrides {
        alter = alter.set(&entry.name, entry.value.as_deref().unwrap_or_default());
    }
    let altered = admin
        .alter_configs(&[alter], options)
        .await
        .context("failed to alter a kafka topic's configuration")?;
    match altered.into_iter().next() {
        Some(Ok(_)) => {
            tracing::info!(
                topic = spec.name,
                from = current,
                to = spec.max_message_bytes,
                "raised the kafka topic's max.message.bytes"
            );
            Ok(())
        }
        Some(Err((_, code))) => anyhow::bail!(
            "failed to raise max.message.bytes of kafka topic {}: {code}",
            spec.name
        ),
        None => anyhow::bail!("no answer to altering kafka topic {}", spec.name),
    }
}

/// Keeps calling [`ensure_topics`] with capped exponential back-off until it
/// succeeds or `shutdown` is cancelled (then returns false).
pub async fn ensure_topics_with_retry(
    config: &KafkaConfig,
    specs: &[TopicSpec],
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let delay = match ensure_topics(config, specs).await {
            Ok(()) => return true,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "kafka topics not ready"
                );
                delay
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Builds Kafka headers from a name → value map.
pub fn to_kafka_headers(headers: &BTreeMap<String, String>) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |kafka_headers, (key, value)| {
            kafka_headers.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_bounds_its_requests_and_producers_their_records() {
        let config = KafkaConfig::local("127.0.0.1:1", "t-");
        let client = client_config(&config, "test");
        assert_eq!(client.get("socket.timeout.ms"), Some("10000"));
        assert_eq!(
            client.get("socket.connection.setup.timeout.ms"),
            Some("10000")
        );
        assert_eq!(client.get("socket.keepalive.enable"), Some("true"));
        let producer = producer_config(&config, "test");
        assert_eq!(producer.get("message.timeout.ms"), Some("10000"));
        assert_eq!(producer.get("request.timeout.ms"), Some("10000"));
        assert!(matches!(
            enqueue_timeout(&config),
            rdkafka::util::Timeout::After(timeout) if timeout == config.message_timeout
        ));
    }
}
