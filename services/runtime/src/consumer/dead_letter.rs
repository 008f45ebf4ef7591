//! Dead-lettering: the original record (key, value and header list, byte for
//! byte) goes to the dead-letter topic with diagnostic headers, retried until
//! the broker acknowledges it; a missing topic is created again.

use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::{ConsumerSettings, ReceivedMessage};
use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::kafka::{self, TopicSpec};

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

/// Where dead-letter copies go, and what is needed to recreate a missing topic.
pub(super) struct DeadLetters {
    pub(super) producer: FutureProducer,
    pub(super) kafka_config: KafkaConfig,
}

/// The longest `dlq-error` header: an error text is diagnostic, not data.
const DLQ_ERROR_MAX_BYTES: usize = 1024;

/// Copies the original record (key, value and header list, byte for byte) to
/// the dead-letter topic with diagnostic headers; retries until acknowledged.
/// The dead-letter topics accept any record an event topic accepted plus the
/// diagnostics (see [`kafka::DLQ_MAX_MESSAGE_BYTES`]), and a topic that has
/// gone missing is created again, so a copy is never refused for good.
pub(super) async fn dead_letter(
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
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
        let delay = backoff.next_delay();
        let enqueue_timeout = kafka::enqueue_timeout(&dead_letters.kafka_config);
        match dead_letters.producer.send(record, enqueue_timeout).await {
            Ok(_) => return true,
            Err((error, _)) => {
                tracing::warn!(%error, dlq_topic = settings.dlq_topic, retry_in_ms = delay.as_millis() as u64, "failed to dead-letter a message, retrying");
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                    || error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopic)
                {
                    let spec =
                        TopicSpec::dead_letter(&dead_letters.kafka_config, &settings.dlq_topic);
                    if let Err(error) =
                        kafka::ensure_topics(&dead_letters.kafka_config, &[spec]).await
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
            () = tokio::time::sleep(delay) => {}
        }
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
    fn long_error_texts_are_cut_on_a_character_boundary() {
        let text = "é".repeat(600);
        let cut = truncate_utf8(&text, DLQ_ERROR_MAX_BYTES);
        assert!(cut.len() <= DLQ_ERROR_MAX_BYTES && cut.len() >= DLQ_ERROR_MAX_BYTES - 1);
        assert_eq!(truncate_utf8("short", DLQ_ERROR_MAX_BYTES), "short");
    }
}
