//! The CLI's Kafka side: where the broker is and how to log in (as the
//! services do: `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SASL_*`), topic names with
//! the deployment's prefix, and reading a topic whole.

use std::time::{Duration, Instant};

use anyhow::Context;
use foodorder_runtime::config::{KafkaConfig, SaslLogin};
use foodorder_runtime::record_headers::{self, RawHeader};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long a metadata or watermark question may take before the broker
/// counts as unreachable.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Where the broker is and the deployment's topic prefix.
#[derive(clap::Args, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// The deployment's topic prefix (`KAFKA_TOPIC_PREFIX`), put in front of a
    /// topic named without it.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    pub prefix: String,
}

impl KafkaArgs {
    /// Client settings: the services' own, logged in with `KAFKA_SASL_*` when set.
    pub fn config(&self) -> anyhow::Result<KafkaConfig> {
        let mut config = KafkaConfig::local(&self.bootstrap, &self.prefix);
        config.sasl = SaslLogin::from_env()?;
        Ok(config)
    }

    /// `name` with the prefix, unless it already has it.
    pub fn topic(&self, name: &str) -> String {
        if name.starts_with(&self.prefix) {
            name.to_owned()
        } else {
            format!("{}{name}", self.prefix)
        }
    }

    /// `topic` without the prefix.
    pub fn unprefixed<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(&self.prefix).unwrap_or(topic)
    }
}

/// One record read back, byte for byte.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The broker's timestamp (ms since the epoch), if any.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<RawHeader>,
}

impl Record {
    /// The value of header `name` as text: the last one of that name. A
    /// consumer appends its diagnostics after the original record's headers,
    /// so a `dlq-*` header the original record carried (forged by its
    /// producer) never wins over the consumer's own.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key.as_slice() == name.as_bytes())
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// A reader of `topic` with no group of its own to commit to.
pub fn reader(config: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    foodorder_runtime::kafka::client_config(config, "foodorder-cli")
        .set(
            "group.id",
            format!("foodorder-cli-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("log_level", "0")
        .create()
        .context("cannot create a Kafka client")
}

/// The partitions of `topic`; an error naming the broker when it does not
/// answer, and saying so when the topic does not exist.
pub fn partitions(
    consumer: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    existing_partitions(consumer, bootstrap, topic)?
        .with_context(|| format!("topic {topic} does not exist"))
}

/// The partitions of `topic`, or None when it does not exist; an error
/// naming the broker when it does not answer or refuses to describe it.
pub fn existing_partitions(
    consumer: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Option<Vec<i32>>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), ANSWER_WITHIN)
        .map_err(|error| anyhow::anyhow!("{}", unreachable(bootstrap, &error)))?;
    let Some(found) = metadata.topics().first() else {
        return Ok(None);
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
        Some(code) => anyhow::bail!("the broker refused to describe {topic}: {code}"),
    }
    let partitions: Vec<i32> = found
        .partitions()
        .iter()
        .map(|partition| partition.id())
        .collect();
    Ok((!partitions.is_empty()).then_some(partitions))
}

impl Record {
    /// A record as a consumer received it, byte for byte.
    pub fn of(message: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: record_headers::read(message),
        }
    }
}

/// What to say when the broker does not answer (or refuses the login).
pub fn unreachable(bootstrap: &str, error: &rdkafka::error::KafkaError) -> String {
    format!(
        "no answer from Kafka at {bootstrap} within {} s ({error}); is the broker up, and are KAFKA_BOOTSTRAP_SERVERS and KAFKA_SASL_* right?",
        ANSWER_WITHIN.as_secs()
    )
}

/// Every record of `topic` (every partition, from the earliest offset kept
/// to the end as it is now), in partition and offset order.
pub fn read_all(config: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<Record>> {
    let consumer = reader(config)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: Vec<(i32, i64)> = Vec::new();
    let mut total = 0u64;
    for partition in partitions(&consumer, &config.bootstrap_servers, topic)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, ANSWER_WITHIN)
            .map_err(|error| {
                anyhow::anyhow!("{}", unreachable(&config.bootstrap_servers, &error))
            })?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            remaining.push((partition, high));
            total += u64::try_from(high - low).unwrap_or(0);
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let bar = crate::progress(total, &format!("reading {topic}"));
    // Records past the high watermark taken above (written meanwhile) are left for the next run.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} took more than 120 s ({} of {total} records read)",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            // Idle: a partition whose position reached its end is done (the
            // last offsets may be transaction markers, which are never delivered).
            let positions = consumer.position()?;
            remaining.retain(|(partition, high)| {
                !matches!(
                    positions.find_partition(topic, *partition).map(|p| p.offset()),
                    Some(Offset::Offset(position)) if position >= *high
                )
            });
            continue;
        };
        let message = message.with_context(|| format!("reading {topic} failed"))?;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(index) = remaining.iter().position(|(p, _)| *p == partition) else {
            continue;
        };
        let high = remaining[index].1;
        if offset < high {
            records.push(Record::of(&message));
            bar.inc(1);
        }
        if offset + 1 >= high {
            remaining.remove(index);
        }
    }
    bar.finish_and_clear();
    records.sort_by_key(|record| (record.partition, record.offset));
    Ok(records)
}
