//! The notification seam: [`Notifier`] is what an email or SMS sender would
//! implement; [`LogNotifier`], the shipped one, writes the notification as one
//! structured log line.

use std::future::Future;

use serde::Serialize;

foodorder_contract::text_enum! {
    /// What kind of news the customer gets (`notifications.kind`).
    pub enum NotificationKind {
        /// Paid: the order is confirmed.
        OrderConfirmed => "ORDER_CONFIRMED",
        /// The payment failed.
        PaymentFailed => "PAYMENT_FAILED",
    }
}

impl Serialize for NotificationKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One notification to send.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    /// Order it is about.
    pub order_id: String,
    /// Kind of news.
    pub kind: NotificationKind,
    /// Recipient address.
    pub recipient: String,
    /// Customer's name.
    pub customer_name: String,
    /// Amount charged or attempted, exact decimal string.
    pub amount: String,
    /// Gateway calls made.
    pub attempt_count: i32,
    /// Time the payment took.
    pub processing_time_ms: i64,
    /// Why the payment failed (failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Correlation id of the original API call.
    pub correlation_id: String,
    /// Id of the PaymentCompleted event.
    pub event_id: String,
}

/// Why sending failed (the message is retried).
#[derive(Debug, thiserror::Error)]
#[error("notification could not be sent: {0}")]
pub struct NotifyError(pub String);

/// Sends notifications.
pub trait Notifier: Send + Sync + 'static {
    /// Channel name stored with each notification, e.g. `log` or `email`.
    fn channel(&self) -> &'static str;
    /// Sends one notification.
    fn send(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = Result<(), NotifyError>> + Send;
}

/// Writes each notification as a structured log line (`notification sent`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn channel(&self) -> &'static str {
        "log"
    }

    async fn send(&self, notification: &Notification) -> Result<(), NotifyError> {
        tracing::info!(
            notification_kind = notification.kind.as_str(),
            order_id = notification.order_id,
            request_id = notification.correlation_id,
            recipient = notification.recipient,
            customer_name = notification.customer_name,
            amount = notification.amount,
            attempt_count = notification.attempt_count,
            processing_time_ms = notification.processing_time_ms,
            error_message = notification.error_message.as_deref(),
            event_id = notification.event_id,
            "notification sent"
        );
        Ok(())
    }
}
