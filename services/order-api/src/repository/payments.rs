//! Recording a payment's outcome, as `payment.completed` reports it: the
//! payment summary and the order's final status in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use foodorder_contract::states::PaymentState;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// A payment's outcome as `payment.completed` reported it.
#[derive(Clone, Debug)]
pub struct PaymentOutcome {
    /// The payment attempt's id.
    pub payment_id: Uuid,
    /// Succeeded or failed.
    pub status: PaymentState,
    /// Amount charged or attempted.
    pub amount: Decimal,
    /// Gateway calls made.
    pub attempt_count: i32,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Time spent on the payment.
    pub processing_time_ms: i64,
    /// When the payment service recorded it.
    pub completed_at: DateTime<Utc>,
}

/// What recording a payment outcome did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The order moved to its final status.
    Applied,
    /// The order's outcome was already recorded (a replay or a duplicate).
    AlreadyRecorded,
    /// No such order.
    UnknownOrder,
    /// A successful payment of another amount than the order's total: not applied.
    WrongAmount {
        /// The order's total.
        total: Decimal,
    },
}

/// Stores the payment summary of `order_id` and moves the order to the
/// outcome's final status (see [`record_payments`]).
pub async fn record_payment(
    pool: &PgPool,
    order_id: Uuid,
    outcome: &PaymentOutcome,
    notify_channel: &str,
) -> Result<Recorded, sqlx::Error> {
    let mut recorded =
        record_payments(pool, &[(order_id, outcome.clone())], notify_channel).await?;
    Ok(recorded.remove(0))
}

/// Stores the payment summaries of many orders and moves each order to its
/// outcome's final status, in one transaction that also wakes the orders'
/// WatchOrder streams (`NOTIFY`, delivered at commit). Returns what happened
/// to each, in order. The summary's primary key makes a replay change
/// nothing; of one order's outcomes in the same call, the first applicable
/// one is recorded. Rows are locked in id order, so concurrent calls never
/// wait on each other crosswise.
pub async fn record_payments(
    pool: &PgPool,
    outcomes: &[(Uuid, PaymentOutcome)],
    notify_channel: &str,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let ids: Vec<Uuid> = outcomes.iter().map(|(id, _)| *id).collect();
    let mut tx = pool.begin().await?;
    let totals: HashMap<Uuid, Decimal> = sqlx::query_as::<_, (Uuid, Decimal)>(
        "SELECT id, total_amount FROM orders.orders WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut results = Vec::with_capacity(outcomes.len());
    let mut candidates: Vec<usize> = Vec::new();
    let mut claimed = HashSet::new();
    for (position, (order_id, outcome)) in outcomes.iter().enumerate() {
        results.push(match totals.get(order_id) {
            None => Recorded::UnknownOrder,
            Some(total)
                if outcome.status == PaymentState::Succeeded && outcome.amount != *total =>
            {
                Recorded::WrongAmount { total: *total }
            }
            Some(_) if !claimed.insert(*order_id) => Recorded::AlreadyRecorded,
            Some(_) => {
                candidates.push(position);
                // Until the insert says otherwise.
                Recorded::AlreadyRecorded
            }
        });
    }
    if candidates.is_empty() {
        tx.rollback().await?;
        return Ok(results);
    }
    let pick = |position: &usize| &outcomes[*position];
    let inserted: HashSet<Uuid> = sqlx::query_as::<_, (Uuid,)>(
        "INSERT INTO orders.order_payments (order_id, payment_id, status, amount, attempt_count, \
         error_message, processing_time_ms, completed_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::int4[], \
         $6::text[], $7::int8[], $8::timestamptz[]) ORDER BY 1 \
         ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
    )
    .bind(candidates.iter().map(|p| pick(p).0).collect::<Vec<_>>())
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.payment_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.amount)
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.attempt_count)
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.error_message.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.processing_time_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|p| pick(p).1.completed_at)
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id,)| id)
    .collect();
    if inserted.is_empty() {
        tx.rollback().await?;
        return Ok(results);
    }
    let applied: Vec<usize> = candidates
        .into_iter()
        .filter(|position| inserted.contains(&outcomes[*position].0))
        .collect();
    let applied_ids: Vec<Uuid> = applied.iter().map(|p| pick(p).0).collect();
    sqlx::query(
        "UPDATE orders.orders o SET status = v.status, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::text[]) AS v (id, status) \
         WHERE o.id = v.id AND o.status <> v.status",
    )
    .bind(&applied_ids)
    .bind(
        applied
            .iter()
            .map(|p| pick(p).1.status.order_state().as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, id::text) FROM unnest($2::uuid[]) AS id")
        .bind(notify_channel)
        .bind(&applied_ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for position in applied {
        results[position] = Recorded::Applied;
    }
    Ok(results)
}
