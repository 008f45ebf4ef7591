//! The order API's consumer of `order.unprocessable`: the payment service's
//! word that it got only unprocessable `order.placed` records for an order id
//! and will never pay it. The order API owns orders, so it decides what that
//! means: an order it has that still awaits its payment is FAILED (a payment
//! summary with no charge and the reason, the watchers woken), exactly as a
//! failed payment would; an id that is no order, or an order already paid or
//! failed, changes nothing and goes nowhere else: a hostile record keyed by a
//! made-up id ends here, with a count and a log line. Records that do not
//! decode are dead-lettered to `order.dlq` like any other.

use chrono::{DateTime, Utc};
use foodorder_contract::events;
use foodorder_contract::states::PaymentState;
use foodorder_runtime::consumer::{HandleError, Handled, MessageHandler, ReceivedMessage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::repository::{self, PaymentOutcome, Recorded};
use crate::watch::ORDER_STATUS_CHANNEL;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// What became of the orders declared unprocessable, by `outcome`.
const OUTCOMES: [&str; 3] = ["failed", "already_final", "unknown_order"];

/// The `order.unprocessable` handler.
pub struct UnprocessableHandler {
    pool: PgPool,
    outcomes: Family<OutcomeLabel, Counter>,
}

impl UnprocessableHandler {
    /// A handler recording in `pool`; registers
    /// `foodorder_orders_unprocessable_total{outcome}` in `metrics`.
    pub fn new(pool: PgPool, metrics: &foodorder_runtime::metrics::Metrics) -> Self {
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        metrics.register(
            "foodorder_orders_unprocessable",
            "Order ids the payment service declared unprocessable, by what the order API made of them \
             (failed: an order awaiting payment, now FAILED; already_final: paid or failed before; \
             unknown_order: no such order, nothing done)",
            outcomes.clone(),
        );
        for outcome in OUTCOMES {
            drop(outcomes.get_or_create(&OutcomeLabel { outcome }));
        }
        Self { pool, outcomes }
    }

    fn count(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// The payment summary an unprocessable order gets: failed, nothing charged,
/// no gateway call, the reason the payment service gave.
fn failed_summary(order_id: Uuid, reason: &str, declared_at: DateTime<Utc>) -> PaymentOutcome {
    PaymentOutcome {
        // No payment attempt exists: the order's id stands for its one payment.
        payment_id: order_id,
        status: PaymentState::Failed,
        amount: Decimal::ZERO,
        attempt_count: 0,
        error_message: Some(format!(
            "Payment could not be processed: the order's event could not be read ({reason})"
        )),
        processing_time_ms: 0,
        completed_at: declared_at,
    }
}

impl MessageHandler for UnprocessableHandler {
    async fn handle(&self, message: &ReceivedMessage) -> Result<Handled, HandleError> {
        let (order_id, event) =
            events::decode_order_unprocessable(message.key.as_deref(), message.payload.as_deref())
                .map_err(HandleError::Fatal)?;
        let declared_at = events::occurred_at(event.metadata.as_ref());
        // The reason was bounded by its decoding; control characters are
        // replaced again, as it is stored and served.
        let reason = events::bounded_reason(&event.reason);
        let summary = failed_summary(order_id, &reason, declared_at);
        match repository::record_payment(&self.pool, order_id, &summary, ORDER_STATUS_CHANNEL)
            .await?
        {
            Recorded::Applied => {
                self.count("failed");
                tracing::warn!(%order_id, reason, "order failed: the payment service could not process its event");
                Ok(Handled::Processed)
            }
            Recorded::AlreadyRecorded | Recorded::WrongAmount { .. } => {
                self.count("already_final");
                tracing::info!(%order_id, "order declared unprocessable is already paid or failed; nothing to do");
                Ok(Handled::Duplicate)
            }
            Recorded::UnknownOrder => {
                self.count("unknown_order");
                tracing::warn!(
                    %order_id,
                    reason,
                    "an order id the payment service declared unprocessable is no order here; nothing to do"
                );
                Ok(Handled::Processed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprocessable_order_fails_with_nothing_charged_and_the_reason() {
        let order_id = Uuid::new_v4();
        let summary = failed_summary(order_id, "value is not a valid OrderPlaced", Utc::now());
        assert_eq!(summary.status, PaymentState::Failed);
        assert_eq!(summary.amount, Decimal::ZERO);
        assert_eq!(summary.attempt_count, 0);
        assert_eq!(summary.payment_id, order_id);
        assert!(
            summary
                .error_message
                .unwrap()
                .contains("value is not a valid OrderPlaced")
        );
    }
}
