//! The order API's consumer of `payment.completed`: it records each payment's
//! outcome in the order API's own schema (the payment summary that GetOrder
//! and WatchOrder serve) and moves the order to COMPLETED or FAILED. It runs
//! on the shared consumer framework (ordered by key, committed only past
//! finished records, poison to `order.dlq`), so replays and duplicates change
//! nothing; a record about an order this API never stored, or a successful
//! payment of another amount than the order's total, is dead-lettered.

use std::sync::Arc;

use foodorder_contract::events;
use foodorder_contract::states::PaymentState;
use foodorder_runtime::batch::{BatchMetrics, BatchSettings, BatchWork, Batcher};
use foodorder_runtime::consumer::{HandleError, Handled, MessageHandler, ReceivedMessage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::PgPool;
use uuid::Uuid;

use crate::repository::{self, PaymentOutcome, Recorded};
use crate::watch::ORDER_STATUS_CHANNEL;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The `payment.completed` handler. Outcomes of the records in flight are
/// recorded together (see [`foodorder_runtime::batch`]).
pub struct PaymentOutcomeHandler {
    outcomes: Batcher<RecordOutcomes>,
    finished: Family<StatusLabel, Counter>,
}

/// Records outcomes, many orders in one transaction ([`repository::record_payments`]).
struct RecordOutcomes {
    pool: PgPool,
}

impl BatchWork for RecordOutcomes {
    type Job = (Uuid, PaymentOutcome);
    type Output = Recorded;
    type Error = sqlx::Error;

    async fn run(&self, jobs: &[(Uuid, PaymentOutcome)]) -> Result<Vec<Recorded>, sqlx::Error> {
        repository::record_payments(&self.pool, jobs, ORDER_STATUS_CHANNEL).await
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

impl PaymentOutcomeHandler {
    /// A handler recording in `pool`; registers
    /// `foodorder_orders_finished_total{status}` in `metrics` and reports its
    /// batch sizes to `batches`. Needs a Tokio runtime.
    pub fn new(
        pool: PgPool,
        metrics: &foodorder_runtime::metrics::Metrics,
        batches: &BatchMetrics,
    ) -> Self {
        let finished = Family::<StatusLabel, Counter>::default();
        metrics.register(
            "foodorder_orders_finished",
            "Orders moved to a final status from payment.completed, by status (completed, failed)",
            finished.clone(),
        );
        for status in ["completed", "failed"] {
            drop(finished.get_or_create(&StatusLabel { status }));
        }
        Self {
            outcomes: Batcher::new(
                "order_payment_outcomes",
                Arc::new(RecordOutcomes { pool }),
                BatchSettings::default(),
                batches,
            ),
            finished,
        }
    }
}

/// Decodes and checks a `payment.completed` record into the outcome to record.
fn decode(message: &ReceivedMessage) -> Result<(Uuid, PaymentOutcome), String> {
    let (order_id, event) = events::decode_payment_completed(message.payload.as_deref())?;
    let status = PaymentState::of(event.success);
    let completed_at = events::occurred_at(event.metadata.as_ref());
    // Events from before payment_id existed: the order's id stands for its one
    // payment, the same in every copy.
    let payment_id = Uuid::parse_str(&event.payment_id).unwrap_or(order_id);
    let outcome = PaymentOutcome {
        payment_id,
        status,
        amount: events::amount(&event.amount)?,
        attempt_count: event.attempt_count,
        error_message: (!event.success && !event.error_message.is_empty())
            .then_some(event.error_message),
        processing_time_ms: event.processing_time_ms,
        completed_at,
    };
    Ok((order_id, outcome))
}

impl MessageHandler for PaymentOutcomeHandler {
    async fn handle(&self, message: &ReceivedMessage) -> Result<Handled, HandleError> {
        let (order_id, outcome) = decode(message).map_err(HandleError::Fatal)?;
        if message.key_str() != Some(order_id.to_string().as_str()) {
            return Err(HandleError::Fatal(
                "record key does not match the order id".to_owned(),
            ));
        }
        let status = outcome.status;
        let amount = outcome.amount;
        match self.outcomes.submit((order_id, outcome)).await? {
            Recorded::Applied => {
                let status = match status {
                    PaymentState::Succeeded => "completed",
                    PaymentState::Failed => "failed",
                };
                self.finished.get_or_create(&StatusLabel { status }).inc();
                tracing::info!(%order_id, status, "payment outcome recorded");
                Ok(Handled::Processed)
            }
            Recorded::AlreadyRecorded => {
                tracing::info!(%order_id, "payment outcome already recorded, skipping duplicate delivery");
                Ok(Handled::Duplicate)
            }
            Recorded::UnknownOrder => Err(HandleError::Fatal(format!(
                "order {order_id} does not exist"
            ))),
            Recorded::WrongAmount { total } => Err(HandleError::Fatal(format!(
                "a payment of {} does not pay order {order_id}, whose total is {}",
                foodorder_contract::money::format_money(amount),
                foodorder_contract::money::format_money(total)
            ))),
        }
    }
}
