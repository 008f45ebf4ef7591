//! The invariants, checked after a bounded wait for quiescence: nothing lost,
//! nothing doubled, nothing stuck, every hostile record in its dead-letter
//! topic as it was sent. Renders one row per invariant with its count, as
//! text, for the `check` subcommand and for the table `run` prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use foodorder_contract::states::{OrderState, PaymentState};
use payment_service::gateway::Decision;
use sqlx::PgPool;

/// Options of the `check` subcommand.
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

/// What the checker needs to know about the run under test.
pub struct Inputs {
    /// The platform's database.
    pub database: String,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic-name prefix of the platform under test.
    pub prefix: String,
    /// The payment service's consumer group.
    pub payment_group: String,
    /// The notification service's consumer group.
    pub notification_group: String,
    /// The order API's consumer group (payment.completed).
    pub order_group: String,
    /// The ids the careful client saw acknowledged.
    pub acked: BTreeSet<String>,
    /// What the injector sent (see [`crate::inject::Sent`]), if it ran.
    pub hostile: Option<Vec<serde_json::Value>>,
    /// Longest wait for quiescence.
    pub wait: Duration,
}

/// The verdict: the rendered table (with details of any violation) and whether it is clean.
pub struct Report {
    /// The invariant rows, the time to quiescence and the details of violations.
    pub text: String,
    /// No invariant was violated.
    pub clean: bool,
}

struct Row {
    invariant: &'static str,
    checked: usize,
    violations: usize,
}

/// The `check` subcommand: reads the files the other subcommands wrote,
/// prints the report and returns whether it is clean.
pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let acked = std::fs::read_to_string(&args.acked)
        .with_context(|| format!("failed to read {}", args.acked.display()))?
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    let hostile = match &args.hostile {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect(),
        ),
        None => None,
    };
    let report = verify(Inputs {
        database: args.database,
        bootstrap: args.bootstrap,
        prefix: args.prefix,
        payment_group: args.payment_group,
        notification_group: args.notification_group,
        order_group: args.order_group,
        acked,
        hostile,
        wait: Duration::from_secs(args.wait),
    })
    .await?;
    print!("{}", report.text);
    Ok(report.clean)
}

/// Waits (up to `inputs.wait`) for quiescence, then checks every invariant.
pub async fn verify(inputs: Inputs) -> anyhow::Result<Report> {
    let args = &inputs;
    let pool = PgPool::connect(&args.database)
        .await
        .context("failed to connect to the database")?;
    let topics = crate::topics::Topics::with_prefix(&args.prefix);
    let acked = &args.acked;
    let mut out = String::new();

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
        let lags = group_lags(args, &topics).await?;
        let lagging = lags.values().any(|lag| *lag > 0);
        if (unfinished == 0 && backlog == 0 && !lagging) || started.elapsed() >= args.wait {
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
    // A hostile record keyed by an id that is no order stops at the payment
    // service: no payment (and so no payment.completed) is ever made for it.
    let (paid_strangers, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT EXISTS \
         (SELECT 1 FROM orders.orders o WHERE o.id = p.order_id)), count(*) \
         FROM payments.payment_attempts p",
    )
    .fetch_one(&pool)
    .await?;
    rows.push(Row {
        invariant: "no payment for an id that is no order",
        checked: usize::try_from(attempts).unwrap_or(0),
        violations: usize::try_from(paid_strangers).unwrap_or(0),
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
        let (checked, violations) =
            crate::dlq::hostile_in_dlq(&args.bootstrap, hostile, &mut out).await?;
        rows.push(Row {
            invariant: "hostile records in the right DLQ, byte for byte",
            checked,
            violations,
        });
    }

    writeln!(
        out,
        "{:<52} {:>8} {:>10}",
        "invariant", "checked", "violations"
    )?;
    for row in &rows {
        writeln!(
            out,
            "{:<52} {:>8} {:>10}",
            row.invariant, row.checked, row.violations
        )?;
    }
    writeln!(
        out,
        "{:<52} {:>8.1} s",
        "time to quiescence",
        quiet_after.as_secs_f64()
    )?;
    if !missing.is_empty() {
        writeln!(out, "missing orders: {missing:?}")?;
    }
    for row in orders
        .iter()
        .filter(|row| !row.1.is_terminal() || row.2 != 1 || row.3 != 1)
    {
        writeln!(
            out,
            "order {} status={} attempts={} notifications={} charges={}",
            row.0, row.1, row.2, row.3, row.4
        )?;
    }
    for ((group, partition), lag) in lags.iter().filter(|(_, lag)| **lag > 0) {
        writeln!(out, "lag: group {group} partition {partition}: {lag}")?;
    }
    Ok(Report {
        text: out,
        clean: rows.iter().all(|row| row.violations == 0),
    })
}

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

/// Lag per (group, partition): high watermark minus the committed offset.
async fn group_lags(
    args: &Inputs,
    topics: &crate::topics::Topics,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let plan = [
        (args.payment_group.clone(), topics.order_placed.clone()),
        (
            args.notification_group.clone(),
            topics.payment_completed.clone(),
        ),
        (args.order_group.clone(), topics.payment_completed.clone()),
        (
            format!("{}.unprocessable", args.order_group),
            topics.order_unprocessable.clone(),
        ),
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
