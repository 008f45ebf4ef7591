//! The dead-letter side of the checks: reads every dead-letter topic the
//! hostile records were meant for, and finds each record there with its key,
//! value and headers as sent (the services append diagnostic headers after them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use foodorder_testkit::kafka::ask_again_until;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

/// Every injected record is on its dead-letter topic with its key, value and
/// headers as sent (followed by the diagnostic headers). Returns (records
/// checked, records not found as sent); the details of each miss go to `out`.
pub async fn hostile_in_dlq(
    bootstrap: &str,
    sent: &[serde_json::Value],
    out: &mut String,
) -> anyhow::Result<(usize, usize)> {
    let dlqs: BTreeSet<String> = sent
        .iter()
        .filter_map(|line| line["dlq"].as_str().map(str::to_owned))
        .collect();
    let mut found: Vec<(String, serde_json::Value)> = Vec::new();
    for dlq in dlqs {
        let (bootstrap, topic) = (bootstrap.to_owned(), dlq.clone());
        let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic)).await??;
        found.extend(records.into_iter().map(|record| (dlq.clone(), record)));
    }
    let mut violations = 0;
    for record in sent {
        let matches = found.iter().any(|(dlq, copy)| {
            Some(dlq.as_str()) == record["dlq"].as_str()
                && copy["key"] == record["key"]
                && copy["value_sha256"] == record["value_sha256"]
                && copy["headers"]
                    .as_array()
                    .zip(record["headers"].as_array())
                    .is_some_and(|(copy, sent)| {
                        copy.len() >= sent.len() && copy[..sent.len()] == sent[..]
                    })
        });
        if !matches {
            violations += 1;
            writeln!(
                out,
                "not in its DLQ as sent: {} on {}",
                record["kind"], record["topic"]
            )?;
            writeln!(out, "  sent headers: {}", record["headers"])?;
            for (_, copy) in found
                .iter()
                .filter(|(_, copy)| copy["key"] == record["key"])
            {
                writeln!(
                    out,
                    "  copy with that key: same value {}, headers {}",
                    copy["value_sha256"] == record["value_sha256"],
                    copy["headers"]
                )?;
            }
        }
    }
    Ok((sent.len(), violations))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn read_all(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let consumer: BaseConsumer = foodorder_testkit::kafka::client(bootstrap)
        .set(
            "group.id",
            format!("chaos-checker-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    // Right after a broker kill leadership may still be moving: each question
    // is asked again for a bounded time.
    let patience = Instant::now() + Duration::from_secs(60);
    let metadata = ask_again_until(patience, &format!("metadata of {topic}"), || {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    let partitions = metadata
        .topics()
        .first()
        .map(|topic| topic.partitions().len())
        .unwrap_or(0) as i32;
    let mut ends = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, high) = ask_again_until(
            patience,
            &format!("high watermark of {topic}[{partition}]"),
            || consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)),
        )?;
        ends.insert(partition, high);
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut positions: BTreeMap<i32, i64> = ends.keys().map(|partition| (*partition, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while positions
        .iter()
        .any(|(partition, position)| *position < ends[partition])
        && Instant::now() < deadline
    {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            positions.insert(message.partition(), message.offset() + 1);
            let headers = foodorder_runtime::record_headers::read(&message);
            records.push(serde_json::json!({
                "key": message.key().map(hex),
                "value_sha256": hex(&Sha256::digest(message.payload().unwrap_or_default())),
                "headers": headers.iter().map(|(name, value)| (hex(name), value.as_deref().map(hex))).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(records)
}
