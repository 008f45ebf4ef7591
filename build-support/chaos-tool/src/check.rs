//! The invariants, checked after a bounded wait for quiescence: nothing lost,
//! nothing doubled, nothing stuck, every hostile record in its dead-letter
//! topic as it was sent. Prints one row per invariant with its count.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use foodorder_contract::states::{OrderState, PaymentState};
use payment_service::gateway::Decision;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The platform's database.
    #[arg(long)]
    database: String,
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap: String,
    /// Topic-name prefix of the platform under test.
    #[arg(long, default_value = "")]
    prefix: String,
    /// The payment service's consumer group.
    #[arg(long)]
    payment_group: String,
    /// The notification service's consumer group.
    #[arg(long)]
    notification_group: String,
    /// The order API's consumer group (payment.completed).
    #[arg(long)]
    order_group: String,
    /// The ids the careful client saw acknowledged, one per line.
    #[arg(long)]
    acked: std::path::PathBuf,
    /// What the injector sent (JSON lines).
    #[arg(long)]
    hostile: Option<std::path::PathBuf>,
    /// Longest wait for quiescence, in seconds.
    #[arg(long, default_value_t = 300)]
    wait: u64,
}

struct Row {
    invariant: &'static str,
    checked: usize,
    violations: usize,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let pool = PgPool::connect(&args.database)
        .await
        .context("failed to connect to the database")?;
    let topics = crate::topics::Topics::with_prefix(&args.prefix);
    let acked: BTreeSet<String> = std::fs::read_to_string(&args.acked)?
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();

    // Quiescence: every acknowledged order terminal and notified, the outbox
    // drained, both groups with no lag.
    let started = Instant::now();
    let lags = loop {
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders.orders o WHERE o.id::text = ANY($1) AND (o.status NOT IN ($2, $3) \
             OR NOT EXISTS (SELECT 1 FROM notifications.notifications n WHERE n.order_id = o.id))",
        )
        .bind(acked.iter().cloned().collect::<Vec<_>>())
        .bind(OrderState::Completed)
        .bind(OrderState::Failed)
        .fetch_one(&pool)
        .await?;
        let backlog: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL AND parked_at IS NULL) + (SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL AND parked_at IS NULL)",
        )
        .fetch_one(&pool)
        .await?;
        let lags = group_lags(&args, &topics).await?;
        let lagging = lags.values().any(|lag| *lag > 0);
        if (unfinished == 0 && backlog == 0 && !lagging)
            || started.elapsed() >= Duration::from_secs(args.wait)
        {
            break lags;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let quiet_after = started.elapsed();

    let mut rows = Vec::new();
    let orders: Vec<OrderRow> = sqlx::query_as(
        "SELECT o.id::text, o.status, \
         (SELECT count(*) FROM payments.payment_attempts p WHERE p.order_id = o.id), \
         (SELECT count(*) FROM notifications.notifications n WHERE n.order_id = o.id), \
         (SELECT count(*) FROM payments.gateway_ledger g WHERE g.idempotency_key = o.id::text AND g.outcome = $1), \
         (SELECT p.status FROM payments.payment_attempts p WHERE p.order_id = o.id LIMIT 1), \
         (SELECT s.status FROM orders.order_payments s WHERE s.order_id = o.id) \
         FROM orders.orders o",
    )
    .bind(Decision::Approved)
    .fetch_all(&pool)
    .await?;
    let by_id: BTreeMap<&str, &OrderRow> = orders.iter().map(|row| (row.0.as_str(), row)).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    let stuck = acked
        .iter()
        .filter_map(|id| by_id.get(id.as_str()))
        .filter(|row| !row.1.is_terminal())
        .count();
    rows.push(Row {
        invariant: "acknowledged orders exist",
        checked: acked.len(),
        violations: missing.len(),
    });
    rows.push(Row {
        invariant: "acknowledged orders are terminal",
        checked: acked.len(),
        violations: stuck,
    });
    let wrong_charges = orders
        .iter()
        .filter(|row| match row.1 {
            OrderState::Completed => row.4 != 1,
            OrderState::Failed => row.4 != 0,
            OrderState::Pending | OrderState::Processing => row.4 > 1,
        })
        .count();
    rows.push(Row {
        invariant: "charges: 1 if COMPLETED, 0 if FAILED, never 2",
        checked: orders.len(),
        violations: wrong_charges,
    });
    let terminal_orders: Vec<_> = orders.iter().filter(|row| row.1.is_terminal()).collect();
    rows.push(Row {
        invariant: "terminal orders: one payment attempt",
        checked: terminal_orders.len(),
        violations: terminal_orders.iter().filter(|row| row.2 != 1).count(),
    });
    rows.push(Row {
        invariant: "terminal orders: one notification",
        checked: terminal_orders.len(),
        violations: terminal_orders.iter().filter(|row| row.3 != 1).count(),
    });
    rows.push(Row {
        invariant: "terminal orders: status = summary = attempt",
        checked: terminal_orders.len(),
        violations: terminal_orders
            .iter()
            .filter(|row| {
                row.5.is_none()
                    || row.5 != row.6
                    || row.5.map(PaymentState::order_state) != Some(row.1)
            })
            .count(),
    });
    let backlog: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL AND parked_at IS NULL) + (SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL AND parked_at IS NULL)",
    )
    .fetch_one(&pool)
    .await?;
    let parked: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM orders.outbox WHERE parked_at IS NOT NULL) + (SELECT count(*) FROM payments.outbox WHERE parked_at IS NOT NULL)")
        .fetch_one(&pool)
        .await?;
    rows.push(Row {
        invariant: "outbox drained (none parked)",
        checked: 1,
        violations: usize::from(backlog > 0 || parked > 0),
    });
    rows.push(Row {
        invariant: "consumer lag 0 (partitions)",
        checked: lags.len(),
        violations: lags.values().filter(|lag| **lag > 0).count(),
    });
    if let Some(hostile) = &args.hostile {
        let (checked, violations) = hostile_in_dlq(&args.bootstrap, hostile).await?;
        rows.push(Row {
            invariant: "hostile records in the right DLQ, byte for byte",
            checked,
            violations,
        });
    }

    println!("{:<52} {:>8} {:>10}", "invariant", "checked", "violations");
    for row in &rows {
        println!(
            "{:<52} {:>8} {:>10}",
            row.invariant, row.checked, row.violations
        );
    }
    println!(
        "{:<52} {:>8.1} s",
        "time to quiescence",
        quiet_after.as_secs_f64()
    );
    if !missing.is_empty() {
        println!("missing orders: {missing:?}");
    }
    for row in orders
        .iter()
        .filter(|row| !row.1.is_terminal() || row.2 != 1 || row.3 != 1)
    {
        println!(
            "order {} status={} attempts={} notifications={} charges={}",
            row.0, row.1, row.2, row.3, row.4
        );
    }
    for ((group, partition), lag) in lags.iter().filter(|(_, lag)| **lag > 0) {
        println!("lag: group {group} partition {partition}: {lag}");
    }
    Ok(rows.iter().all(|row| row.violations == 0))
}

/// Lag per (group, partition): high watermark minus the committed offset.
/// An order as the checks see it: id, status, payment attempts,
/// notifications, approved charges, the attempt's status, the order API's
/// payment summary status.
type OrderRow = (
    String,
    OrderState,
    i64,
    i64,
    i64,
    Option<PaymentState>,
    Option<PaymentState>,
);

async fn group_lags(
    args: &CheckArgs,
    topics: &crate::topics::Topics,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let plan = [
        (args.payment_group.clone(), topics.order_placed.clone()),
        (
            args.notification_group.clone(),
            topics.payment_completed.clone(),
        ),
        (args.order_group.clone(), topics.payment_completed.clone()),
    ];
    let bootstrap = args.bootstrap.clone();
    let lags = tokio::task::spawn_blocking(move || {
        let mut lags = BTreeMap::new();
        for (group, topic) in plan {
            for (partition, (committed, high)) in
                foodorder_testkit::group_offsets(&bootstrap, &group, &topic)
            {
                lags.insert((group.clone(), partition), high - committed.max(0));
            }
        }
        lags
    })
    .await?;
    Ok(lags)
}

/// Every injected record is on its dead-letter topic with its key, value and
/// headers as sent (followed by the diagnostic headers).
async fn hostile_in_dlq(
    bootstrap: &str,
    sent_file: &std::path::Path,
) -> anyhow::Result<(usize, usize)> {
    let sent: Vec<serde_json::Value> = std::fs::read_to_string(sent_file)?
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
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
    for record in &sent {
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
            println!(
                "not in its DLQ as sent: {} on {}",
                record["kind"], record["topic"]
            );
            println!("  sent headers: {}", record["headers"]);
            for (_, copy) in found
                .iter()
                .filter(|(_, copy)| copy["key"] == record["key"])
            {
                println!(
                    "  copy with that key: same value {}, headers {}",
                    copy["value_sha256"] == record["value_sha256"],
                    copy["headers"]
                );
            }
        }
    }
    Ok((sent.len(), violations))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn read_all(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("chaos-checker-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|topic| topic.partitions().len())
        .unwrap_or(0) as i32;
    let mut ends = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
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
