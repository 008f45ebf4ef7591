//! Recording a payment's outcome, as `payment.completed` reports it: the
//! payment summary and the order's final status in one transaction.

use chrono::{DateTime, Utc};
use foodorder_contract::states::PaymentState;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// A payment's outcome as `payment.completed` reported it.
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
/// outcome's final status, in one transaction that also wakes the order's
/// WatchOrder streams (`NOTIFY`, delivered at commit). The summary's primary
/// key makes a replay change nothing.
pub async fn record_payment(
    pool: &PgPool,
    order_id: Uuid,
    outcome: &PaymentOutcome,
    notify_channel: &str,
) -> Result<Recorded, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let known: Option<(Decimal,)> =
        sqlx::query_as("SELECT total_amount FROM orders.orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((total,)) = known else {
        tx.rollback().await?;
        return Ok(Recorded::UnknownOrder);
    };
    if outcome.status == PaymentState::Succeeded && outcome.amount != total {
        tx.rollback().await?;
        return Ok(Recorded::WrongAmount { total });
    }
    let inserted = sqlx::query(
        "INSERT INTO orders.order_payments (order_id, payment_id, status, amount, attempt_count, \
         error_message, processing_time_ms, completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(outcome.payment_id)
    .bind(outcome.status)
    .bind(outcome.amount)
    .bind(outcome.attempt_count)
    .bind(&outcome.error_message)
    .bind(outcome.processing_time_ms)
    .bind(outcome.completed_at)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Recorded::AlreadyRecorded);
    }
    sqlx::query(
        "UPDATE orders.orders SET status = $2, updated_at = now() WHERE id = $1 AND status <> $2",
    )
    .bind(order_id)
    .bind(outcome.status.order_state())
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(notify_channel)
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Recorded::Applied)
}
