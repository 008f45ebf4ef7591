//! `foodorder dlq`: the dead-letter topics (`order.dlq`, `payment.dlq`,
//! `notification.dlq`). A consumer copies a record it cannot process there
//! byte for byte (key, value, headers) and adds `dlq-*` headers saying where
//! it came from, which group gave up on it, why and when
//! (`foodorder_runtime::consumer::DLQ_*`).
//!
//! Redrive sends the original records back to their source topics once the
//! cause is fixed. Each record goes at most once: its copy and an entry for
//! it in the ledger topic `<dlq>.redriven` (compacted, keyed by the record's
//! `partition:offset` in the dead-letter topic) are written in one Kafka
//! transaction, and a run skips every record the ledger already names. The
//! consumers read committed records only (librdkafka's default), so a copy
//! whose transaction was aborted is never processed and its record is tried
//! again by the next run. A record that cannot be sent (its source topic is
//! gone, a header name that is not UTF-8) stays where it is and is reported.
//! The consumers also deduplicate by order id, so even a record redriven by
//! hand twice changes nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use foodorder_proto::v1::{OrderPlaced, OrderUnprocessable, PaymentCompleted};
use foodorder_runtime::config::KafkaConfig;
use foodorder_runtime::consumer::{
    DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_FAILED_AT, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::kafka::{self, KafkaArgs, Record};

/// The dead-letter topics of the services (without the prefix).
pub const DEAD_LETTER_TOPICS: [&str; 3] = ["order.dlq", "payment.dlq", "notification.dlq"];

/// The topics each dead-letter topic's consumers read (without the prefix):
/// the only places a record of it can be sent back to. A record that names
/// another source (a header forged upstream) stays where it is: redrive runs
/// as the admin, and must not become a way around the producers' ACLs.
const SOURCES: [(&str, &[&str]); 3] = [
    ("order.dlq", &["payment.completed", "order.unprocessable"]),
    ("payment.dlq", &["order.placed"]),
    ("notification.dlq", &["payment.completed"]),
];

/// The header a redriven copy carries: `<dlq topic>:<partition>:<offset>` of
/// the dead-lettered record it is a copy of.
pub const REDRIVE_HEADER: &str = "foodorder-redrive-of";

/// The headers a consumer adds when it dead-letters a record.
const DIAGNOSTIC_HEADERS: [&str; 6] = [
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR,
    DLQ_FAILED_AT,
];

/// Records per transaction when redriving.
const BATCH: usize = 100;

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Every dead-lettered record of a DLQ: where it came from, which group gave up on it, why and when.
    List {
        /// The dead-letter topic: order.dlq, payment.dlq or notification.dlq (the prefix is added).
        topic: String,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// One dead-lettered record in full, its original value decoded where it decodes.
    Show {
        /// The dead-letter topic.
        topic: String,
        /// The record's PARTITION:OFFSET in the dead-letter topic (as `list` shows it).
        position: String,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Sends dead-lettered records back to their source topics (original key, value and
    /// headers, plus a redrive header), each at most once; what cannot be sent stays.
    Redrive {
        /// The dead-letter topic.
        topic: String,
        /// Only records whose error contains this text.
        #[arg(long)]
        error: Option<String>,
        /// Only records dead-lettered since then: an RFC 3339 time
        /// (2026-12-04T10:00:00Z) or an age (90s, 15m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// Say what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
}

pub fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { topic, kafka } => list(&kafka, &topic),
        DlqCommand::Show {
            topic,
            position,
            kafka,
        } => show(&kafka, &topic, &position),
        DlqCommand::Redrive {
            topic,
            error,
            since,
            dry_run,
            kafka,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            redrive(&kafka, &topic, error.as_deref(), since, dry_run)
        }
    }
}

/// The full name of dead-letter topic `name`, or an error when it is none.
fn dead_letter_topic(kafka: &KafkaArgs, name: &str) -> anyhow::Result<String> {
    let topic = kafka.topic(name);
    anyhow::ensure!(
        DEAD_LETTER_TOPICS.contains(&kafka.unprefixed(&topic)),
        "{name} is not a dead-letter topic (those are {}{})",
        DEAD_LETTER_TOPICS.join(", "),
        if kafka.prefix.is_empty() {
            String::new()
        } else {
            format!(", with the prefix {}", kafka.prefix)
        }
    );
    Ok(topic)
}

/// What a consumer wrote about a dead-lettered record.
struct Diagnosis {
    source_topic: Option<String>,
    source_partition: Option<String>,
    source_offset: Option<String>,
    group: Option<String>,
    error: Option<String>,
    failed_at: Option<String>,
}

impl Diagnosis {
    fn of(record: &Record) -> Self {
        Self {
            source_topic: record.header(DLQ_SOURCE_TOPIC),
            source_partition: record.header(DLQ_SOURCE_PARTITION),
            source_offset: record.header(DLQ_SOURCE_OFFSET),
            group: record.header(DLQ_CONSUMER_GROUP),
            error: record.header(DLQ_ERROR),
            failed_at: record.header(DLQ_FAILED_AT),
        }
    }

    fn source(&self) -> String {
        match &self.source_topic {
            Some(topic) => format!(
                "{}/{}@{}",
                one_line(topic, 80),
                one_line(self.source_partition.as_deref().unwrap_or("?"), 12),
                one_line(self.source_offset.as_deref().unwrap_or("?"), 20)
            ),
            None => "-".to_owned(),
        }
    }

    /// When, to the second (UTC), or the header as it is when it is no time.
    fn failed_at_text(&self) -> String {
        match (self.failed_at(), &self.failed_at) {
            (Some(time), _) => time.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            (None, Some(raw)) => one_line(raw, 25),
            (None, None) => "-".to_owned(),
        }
    }

    fn failed_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(self.failed_at.as_deref()?)
            .ok()
            .map(|time| time.with_timezone(&chrono::Utc))
    }
}

fn list(kafka: &KafkaArgs, name: &str) -> anyhow::Result<()> {
    let topic = dead_letter_topic(kafka, name)?;
    let config = kafka.config()?;
    let records = kafka::read_all(&config, &topic)?;
    let ledger = redriven(&config, &topic)?;
    println!(
        "{:<12} {:<21} {:<34} {:<28} {:<9} {:<50} ERROR",
        "POSITION", "FAILED AT", "SOURCE (topic/partition@offset)", "GROUP", "REDRIVEN", "VALUE"
    );
    for record in &records {
        let diagnosis = Diagnosis::of(record);
        println!(
            "{:<12} {:<21} {:<34} {:<28} {:<9} {:<50} {}",
            format!("{}:{}", record.partition, record.offset),
            diagnosis.failed_at_text(),
            diagnosis.source(),
            one_line(diagnosis.group.as_deref().unwrap_or("-"), 28),
            if ledger.contains(&(record.partition, record.offset)) {
                "yes"
            } else {
                "no"
            },
            summary(
                diagnosis
                    .source_topic
                    .as_deref()
                    .map(|topic| kafka.unprefixed(topic)),
                record.value.as_deref()
            ),
            one_line(diagnosis.error.as_deref().unwrap_or("-"), 100)
        );
    }
    println!(
        "{} record(s) in {topic}, {} of them redriven",
        records.len(),
        records
            .iter()
            .filter(|record| ledger.contains(&(record.partition, record.offset)))
            .count()
    );
    Ok(())
}

fn show(kafka: &KafkaArgs, name: &str, position: &str) -> anyhow::Result<()> {
    let topic = dead_letter_topic(kafka, name)?;
    let (partition, offset) = position
        .split_once(':')
        .and_then(|(partition, offset)| {
            Some((partition.parse::<i32>().ok()?, offset.parse::<i64>().ok()?))
        })
        .with_context(|| format!("{position} is not PARTITION:OFFSET (e.g. 0:12)"))?;
    let config = kafka.config()?;
    let record = read_one(&config, &topic, partition, offset)?;
    let diagnosis = Diagnosis::of(&record);
    let ledger = redriven(&config, &topic)?;
    println!("record        {topic} {partition}:{offset}");
    println!("failed at     {}", diagnosis.failed_at_text());
    println!(
        "written at    {}",
        record
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or_else(|| "-".to_owned(), |time| time.to_rfc3339())
    );
    println!("source        {}", diagnosis.source());
    println!(
        "group         {}",
        diagnosis.group.as_deref().unwrap_or("-")
    );
    println!(
        "error         {}",
        diagnosis.error.as_deref().unwrap_or("-")
    );
    println!(
        "redriven      {}",
        if ledger.contains(&(partition, offset)) {
            "yes"
        } else {
            "no"
        }
    );
    println!("key           {}", printable(record.key.as_deref()));
    println!("headers       (the original record's, then the dead-letter diagnostics)");
    for (name, value) in &record.headers {
        println!(
            "  {} = {}",
            printable(Some(name)),
            printable(value.as_deref())
        );
    }
    let source = diagnosis
        .source_topic
        .as_deref()
        .map(|topic| kafka.unprefixed(topic).to_owned());
    println!(
        "value         {}",
        decode(source.as_deref(), record.value.as_deref())
    );
    Ok(())
}

/// The record at `partition:offset` of `topic`, or an error saying it is not there.
fn read_one(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<Record> {
    let consumer = kafka::reader(config)?;
    let partitions = kafka::partitions(&consumer, &config.bootstrap_servers, topic)?;
    anyhow::ensure!(
        partitions.contains(&partition),
        "{topic} has no partition {partition} (it has {})",
        partitions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, kafka::ANSWER_WITHIN)
        .map_err(|error| {
            anyhow::anyhow!("{}", kafka::unreachable(&config.bootstrap_servers, &error))
        })?;
    anyhow::ensure!(
        (low..high).contains(&offset),
        "{topic} partition {partition} has no offset {offset} (it keeps {})",
        if high > low {
            format!("offsets {low} to {}", high - 1)
        } else {
            "no records".to_owned()
        }
    );
    // Only that record: the reader starts at its offset.
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.with_context(|| format!("reading {topic} failed"))?;
        if message.partition() == partition && message.offset() >= offset {
            anyhow::ensure!(
                message.offset() == offset,
                "{topic} {partition}:{offset} is no record (the next is at {})",
                message.offset()
            );
            return Ok(Record::of(&message));
        }
    }
    anyhow::bail!("{topic} {partition}:{offset} could not be read within 30 s")
}

/// One line about `value` for `list`: the event it decodes as and its order,
/// or that it does not decode.
fn summary(source_topic: Option<&str>, value: Option<&[u8]>) -> String {
    let Some(bytes) = value else {
        return "tombstone".to_owned();
    };
    let order = |id: &str| one_line(if id.is_empty() { "-" } else { id }, 40);
    let decoded = match source_topic {
        Some("order.placed") => OrderPlaced::decode(bytes)
            .map(|event| format!("OrderPlaced {}", order(&event.order_id)))
            .ok(),
        Some("payment.completed") => PaymentCompleted::decode(bytes)
            .map(|event| {
                format!(
                    "PaymentCompleted {} {}",
                    order(&event.order_id),
                    if event.success { "paid" } else { "failed" }
                )
            })
            .ok(),
        Some("order.unprocessable") => OrderUnprocessable::decode(bytes)
            .map(|event| format!("OrderUnprocessable {}", order(&event.order_id)))
            .ok(),
        _ => None,
    };
    decoded.unwrap_or_else(|| format!("undecodable, {} B", bytes.len()))
}

/// `value` decoded as the event its source topic carries, else why not, with its bytes.
fn decode(source_topic: Option<&str>, value: Option<&[u8]>) -> String {
    let Some(bytes) = value else {
        return "(none: a tombstone)".to_owned();
    };
    let decoded = match source_topic {
        Some("order.placed") => {
            Some(OrderPlaced::decode(bytes).map(|event| format!("OrderPlaced {event:#?}")))
        }
        Some("payment.completed") => Some(
            PaymentCompleted::decode(bytes).map(|event| format!("PaymentCompleted {event:#?}")),
        ),
        Some("order.unprocessable") => Some(
            OrderUnprocessable::decode(bytes).map(|event| format!("OrderUnprocessable {event:#?}")),
        ),
        _ => None,
    };
    match decoded {
        Some(Ok(text)) => text,
        Some(Err(error)) => format!(
            "does not decode as the event of {} ({error}); {} byte(s): {}",
            source_topic.unwrap_or("?"),
            bytes.len(),
            hex_preview(bytes)
        ),
        None => format!(
            "{} byte(s) of an unknown source: {}",
            bytes.len(),
            hex_preview(bytes)
        ),
    }
}

fn hex_preview(bytes: &[u8]) -> String {
    const SHOWN: usize = 128;
    let hex: String = bytes
        .iter()
        .take(SHOWN)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if bytes.len() > SHOWN {
        format!("{hex}…")
    } else {
        hex
    }
}

/// Text as it is when it is printable UTF-8, else its bytes in hex; `-` for none.
fn printable(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "-".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
            _ => format!("0x{}", hex_preview(bytes)),
        },
    }
}

/// `text` on one line, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max - 1).collect::<String>())
    } else {
        flat
    }
}

/// `--since`: an RFC 3339 time or an age (`90s`, `15m`, `2h`, `1d`).
fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let bad = || {
        anyhow::anyhow!(
            "--since {text:?} is neither an RFC 3339 time (2026-12-04T10:00:00Z) nor an age (90s, 15m, 2h, 1d)"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60).ok_or_else(bad)?,
        "h" => number.checked_mul(3600).ok_or_else(bad)?,
        "d" => number.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let age = chrono::Duration::try_seconds(seconds).ok_or_else(bad)?;
    chrono::Utc::now().checked_sub_signed(age).ok_or_else(bad)
}

/// The ledger of a dead-letter topic.
fn ledger_topic(dlq: &str) -> String {
    format!("{dlq}.redriven")
}

/// The (partition, offset) of every record of `dlq` already redriven.
fn redriven(config: &KafkaConfig, dlq: &str) -> anyhow::Result<BTreeSet<(i32, i64)>> {
    let ledger = ledger_topic(dlq);
    let consumer = kafka::reader(config)?;
    if kafka::existing_partitions(&consumer, &config.bootstrap_servers, &ledger)?.is_none() {
        return Ok(BTreeSet::new());
    }
    drop(consumer);
    Ok(kafka::read_all(config, &ledger)?
        .iter()
        .filter_map(|entry| {
            let key = std::str::from_utf8(entry.key.as_deref()?).ok()?;
            let (partition, offset) = key.split_once(':')?;
            Some((partition.parse().ok()?, offset.parse().ok()?))
        })
        .collect())
}

/// One record to send back, or why it stays.
enum Plan<'a> {
    Send { record: &'a Record, to: String },
    Stay { record: &'a Record, why: String },
}

fn redrive(
    kafka: &KafkaArgs,
    name: &str,
    error: Option<&str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let topic = dead_letter_topic(kafka, name)?;
    let config = kafka.config()?;
    // The producer's transactions start before the ledger is read: a redrive
    // of the same topic still running is fenced (its open batch aborted)
    // first, so what this run reads is all that was ever sent.
    let sender = if dry_run {
        None
    } else {
        Some(Sender::start(&config, &topic)?)
    };
    let allowed = SOURCES
        .iter()
        .find(|(dlq, _)| *dlq == kafka.unprefixed(&topic))
        .map_or(&[][..], |(_, sources)| *sources);
    let records = kafka::read_all(&config, &topic)?;
    let ledger = redriven(&config, &topic)?;
    let consumer = kafka::reader(&config)?;
    let mut topics_exist: BTreeMap<String, bool> = BTreeMap::new();
    let (mut already, mut filtered) = (0usize, 0usize);
    let mut plans = Vec::new();
    for record in &records {
        if ledger.contains(&(record.partition, record.offset)) {
            already += 1;
            continue;
        }
        let diagnosis = Diagnosis::of(record);
        let matches_error = error.is_none_or(|wanted| {
            diagnosis
                .error
                .as_deref()
                .is_some_and(|text| text.contains(wanted))
        });
        let matches_time =
            since.is_none_or(|since| diagnosis.failed_at().is_some_and(|at| at >= since));
        if !matches_error || !matches_time {
            filtered += 1;
            continue;
        }
        let Some(source) = diagnosis.source_topic.clone() else {
            plans.push(Plan::Stay {
                record,
                why: format!("it has no {DLQ_SOURCE_TOPIC} header (not a dead-lettered copy)"),
            });
            continue;
        };
        if !allowed.contains(&kafka.unprefixed(&source)) {
            plans.push(Plan::Stay {
                record,
                why: format!(
                    "its source topic {} is not one that {topic}'s consumers read ({})",
                    one_line(&source, 80),
                    allowed.join(", ")
                ),
            });
            continue;
        }
        let exists = match topics_exist.get(&source) {
            Some(exists) => *exists,
            None => {
                let exists =
                    kafka::existing_partitions(&consumer, &config.bootstrap_servers, &source)?
                        .is_some();
                topics_exist.insert(source.clone(), exists);
                exists
            }
        };
        if !exists {
            plans.push(Plan::Stay {
                record,
                why: format!("its source topic {source} no longer exists"),
            });
        } else if let Some((name, _)) = record
            .headers
            .iter()
            .find(|(name, _)| std::str::from_utf8(name).is_err())
        {
            plans.push(Plan::Stay {
                record,
                why: format!(
                    "a header name is not UTF-8 (0x{}), which this client cannot write",
                    hex_preview(name)
                ),
            });
        } else {
            plans.push(Plan::Send { record, to: source });
        }
    }
    drop(consumer);
    let sends: Vec<(&Record, &str)> = plans
        .iter()
        .filter_map(|plan| match plan {
            Plan::Send { record, to } => Some((*record, to.as_str())),
            Plan::Stay { .. } => None,
        })
        .collect();
    for plan in &plans {
        if let Plan::Stay { record, why } = plan {
            println!(
                "stays in {topic}: {}:{}: {why}",
                record.partition, record.offset
            );
        }
    }
    if dry_run {
        for (record, to) in &sends {
            println!(
                "would send {}:{} back to {to} ({})",
                record.partition,
                record.offset,
                one_line(Diagnosis::of(record).error.as_deref().unwrap_or("-"), 80)
            );
        }
        println!(
            "dry run: {} record(s) would be sent back; {} stay; {already} already redriven; {filtered} not selected",
            sends.len(),
            plans.len() - sends.len()
        );
        return Ok(());
    }
    let sent = match sender {
        Some(sender) if !sends.is_empty() => sender.send(&topic, &sends)?,
        _ => BTreeMap::new(),
    };
    let per_topic = sent
        .iter()
        .map(|(to, count)| format!("{count} to {to}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "sent {} record(s) back{}; {} stay in {topic}; {already} already redriven; {filtered} not selected",
        sends.len(),
        if per_topic.is_empty() {
            String::new()
        } else {
            format!(" ({per_topic})")
        },
        plans.len() - sends.len()
    );
    Ok(())
}

/// The transactional producer of a redrive and its ledger topic.
struct Sender {
    producer: BaseProducer,
    ledger: String,
}

impl Sender {
    /// The ledger topic (made when missing) and a producer whose transactions
    /// are initialised, which fences any other redrive of `dlq`.
    fn start(config: &KafkaConfig, dlq: &str) -> anyhow::Result<Self> {
        let ledger = ensure_ledger(config, dlq)?;
        let producer: BaseProducer =
            foodorder_runtime::kafka::client_config(config, "foodorder-cli-redrive")
                // One id per dead-letter topic: a second redrive of the same topic
                // running at once fences the first instead of racing it.
                .set("transactional.id", format!("foodorder-redrive-{dlq}"))
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("transaction.timeout.ms", "60000")
                .set(
                    "message.max.bytes",
                    (foodorder_runtime::kafka::DLQ_MAX_MESSAGE_BYTES + 4096).to_string(),
                )
                .set("log_level", "0")
                .create()
                .context("cannot create the redrive producer")?;
        producer
            .init_transactions(Duration::from_secs(30))
            .map_err(|error| {
                anyhow::anyhow!("cannot start a Kafka transaction as this principal: {error}")
            })?;
        Ok(Self { producer, ledger })
    }

    /// Sends each record back to its source topic and writes its ledger
    /// entry, both in one transaction per batch; counts per topic.
    fn send(self, dlq: &str, sends: &[(&Record, &str)]) -> anyhow::Result<BTreeMap<String, usize>> {
        let Self { producer, ledger } = self;
        let bar = crate::progress(sends.len() as u64, &format!("redriving {dlq}"));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for batch in sends.chunks(BATCH) {
            producer.begin_transaction()?;
            let outcome = (|| -> anyhow::Result<()> {
                for (record, to) in batch {
                    let position = format!("{}:{}", record.partition, record.offset);
                    let mut headers = OwnedHeaders::new();
                    for (name, value) in &record.headers {
                        let name =
                            std::str::from_utf8(name).context("a header name is not UTF-8")?;
                        if DIAGNOSTIC_HEADERS.contains(&name) || name == REDRIVE_HEADER {
                            continue;
                        }
                        headers = headers.insert(Header {
                            key: name,
                            value: value.as_deref(),
                        });
                    }
                    let origin = format!("{dlq}:{position}");
                    headers = headers.insert(Header {
                        key: REDRIVE_HEADER,
                        value: Some(origin.as_bytes()),
                    });
                    let mut copy: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(to).headers(headers);
                    if let Some(key) = &record.key {
                        copy = copy.key(key.as_slice());
                    }
                    if let Some(value) = &record.value {
                        copy = copy.payload(value.as_slice());
                    }
                    producer.send(copy).map_err(|(error, _)| {
                        anyhow::anyhow!("cannot send {position} to {to}: {error}")
                    })?;
                    let entry = serde_json::json!({
                        "to": to,
                        "redriven_at": chrono::Utc::now().to_rfc3339(),
                    })
                    .to_string();
                    producer
                        .send(
                            BaseRecord::<str, str>::to(&ledger)
                                .key(position.as_str())
                                .payload(entry.as_str()),
                        )
                        .map_err(|(error, _)| {
                            anyhow::anyhow!("cannot write the ledger entry of {position}: {error}")
                        })?;
                    producer.poll(Duration::ZERO);
                }
                producer.commit_transaction(Duration::from_secs(60))?;
                Ok(())
            })();
            if let Err(error) = outcome {
                let _ = producer.abort_transaction(Duration::from_secs(30));
                bar.abandon();
                let done: usize = counts.values().sum();
                anyhow::bail!(
                    "redrive stopped after {done} record(s): {error:#}; the records of the failed batch stay in {dlq} and are tried again by the next run"
                );
            }
            for (_, to) in batch {
                *counts.entry((*to).to_owned()).or_default() += 1;
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        Ok(counts)
    }
}

/// Creates the ledger topic of `dlq` when it does not exist: compacted (one
/// entry per record is all it needs), one partition, the DLQ's replication.
fn ensure_ledger(config: &KafkaConfig, dlq: &str) -> anyhow::Result<String> {
    let ledger = ledger_topic(dlq);
    let consumer = kafka::reader(config)?;
    let metadata = consumer
        .fetch_metadata(Some(dlq), kafka::ANSWER_WITHIN)
        .map_err(|error| {
            anyhow::anyhow!("{}", kafka::unreachable(&config.bootstrap_servers, &error))
        })?;
    let replication = metadata
        .topics()
        .first()
        .and_then(|topic| topic.partitions().first())
        .map_or(1, |partition| partition.replicas().len().max(1));
    if kafka::existing_partitions(&consumer, &config.bootstrap_servers, &ledger)?.is_some() {
        return Ok(ledger);
    }
    let admin: AdminClient<DefaultClientContext> =
        foodorder_runtime::kafka::client_config(config, "foodorder-cli-admin")
            .create()
            .context("cannot create a Kafka admin client")?;
    let min_insync = if replication >= 3 { "2" } else { "1" };
    let topic = NewTopic::new(
        &ledger,
        1,
        TopicReplication::Fixed(i32::try_from(replication).unwrap_or(1)),
    )
    .set("cleanup.policy", "compact")
    .set("min.insync.replicas", min_insync);
    let runtime = crate::runtime()?;
    let results = runtime
        .block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .with_context(|| format!("cannot create the ledger topic {ledger}"))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create the ledger topic {name}: {code}"),
        }
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let time = parse_since("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(time.to_rfc3339(), "2026-12-04T10:00:00+00:00");
        let age = chrono::Utc::now() - parse_since("15m").unwrap();
        assert!((899..=901).contains(&age.num_seconds()), "{age}");
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "-5m",
            "yesterday",
            "99999999999999999999d",
        ] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_dead_letter_topics_are_taken() {
        let kafka = KafkaArgs {
            bootstrap: "127.0.0.1:1".into(),
            prefix: "t1-".into(),
        };
        assert_eq!(
            dead_letter_topic(&kafka, "payment.dlq").unwrap(),
            "t1-payment.dlq"
        );
        assert_eq!(
            dead_letter_topic(&kafka, "t1-order.dlq").unwrap(),
            "t1-order.dlq"
        );
        let error = dead_letter_topic(&kafka, "order.placed")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not a dead-letter topic"), "{error}");
    }

    #[test]
    fn values_decode_by_their_source_topic() {
        let event = OrderPlaced {
            order_id: "7".into(),
            ..Default::default()
        };
        let text = decode(Some("order.placed"), Some(&event.encode_to_vec()));
        assert!(text.starts_with("OrderPlaced"), "{text}");
        let text = decode(Some("order.placed"), Some(&[0xff, 0xff, 0xff]));
        assert!(text.contains("does not decode"), "{text}");
        assert!(decode(Some("order.placed"), None).contains("tombstone"));
        assert_eq!(
            summary(Some("order.placed"), Some(&event.encode_to_vec())),
            "OrderPlaced 7"
        );
        assert_eq!(
            summary(Some("order.placed"), Some(&[0xff, 0xff, 0xff])),
            "undecodable, 3 B"
        );
        assert_eq!(printable(Some(b"abc")), "\"abc\"");
        assert_eq!(printable(Some(&[0x00, 0x41])), "0x0041");
    }
}
