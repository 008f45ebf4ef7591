//! Handling one `payment.completed` record, which carries all a notification
//! needs (recipient, name, amount, outcome): decode, then — in one transaction —
//! claim the order's notification slot (`notifications.order_id` is unique),
//! send, and commit. A duplicate or replayed record finds the slot taken and
//! sends nothing. If sending fails the transaction rolls back and the message
//! is retried; a crash after sending but before the commit can repeat a send,
//! which is the best any sender without its own idempotency can do.

use std::sync::{Mutex, PoisonError};

use foodorder_contract::events;
use foodorder_runtime::consumer::{HandleError, Handled, MessageHandler, ReceivedMessage};
use foodorder_runtime::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::Incidents;
use crate::notifier::{Notification, NotificationKind, Notifier};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The `payment.completed` handler.
pub struct NotificationHandler<N> {
    pool: PgPool,
    notifier: N,
    sent: Family<KindLabel, Counter>,
    incidents: Incidents,
    /// What the leak incident keeps.
    leaked: Mutex<Vec<Vec<u8>>>,
}

impl<N: Notifier> NotificationHandler<N> {
    /// A handler recording in `pool` and sending through `notifier`.
    pub fn new(pool: PgPool, notifier: N) -> Self {
        Self {
            pool,
            notifier,
            sent: Family::default(),
            incidents: Incidents::default(),
            leaked: Mutex::new(Vec::new()),
        }
    }

    /// Registers `foodorder_notifications_sent_total{kind}` in `metrics`.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        metrics.register(
            "foodorder_notifications_sent",
            "Notifications sent, by kind (order_confirmed, payment_failed)",
            self.sent.clone(),
        );
        for kind in ["order_confirmed", "payment_failed"] {
            drop(self.sent.get_or_create(&KindLabel { kind }));
        }
        self
    }

    /// Switches on the planned incidents in `incidents`.
    pub fn with_incidents(mut self, incidents: Incidents) -> Self {
        if incidents.send_delay > std::time::Duration::ZERO {
            tracing::warn!(
                delay_ms = incidents.send_delay.as_millis() as u64,
                "incident on: every notification send is delayed"
            );
        }
        if incidents.leak_bytes_per_message > 0 {
            tracing::warn!(
                bytes_per_message = incidents.leak_bytes_per_message,
                "incident on: memory leaks on every handled record"
            );
        }
        self.incidents = incidents;
        self
    }

    /// The leak incident: keeps `leak_bytes_per_message` bytes for good (written, so they are resident).
    fn leak(&self) {
        if self.incidents.leak_bytes_per_message > 0 {
            let kept = vec![0xa5_u8; self.incidents.leak_bytes_per_message];
            self.leaked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(kept);
        }
    }
}

/// Decodes and checks a PaymentCompleted record into the notification to send.
fn decode(message: &ReceivedMessage) -> Result<(Uuid, Notification), String> {
    let (order_id, event) = events::decode_payment_completed(message.payload.as_deref())?;
    if event.customer_email.is_empty() {
        return Err("PaymentCompleted without customer email: no one to notify".to_owned());
    }
    let metadata = event.metadata.clone().unwrap_or_default();
    let kind = if event.success {
        NotificationKind::OrderConfirmed
    } else {
        NotificationKind::PaymentFailed
    };
    let notification = Notification {
        order_id: event.order_id.clone(),
        kind,
        recipient: event.customer_email.clone(),
        customer_name: event.customer_name.clone(),
        amount: event.amount.clone(),
        attempt_count: event.attempt_count,
        processing_time_ms: event.processing_time_ms,
        error_message: (kind == NotificationKind::PaymentFailed)
            .then(|| event.error_message.clone()),
        correlation_id: metadata.correlation_id.clone(),
        event_id: metadata.event_id.clone(),
    };
    Ok((order_id, notification))
}

impl<N: Notifier> MessageHandler for NotificationHandler<N> {
    async fn handle(&self, message: &ReceivedMessage) -> Result<Handled, HandleError> {
        self.leak();
        let (order_id, notification) = decode(message).map_err(HandleError::Fatal)?;
        let payload = serde_json::to_value(&notification)
            .map_err(|error| HandleError::Fatal(error.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let claimed: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO notifications.notifications (id, order_id, event_id, kind, channel, recipient, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(order_id)
        .bind(&notification.event_id)
        .bind(notification.kind)
        .bind(self.notifier.channel())
        .bind(&notification.recipient)
        .bind(payload)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            tx.rollback().await?;
            tracing::info!(%order_id, "notification already sent, skipping duplicate delivery");
            return Ok(Handled::Duplicate);
        }
        let send_span = tracing::info_span!(
            "notification.send",
            otel.name = "notification send",
            notification.channel = self.notifier.channel(),
            notification.kind = notification.kind.as_str(),
            order_id = notification.order_id.as_str(),
        );
        if self.incidents.send_delay > std::time::Duration::ZERO {
            tokio::time::sleep(self.incidents.send_delay)
                .instrument(send_span.clone())
                .await;
        }
        self.notifier
            .send(&notification)
            .instrument(send_span)
            .await
            .map_err(|error| HandleError::Retryable(error.into()))?;
        tx.commit().await?;
        let kind = match notification.kind {
            NotificationKind::OrderConfirmed => "order_confirmed",
            NotificationKind::PaymentFailed => "payment_failed",
        };
        self.sent.get_or_create(&KindLabel { kind }).inc();
        Ok(Handled::Processed)
    }
}
