//! Handling one `order.placed` record: decode, skip what is already paid,
//! pay, and record the outcome — payment attempt, order status and the
//! `PaymentCompleted` outbox row — in one transaction. Replays and duplicates
//! change nothing; the gateway is not called for a finished order.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use foodorder_common::consumer::{HandleError, Handled, MessageHandler, ReceivedMessage};
use foodorder_common::events;
use foodorder_common::money::format_money;
use foodorder_common::outbox::{self, OutboxMessage};
use foodorder_common::status::{OrderState, PaymentState};
use foodorder_common::telemetry;
use foodorder_proto::v1::{OrderStatus, PaymentCompleted};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::gateway::{ChargeRequest, PaymentGateway};
use crate::processor::{PaymentProcessor, PaymentResult};

/// Name of this service in event metadata.
pub const PRODUCER: &str = "payment-service";

#[derive(sqlx::FromRow)]
struct OrderRow {
    status: OrderState,
    total_amount: Decimal,
    customer_name: String,
    customer_email: String,
    paid: bool,
}

/// The `order.placed` handler.
pub struct PaymentHandler<G> {
    pool: PgPool,
    processor: Arc<PaymentProcessor<G>>,
    payment_completed_topic: String,
    crash_after_charge: bool,
}

impl<G: PaymentGateway> PaymentHandler<G> {
    /// A handler writing to `pool` and publishing to `payment_completed_topic`.
    pub fn new(
        pool: PgPool,
        processor: Arc<PaymentProcessor<G>>,
        payment_completed_topic: String,
        crash_after_charge: bool,
    ) -> Self {
        Self {
            pool,
            processor,
            payment_completed_topic,
            crash_after_charge,
        }
    }

    async fn load_order(&self, order_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT o.status, o.total_amount, o.customer_name, o.customer_email, \
             EXISTS (SELECT 1 FROM payment_attempts p WHERE p.order_id = o.id) AS paid \
             FROM orders o WHERE o.id = $1",
        )
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Writes attempt + status + event in one transaction; false if another
    /// delivery already recorded this order's outcome.
    #[tracing::instrument(
        name = "payment.record",
        skip_all,
        fields(
            otel.name = "payment.record transaction",
            db.system = "postgresql",
            db.operation.name = "transaction",
            order_id = %order_id,
            success = result.success,
        )
    )]
    async fn record_outcome(
        &self,
        order_id: Uuid,
        order: &OrderRow,
        result: &PaymentResult,
        correlation_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let final_status = if result.success {
            OrderStatus::Completed
        } else {
            OrderStatus::Failed
        };
        let processing_time_ms = result.processing_time.as_millis() as i64;
        let mut tx = self.pool.begin().await?;
        let inserted: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO payment_attempts (id, order_id, status, amount, attempt_count, error_message, processing_time_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(order_id)
        .bind(PaymentState::of(result.success))
        .bind(order.total_amount)
        .bind(result.attempt_count)
        .bind(&result.error_message)
        .bind(processing_time_ms)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1")
            .bind(order_id)
            .bind(PaymentState::of(result.success).order_state())
            .execute(&mut *tx)
            .await?;
        let event = PaymentCompleted {
            metadata: Some(events::metadata(correlation_id, PRODUCER, Utc::now())),
            order_id: order_id.to_string(),
            success: result.success,
            final_status: final_status as i32,
            attempt_count: result.attempt_count,
            processing_time_ms,
            error_message: result.error_message.clone().unwrap_or_default(),
            amount: format_money(order.total_amount),
            customer_email: order.customer_email.clone(),
            customer_name: order.customer_name.clone(),
        };
        let message = OutboxMessage {
            topic: self.payment_completed_topic.clone(),
            key: order_id.to_string(),
            payload: event.encode_to_vec(),
            headers: events::standard_headers::<PaymentCompleted>(
                correlation_id,
                &telemetry::inject_span(&tracing::Span::current()),
            ),
        };
        outbox::enqueue(&mut tx, &message).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Before dead-lettering: an order whose id is known gets its outcome (so
    /// no one waits on it forever). It is voided at the gateway first, so that
    /// a charge in flight on another instance cannot land afterwards; a charge
    /// that landed before the void stands and the order is COMPLETED. A
    /// database or gateway error is returned, so the record is retried rather
    /// than dead-lettered with the order left PROCESSING.
    async fn settle_known_order(
        &self,
        key: Option<&str>,
        reason: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<(), HandleError> {
        let Some(order_id) = key.and_then(|key| Uuid::parse_str(key).ok()) else {
            return Ok(());
        };
        let Some(order) = self.load_order(order_id).await? else {
            return Ok(());
        };
        if order.paid {
            return Ok(());
        }
        let request = ChargeRequest {
            idempotency_key: order_id.to_string(),
            amount: order.total_amount,
        };
        let outcome = self
            .processor
            .abandon(
                &request,
                &format!("Payment could not be processed: {reason}"),
            )
            .await
            .map_err(|error| HandleError::Retryable(anyhow::Error::new(error)))?;
        let correlation_id = headers
            .get(events::HEADER_REQUEST_ID)
            .cloned()
            .unwrap_or_default();
        if self
            .record_outcome(order_id, &order, &outcome, &correlation_id)
            .await?
        {
            self.processor.metrics().recorded(&outcome);
            tracing::warn!(%order_id, reason, success = outcome.success, "order settled before dead-lettering its message");
        }
        Ok(())
    }
}

impl<G: PaymentGateway> MessageHandler for PaymentHandler<G> {
    async fn handle(&self, message: &ReceivedMessage) -> Result<Handled, HandleError> {
        let headers = message.headers();
        let (order_id, event) =
            match events::decode_order_placed(message.key.as_deref(), message.payload.as_deref()) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    self.settle_known_order(message.key_str(), &reason, &headers)
                        .await?;
                    return Err(HandleError::Fatal(reason));
                }
            };
        let Some(order) = self.load_order(order_id).await? else {
            return Err(HandleError::Fatal(format!(
                "order {order_id} does not exist"
            )));
        };
        if order.paid || order.status.is_terminal() {
            tracing::info!(%order_id, "order already paid, skipping duplicate delivery");
            return Ok(Handled::Duplicate);
        }
        let correlation_id = event
            .metadata
            .as_ref()
            .map(|metadata| metadata.correlation_id.clone())
            .unwrap_or_default();
        let request = ChargeRequest {
            idempotency_key: order_id.to_string(),
            amount: order.total_amount,
        };
        let result = self
            .processor
            .pay(&request)
            .await
            .map_err(|error| HandleError::Retryable(anyhow::Error::new(error)))?;
        if self.crash_after_charge {
            tracing::error!(%order_id, "fault injection: aborting after the gateway call, before the commit");
            std::process::abort();
        }
        let recorded = self
            .record_outcome(order_id, &order, &result, &correlation_id)
            .await?;
        if recorded {
            self.processor.metrics().recorded(&result);
            tracing::info!(
                %order_id,
                request_id = correlation_id,
                success = result.success,
                attempt_count = result.attempt_count,
                processing_time_ms = result.processing_time.as_millis() as u64,
                error_message = result.error_message.as_deref().unwrap_or(""),
                "payment recorded"
            );
            Ok(Handled::Processed)
        } else {
            // Another delivery recorded this order while we paid (the gateway call was deduplicated).
            Ok(Handled::Duplicate)
        }
    }
}
