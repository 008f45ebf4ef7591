//! Handling one `payment.completed` record, which carries all a notification
//! needs (recipient, name, amount, outcome): decode, then — in one transaction —
//! claim the order's notification slot (`notifications.order_id` is unique),
//! send, and commit. A duplicate or replayed record finds the slot taken and
//! sends nothing. If sending fails the claim is withdrawn in the same
//! transaction and the message is retried; a crash after sending but before
//! the commit can repeat a send, which is the best any sender without its own
//! idempotency can do.
//!
//! The records in flight are claimed, sent and committed together (see
//! [`foodorder_runtime::batch`]): one multi-row claim, the sends at once, one
//! commit; a send that fails withdraws only its own claim.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use foodorder_contract::events;
use foodorder_runtime::batch::{BatchMetrics, BatchSettings, BatchWork, Batcher};
use foodorder_runtime::consumer::{HandleError, Handled, MessageHandler, ReceivedMessage};
use foodorder_runtime::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::Incidents;
use crate::notifier::{Notification, NotificationKind, Notifier, NotifyError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The `payment.completed` handler.
pub struct NotificationHandler<N: Notifier> {
    pool: PgPool,
    notifier: Arc<N>,
    sent: Family<KindLabel, Counter>,
    incidents: Incidents,
    /// What the leak incident keeps.
    leaked: Mutex<Vec<Vec<u8>>>,
    batch_metrics: BatchMetrics,
    send_timeout: std::time::Duration,
    /// Started on the first record, with the handler's final settings.
    batcher: OnceLock<Batcher<SendNotifications<N>>>,
}

/// One notification to claim and send.
struct Pending {
    order_id: Uuid,
    notification: Notification,
    payload: serde_json::Value,
    /// The record's span: the send's parent.
    span: tracing::Span,
}

/// What became of one notification.
enum SendOutcome {
    /// Claimed, sent and committed.
    Sent,
    /// The order's notification was sent already.
    Duplicate,
    /// Sending failed; the claim was withdrawn.
    Failed(NotifyError),
}

/// Claims, sends and commits many notifications in one transaction.
struct SendNotifications<N> {
    pool: PgPool,
    notifier: Arc<N>,
    send_delay: std::time::Duration,
    send_timeout: std::time::Duration,
}

impl<N: Notifier> SendNotifications<N> {
    async fn send(&self, pending: &Pending) -> Result<(), NotifyError> {
        let notification = &pending.notification;
        let send_span = tracing::info_span!(
            parent: &pending.span,
            "notification.send",
            otel.name = "notification send",
            notification.channel = self.notifier.channel(),
            notification.kind = notification.kind.as_str(),
            order_id = notification.order_id.as_str(),
        );
        let sending = async {
            if self.send_delay > std::time::Duration::ZERO {
                tokio::time::sleep(self.send_delay).await;
            }
            self.notifier.send(notification).await
        };
        tokio::time::timeout(self.send_timeout, sending)
            .instrument(send_span)
            .await
            .unwrap_or_else(|_| {
                Err(NotifyError(format!(
                    "the send did not finish within {:?}",
                    self.send_timeout
                )))
            })
    }
}

impl<N: Notifier> BatchWork for SendNotifications<N> {
    type Job = Pending;
    type Output = SendOutcome;
    type Error = sqlx::Error;

    async fn run(&self, jobs: &[Pending]) -> Result<Vec<SendOutcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let claimed: HashSet<Uuid> = sqlx::query_as::<_, (Uuid,)>(
            "INSERT INTO notifications.notifications (id, order_id, event_id, kind, channel, recipient, payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[]) \
             ORDER BY 2 ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
        )
        .bind(jobs.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.order_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.notification.event_id.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.notification.kind.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|_| self.notifier.channel()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.notification.recipient.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| &job.payload).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id,)| id)
        .collect();
        // An order twice in one batch: the first of them sends.
        let mut sending = HashSet::new();
        let to_send: Vec<bool> = jobs
            .iter()
            .map(|job| claimed.contains(&job.order_id) && sending.insert(job.order_id))
            .collect();
        let sends = jobs.iter().zip(&to_send).map(|(job, send)| async move {
            if *send {
                Some(self.send(job).await)
            } else {
                None
            }
        });
        let results = futures::future::join_all(sends).await;
        let failed: Vec<Uuid> = jobs
            .iter()
            .zip(&results)
            .filter(|(_, result)| matches!(result, Some(Err(_))))
            .map(|(job, _)| job.order_id)
            .collect();
        if !failed.is_empty() {
            sqlx::query("DELETE FROM notifications.notifications WHERE order_id = ANY($1)")
                .bind(&failed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                None => SendOutcome::Duplicate,
                Some(Ok(())) => SendOutcome::Sent,
                Some(Err(error)) => SendOutcome::Failed(error),
            })
            .collect())
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

impl<N: Notifier> NotificationHandler<N> {
    /// A handler recording in `pool` and sending through `notifier`.
    pub fn new(pool: PgPool, notifier: N) -> Self {
        Self {
            pool,
            notifier: Arc::new(notifier),
            sent: Family::default(),
            incidents: Incidents::default(),
            leaked: Mutex::new(Vec::new()),
            batch_metrics: BatchMetrics::default(),
            send_timeout: std::time::Duration::from_secs(30),
            batcher: OnceLock::new(),
        }
    }

    /// Registers `foodorder_notifications_sent_total{kind}` and the batch
    /// sizes in `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        metrics.register(
            "foodorder_notifications_sent",
            "Notifications sent, by kind (order_confirmed, payment_failed)",
            self.sent.clone(),
        );
        for kind in ["order_confirmed", "payment_failed"] {
            drop(self.sent.get_or_create(&KindLabel { kind }));
        }
        self.batch_metrics = BatchMetrics::new(metrics);
        self
    }

    /// Bounds one send (default 30 s): a send cut there fails alone.
    pub fn with_send_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.send_timeout = timeout;
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

    fn batcher(&self) -> &Batcher<SendNotifications<N>> {
        self.batcher.get_or_init(|| {
            Batcher::new(
                "notifications",
                Arc::new(SendNotifications {
                    pool: self.pool.clone(),
                    notifier: self.notifier.clone(),
                    send_delay: self.incidents.send_delay,
                    send_timeout: self.send_timeout,
                }),
                BatchSettings {
                    // The sends' bound and room for the statements around them.
                    timeout: self.send_timeout + std::time::Duration::from_secs(10),
                    ..BatchSettings::default()
                },
                &self.batch_metrics,
            )
        })
    }
}

/// Decodes and checks a PaymentCompleted record into the notification to send.
fn decode(message: &ReceivedMessage) -> Result<(Uuid, Notification), String> {
    let (order_id, event) = events::decode_payment_completed(message.payload.as_deref())?;
    // Records of one order share its key, so they are handled one after another.
    if message.key_str() != Some(order_id.to_string().as_str()) {
        return Err("record key does not match the order id".to_owned());
    }
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
        // An event's correlation id travels (stored, logged) only once it
        // passes the request-id check; anything else is dropped here.
        correlation_id: foodorder_runtime::telemetry::loggable_request_id(&metadata.correlation_id)
            .unwrap_or_default()
            .to_owned(),
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
        let kind = notification.kind;
        let pending = Pending {
            order_id,
            notification,
            payload,
            span: tracing::Span::current(),
        };
        match self.batcher().submit(pending).await? {
            SendOutcome::Sent => {}
            SendOutcome::Duplicate => {
                tracing::info!(%order_id, "notification already sent, skipping duplicate delivery");
                return Ok(Handled::Duplicate);
            }
            SendOutcome::Failed(error) => return Err(HandleError::Retryable(error.into())),
        }
        let kind = match kind {
            NotificationKind::OrderConfirmed => "order_confirmed",
            NotificationKind::PaymentFailed => "payment_failed",
        };
        self.sent.get_or_create(&KindLabel { kind }).inc();
        Ok(Handled::Processed)
    }
}
