//! Kafka client builders (idempotent producer, manual-commit consumer, admin),
//! idempotent topic creation, and record-header helpers.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

/// Base client settings every client shares.
pub fn client_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", client_id)
        // Never let a produce or a fetch create a topic: topics are created
        // explicitly, with the configured partition counts.
        .set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("log_level", "4");
    client
}

/// An idempotent producer that waits for all in-sync replicas (`acks=all`).
pub fn idempotent_producer(
    config: &KafkaConfig,
    client_id: &str,
) -> anyhow::Result<FutureProducer> {
    client_config(config, client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        )
        .create()
        .context("failed to create the kafka producer")
}

/// A topic to create: name and partition count.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
}

/// Every topic of the platform with its configured partition count.
pub fn platform_topics(config: &KafkaConfig) -> Vec<TopicSpec> {
    let topics = &config.topics;
    vec![
        TopicSpec {
            name: topics.order_placed.clone(),
            partitions: config.event_partitions,
        },
        TopicSpec {
            name: topics.payment_completed.clone(),
            partitions: config.event_partitions,
        },
        TopicSpec {
            name: topics.payment_dlq.clone(),
            partitions: config.dlq_partitions,
        },
        TopicSpec {
            name: topics.notification_dlq.clone(),
            partitions: config.dlq_partitions,
        },
    ]
}

/// Creates the topics that do not exist yet; existing topics are left alone.
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config, "foodorder-admin")
        .create()
        .context("failed to create the kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .context("failed to create kafka topics")?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created kafka topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "kafka topic already exists");
            }
            Err((topic, code)) => anyhow::bail!("failed to create kafka topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Keeps calling [`ensure_topics`] with capped exponential back-off until it
/// succeeds or `shutdown` is cancelled (then returns false).
pub async fn ensure_topics_with_retry(
    config: &KafkaConfig,
    specs: &[TopicSpec],
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match ensure_topics(config, specs).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "kafka topics not ready"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
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
