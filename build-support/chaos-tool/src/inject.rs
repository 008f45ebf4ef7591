//! Hostile and duplicated records. Hostile records are produced straight over
//! the Kafka protocol (header names need not be UTF-8); each one is described
//! by a JSON line (kept in memory by `run`, appended to a file by `inject`) so
//! that the checker can find it in the right dead-letter topic with its
//! original key, value and headers.

use std::io::Write;

use anyhow::Context;
use foodorder_contract::events;
use foodorder_contract::v1::{OrderPlaced, PaymentCompleted};
use foodorder_runtime::kafka::EVENT_MAX_MESSAGE_BYTES;
use foodorder_runtime::record_headers::RawHeader;
use foodorder_testkit as testing;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

/// Options of the `inject` subcommand.
#[derive(clap::Args)]
pub struct InjectArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap: String,
    /// Topic-name prefix of the platform under test.
    #[arg(long, default_value = "")]
    prefix: String,
    /// An acknowledged order whose id becomes the key of one garbage record per topic.
    #[arg(long)]
    live_order: String,
    /// Seed of the random bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to append what was sent (JSON lines).
    #[arg(long)]
    out: std::path::PathBuf,
}

/// Options of the `duplicate` subcommand.
#[derive(clap::Args)]
pub struct DuplicateArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap: String,
    /// The topic whose records are copied.
    #[arg(long)]
    topic: String,
    /// How many records to copy (from the beginning of each partition, round robin).
    #[arg(long, default_value_t = 50)]
    count: usize,
}

/// One hostile record: what it is, and the bytes it was sent with.
struct Hostile {
    kind: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<RawHeader>,
}

fn text_headers(event_type: &str, request_id: &str) -> Vec<RawHeader> {
    vec![
        (
            events::HEADER_CONTENT_TYPE.as_bytes().to_vec(),
            Some(events::CONTENT_TYPE_PROTOBUF.as_bytes().to_vec()),
        ),
        (
            events::HEADER_EVENT_TYPE.as_bytes().to_vec(),
            Some(event_type.as_bytes().to_vec()),
        ),
        (
            events::HEADER_REQUEST_ID.as_bytes().to_vec(),
            Some(request_id.as_bytes().to_vec()),
        ),
    ]
}

/// The hostile records for one event topic: every kind the suite promises to survive.
fn hostile_records(
    rng: &mut impl Rng,
    event_type: &str,
    wrong_event: Vec<u8>,
    valid: Vec<u8>,
    live_order: &str,
) -> Vec<Hostile> {
    let random_key = || uuid::Uuid::new_v4().to_string().into_bytes();
    let mut random_bytes = vec![0_u8; 512];
    rng.fill(random_bytes.as_mut_slice());
    let mut huge = vec![0_u8; EVENT_MAX_MESSAGE_BYTES - 8192];
    rng.fill(huge.as_mut_slice());
    let headers = text_headers(event_type, "chaos-hostile");
    let mut odd_headers = headers.clone();
    // Any bytes but NUL in names: librdkafka keeps header names as C strings.
    odd_headers.push((
        b"\xff\xfe-not-utf8".to_vec(),
        Some(b"\xc3\x28\xa0\xa1".to_vec()),
    ));
    odd_headers.push((b"caf\xe9-latin1".to_vec(), Some(b"\x00\xff".to_vec())));
    odd_headers.push((b"x-binary".to_vec(), Some(vec![0, 159, 146, 150])));
    odd_headers.push((b"x-null-value".to_vec(), None));
    vec![
        Hostile {
            kind: "random bytes",
            key: Some(random_key()),
            value: Some(random_bytes.clone()),
            headers: headers.clone(),
        },
        Hostile {
            kind: "truncated protobuf",
            key: Some(random_key()),
            value: Some(valid[..valid.len() / 2].to_vec()),
            headers: headers.clone(),
        },
        Hostile {
            kind: "empty value",
            key: Some(random_key()),
            value: Some(Vec::new()),
            headers: headers.clone(),
        },
        Hostile {
            kind: "wrong event type",
            key: Some(random_key()),
            value: Some(wrong_event),
            headers: headers.clone(),
        },
        Hostile {
            kind: "no key",
            key: None,
            value: Some(random_bytes[..64].to_vec()),
            headers: headers.clone(),
        },
        Hostile {
            kind: "headers not UTF-8",
            key: Some(random_key()),
            value: Some(random_bytes[64..200].to_vec()),
            headers: odd_headers,
        },
        Hostile {
            kind: "near the maximum size",
            key: Some(random_key()),
            value: Some(huge),
            headers: headers.clone(),
        },
        Hostile {
            kind: "garbage keyed by a live order",
            key: Some(live_order.as_bytes().to_vec()),
            value: Some(b"\x0a\xff\xff garbage".to_vec()),
            headers,
        },
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The `inject` subcommand: sends the hostile records, appends what was sent to `--out`.
pub async fn run(args: InjectArgs) -> anyhow::Result<()> {
    let sent = hostile(&args.bootstrap, &args.prefix, &args.live_order, args.seed).await?;
    append_lines(&args.out, &sent.lines)?;
    println!("{{\"hostile_records\": {}}}", sent.records);
    Ok(())
}

/// What [`hostile`] sent: how many records, and one JSON line per record and
/// dead-letter topic it must reach (kind, topic, dlq, key, value digest, headers).
pub struct Sent {
    /// Records produced.
    pub records: usize,
    /// What the checker looks for, one entry per (record, dead-letter topic).
    pub lines: Vec<serde_json::Value>,
}

/// Appends JSON lines to `path`.
pub fn append_lines(path: &std::path::Path, lines: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Produces the hostile records to both event topics of the platform whose
/// topic names start with `prefix`; `live_order` keys one garbage record per topic.
pub async fn hostile(
    bootstrap: &str,
    prefix: &str,
    live_order: &str,
    seed: u64,
) -> anyhow::Result<Sent> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let topics = crate::topics::Topics::with_prefix(prefix);
    let fake_order = uuid::Uuid::new_v4().to_string();
    let order_placed = OrderPlaced {
        metadata: Some(events::metadata("chaos", "chaos", chrono::Utc::now())),
        order_id: fake_order.clone(),
        customer_name: "Mallory".into(),
        customer_email: "mallory@example.com".into(),
        total_amount: "1.99".into(),
        items: Vec::new(),
    }
    .encode_to_vec();
    let payment_completed = PaymentCompleted {
        metadata: Some(events::metadata("chaos", "chaos", chrono::Utc::now())),
        order_id: fake_order,
        success: true,
        amount: "1.99".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let plan = [
        (
            &topics.order_placed,
            vec![&topics.payment_dlq],
            "foodorder.v1.OrderPlaced",
            payment_completed.clone(),
            order_placed.clone(),
        ),
        (
            &topics.payment_completed,
            // Two groups read payment.completed: each dead-letters its copy.
            vec![&topics.notification_dlq, &topics.order_dlq],
            "foodorder.v1.PaymentCompleted",
            order_placed,
            payment_completed,
        ),
    ];
    let mut sent = Sent {
        records: 0,
        lines: Vec::new(),
    };
    for (topic, dlqs, event_type, wrong, valid) in plan {
        for record in hostile_records(&mut rng, event_type, wrong, valid, live_order) {
            let partition = rng.random_range(0..6);
            testing::produce_raw(
                bootstrap,
                topic,
                partition,
                record.key.as_deref(),
                record.value.as_deref(),
                &record.headers,
            )
            .await;
            for dlq in &dlqs {
                sent.lines.push(serde_json::json!({
                    "kind": record.kind,
                    "topic": topic,
                    "dlq": dlq,
                    "key": record.key.as_deref().map(hex),
                    "value_sha256": hex(&Sha256::digest(record.value.as_deref().unwrap_or_default())),
                    "headers": record.headers.iter().map(|(name, value)| (hex(name), value.as_deref().map(hex))).collect::<Vec<_>>(),
                }));
            }
            sent.records += 1;
        }
    }
    Ok(sent)
}

/// The `duplicate` subcommand.
pub async fn run_duplicate(args: DuplicateArgs) -> anyhow::Result<()> {
    let copied = duplicate(&args.bootstrap, &args.topic, args.count).await?;
    println!(
        "{{\"duplicated\": {copied}, \"topic\": \"{}\"}}",
        args.topic
    );
    Ok(())
}

/// Copies up to `count` records already on `topic` back onto it (same
/// partition, key, value and headers); returns how many were copied.
pub async fn duplicate(bootstrap: &str, topic: &str, count: usize) -> anyhow::Result<usize> {
    let (reader_bootstrap, reader_topic) = (bootstrap.to_owned(), topic.to_owned());
    let records =
        tokio::task::spawn_blocking(move || read_some(&reader_bootstrap, &reader_topic, count))
            .await??;
    for (partition, key, value, headers) in &records {
        testing::produce_raw(
            bootstrap,
            topic,
            *partition,
            key.as_deref(),
            value.as_deref(),
            headers,
        )
        .await;
    }
    Ok(records.len())
}

type RawRecord = (i32, Option<Vec<u8>>, Option<Vec<u8>>, Vec<RawHeader>);

fn read_some(bootstrap: &str, topic: &str, count: usize) -> anyhow::Result<Vec<RawRecord>> {
    let consumer: BaseConsumer = foodorder_testkit::kafka::client(bootstrap)
        .set(
            "group.id",
            format!("chaos-duplicator-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let metadata = foodorder_testkit::kafka::ask_again_until(
        std::time::Instant::now() + std::time::Duration::from_secs(30),
        &format!("metadata of {topic}"),
        || consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10)),
    )?;
    let partitions = metadata
        .topics()
        .first()
        .map(|topic| topic.partitions().len())
        .unwrap_or(0);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut records = Vec::new();
    while records.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(200)) {
            records.push((
                message.partition(),
                message.key().map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec),
                foodorder_runtime::record_headers::read(&message),
            ));
        }
    }
    Ok(records)
}
