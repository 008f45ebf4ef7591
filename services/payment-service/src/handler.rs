//! Handling one `order.placed` record: decode, remember the request, skip
//! what is already paid, pay, and record the outcome — the payment attempt and
//! the `PaymentCompleted` outbox row — in one transaction. Everything comes
//! from the event and the service's own schema (`payments`); the order's
//! status is the order API's, which learns the outcome from the event.
//! Replays and duplicates change nothing; the gateway is not called for a
//! finished order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::SCHEMA;
use chrono::Utc;
use foodorder_contract::events;
use foodorder_contract::money::format_money;
use foodorder_contract::states::PaymentState;
use foodorder_contract::v1::{OrderStatus, OrderUnprocessable, PaymentCompleted};
use foodorder_runtime::batch::{BatchMetrics, BatchSettings, BatchWork, Batcher};
use foodorder_runtime::consumer::{HandleError, Handled, MessageHandler, ReceivedMessage};
use foodorder_runtime::outbox::{self, OutboxMessage};
use foodorder_runtime::telemetry;
use prost::Message;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::gateway::{ChargeRequest, GatewayUnavailable, PaymentGateway};
use crate::processor::{CallCount, PaymentProcessor, PaymentResult};

/// Name of this service in event metadata.
pub const PRODUCER: &str = "payment-service";

/// What an `order.placed` record asked for, as stored in `payments.payment_requests`.
#[derive(Clone, sqlx::FromRow, PartialEq)]
struct PaymentRequest {
    amount: Decimal,
    customer_name: String,
    customer_email: String,
    correlation_id: String,
}

#[derive(Clone, sqlx::FromRow)]
struct KnownRequest {
    #[sqlx(flatten)]
    request: PaymentRequest,
    /// Its outcome is recorded, or the order was declared unprocessable:
    /// nothing more is paid for it.
    settled: bool,
    /// Gateway calls counted for the order before this delivery.
    gateway_calls: i32,
}

/// The `order.placed` handler. Its database steps — remembering requests and
/// recording outcomes with their events — are batched across the records in
/// flight (see [`foodorder_runtime::batch`]).
pub struct PaymentHandler<G> {
    pool: PgPool,
    processor: Arc<PaymentProcessor<G>>,
    payment_completed_topic: String,
    order_unprocessable_topic: String,
    crash_after_charge: bool,
    poison_settle_after: std::time::Duration,
    requests: Batcher<RememberRequests>,
    reservations: Batcher<ReserveCalls>,
    outcomes: Batcher<RecordOutcomes>,
}

/// Stores requests (the first delivery's wins) and reads back the stored
/// ones with whether each is settled, many orders in one transaction.
struct RememberRequests {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct StoredRequest {
    order_id: Uuid,
    #[sqlx(flatten)]
    known: KnownRequest,
}

impl BatchWork for RememberRequests {
    type Job = (Uuid, PaymentRequest);
    type Output = KnownRequest;
    type Error = sqlx::Error;

    async fn run(&self, jobs: &[(Uuid, PaymentRequest)]) -> Result<Vec<KnownRequest>, sqlx::Error> {
        let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
        let amounts: Vec<Decimal> = jobs.iter().map(|(_, request)| request.amount).collect();
        let names: Vec<&str> = jobs.iter().map(|(_, r)| r.customer_name.as_str()).collect();
        let emails: Vec<&str> = jobs
            .iter()
            .map(|(_, r)| r.customer_email.as_str())
            .collect();
        let correlation: Vec<&str> = jobs
            .iter()
            .map(|(_, r)| r.correlation_id.as_str())
            .collect();
        // On a pool whose commits do not wait for the disk: no charge is made
        // before a later commit of this service (the call's count, the
        // gateway's decision) flushes the log up to these rows. Lost in a
        // crash of PostgreSQL before that, nothing happened yet and the record
        // is redelivered (its offset is committed only once it is finished).
        // In key order, so that two batches never wait on each other crosswise.
        sqlx::query(
            "INSERT INTO payments.payment_requests \
             (order_id, amount, customer_name, customer_email, correlation_id) \
             SELECT * FROM UNNEST($1::uuid[], $2::numeric[], $3::text[], $4::text[], $5::text[]) \
             ORDER BY 1 ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&amounts)
        .bind(&names)
        .bind(&emails)
        .bind(&correlation)
        .execute(&self.pool)
        .await?;
        let stored: Vec<StoredRequest> = sqlx::query_as(
            "SELECT r.order_id, r.amount, r.customer_name, r.customer_email, r.correlation_id, \
             (r.unprocessable_reason IS NOT NULL OR \
             EXISTS (SELECT 1 FROM payments.payment_attempts p WHERE p.order_id = r.order_id)) AS settled, \
             r.gateway_calls \
             FROM payments.payment_requests r WHERE r.order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let stored: HashMap<Uuid, KnownRequest> = stored
            .into_iter()
            .map(|row| (row.order_id, row.known))
            .collect();
        ids.iter()
            .map(|id| stored.get(id).cloned().ok_or(sqlx::Error::RowNotFound))
            .collect()
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

/// Counts one more gateway call for each order (a retry's), many orders in
/// one statement.
struct ReserveCalls {
    pool: PgPool,
}

impl BatchWork for ReserveCalls {
    type Job = Uuid;
    type Output = ();
    type Error = sqlx::Error;

    async fn run(&self, orders: &[Uuid]) -> Result<Vec<()>, sqlx::Error> {
        // One statement on a pool whose commits do not wait for the disk: a
        // crash of the service leaves the count committed; only a crash of
        // PostgreSQL itself within its WAL writer's delay (0.2 s by default,
        // three times that at worst) could forget it, and this service's next
        // commit (the gateway's decision, the attempt) flushes it anyway. An
        // order twice in one batch (it cannot be: records of one order go one
        // after another) would still count each.
        sqlx::query(
            "UPDATE payments.payment_requests r SET gateway_calls = r.gateway_calls + c.calls \
             FROM (SELECT order_id, count(*)::int AS calls FROM unnest($1::uuid[]) AS order_id \
                   GROUP BY order_id ORDER BY order_id) AS c \
             WHERE r.order_id = c.order_id",
        )
        .bind(orders)
        .execute(&self.pool)
        .await?;
        Ok(vec![(); orders.len()])
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

/// One order's gateway calls, counted in `payment_requests.gateway_calls`
/// before each is made (after the ledger read and the breaker's permit, so a
/// try that fails before the call counts nothing).
struct CountedCalls<'a> {
    reservations: &'a Batcher<ReserveCalls>,
    order_id: Uuid,
    made_before: u32,
}

impl CallCount for CountedCalls<'_> {
    fn made_before(&self) -> u32 {
        self.made_before
    }

    async fn reserve(&self) -> Result<(), GatewayUnavailable> {
        self.reservations
            .submit(self.order_id)
            .await
            .map_err(|error| GatewayUnavailable(anyhow::Error::new(error)))
    }
}

/// One payment's outcome to record, with its event ready.
struct Outcome {
    payment_id: Uuid,
    order_id: Uuid,
    success: bool,
    amount: Decimal,
    attempt_count: i32,
    error_message: Option<String>,
    processing_time_ms: i64,
    event: OutboxMessage,
}

/// Records attempts and their `payment.completed` events, many orders in one
/// transaction: an order whose outcome is recorded already (another delivery
/// got there first) gets `false` and no event.
struct RecordOutcomes {
    pool: PgPool,
}

impl BatchWork for RecordOutcomes {
    type Job = Outcome;
    type Output = bool;
    type Error = sqlx::Error;

    async fn run(&self, jobs: &[Outcome]) -> Result<Vec<bool>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(Uuid,)> = sqlx::query_as(
            "INSERT INTO payments.payment_attempts \
             (id, order_id, status, amount, attempt_count, error_message, processing_time_ms) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::int4[], $6::text[], $7::int8[]) \
             ORDER BY 2 ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
        )
        .bind(jobs.iter().map(|job| job.payment_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.order_id).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|job| PaymentState::of(job.success).as_str())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|job| job.amount).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.attempt_count).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|job| job.error_message.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|job| job.processing_time_ms).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let inserted: HashSet<Uuid> = inserted.into_iter().map(|(id,)| id).collect();
        // A key twice in one batch: only the first of them is recorded.
        let mut recorded = HashSet::new();
        let outputs: Vec<bool> = jobs
            .iter()
            .map(|job| inserted.contains(&job.order_id) && recorded.insert(job.order_id))
            .collect();
        let events: Vec<OutboxMessage> = jobs
            .iter()
            .zip(&outputs)
            .filter(|(_, recorded)| **recorded)
            .map(|(job, _)| job.event.clone())
            .collect();
        outbox::enqueue_all(&mut tx, &SCHEMA, &events).await?;
        tx.commit().await?;
        if !events.is_empty() {
            outbox::committed(&SCHEMA);
        }
        Ok(outputs)
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

impl<G: PaymentGateway> PaymentHandler<G> {
    /// A handler writing to `pool` and publishing outcomes to
    /// `payment_completed_topic`, declarations to `order_unprocessable_topic`;
    /// its batch sizes go to `metrics`. Needs a Tokio runtime (it starts the
    /// batches' writers).
    pub fn new(
        pool: PgPool,
        processor: Arc<PaymentProcessor<G>>,
        payment_completed_topic: String,
        order_unprocessable_topic: String,
        crash_after_charge: bool,
        metrics: &BatchMetrics,
    ) -> Self {
        Self {
            requests: Batcher::new(
                "payment_requests",
                Arc::new(RememberRequests {
                    pool: foodorder_runtime::db::asynchronous_commit_pool(&pool, 2),
                }),
                BatchSettings::default(),
                metrics,
            ),
            reservations: Batcher::new(
                "payment_gateway_calls",
                Arc::new(ReserveCalls {
                    pool: foodorder_runtime::db::asynchronous_commit_pool(&pool, 2),
                }),
                BatchSettings::default(),
                metrics,
            ),
            outcomes: Batcher::new(
                "payment_outcomes",
                Arc::new(RecordOutcomes { pool: pool.clone() }),
                BatchSettings::default(),
                metrics,
            ),
            pool,
            processor,
            payment_completed_topic,
            order_unprocessable_topic,
            crash_after_charge,
            poison_settle_after: std::time::Duration::from_secs(60),
        }
    }

    /// How long an order id named only by poison records waits for its real
    /// `order.placed` before it is declared unprocessable (default 60 s).
    pub fn settling_poison_after(mut self, wait: std::time::Duration) -> Self {
        self.poison_settle_after = wait;
        self
    }

    /// Stores the request unless one is stored (the first delivery's wins)
    /// and returns the stored one, with whether the order is settled.
    async fn remember(
        &self,
        order_id: Uuid,
        request: PaymentRequest,
    ) -> Result<KnownRequest, HandleError> {
        Ok(self.requests.submit((order_id, request)).await?)
    }

    /// The stored request of an order this service was asked to pay, if any.
    async fn known_request(&self, order_id: Uuid) -> Result<Option<KnownRequest>, sqlx::Error> {
        sqlx::query_as(
            "SELECT r.amount, r.customer_name, r.customer_email, r.correlation_id, \
             (r.unprocessable_reason IS NOT NULL OR \
             EXISTS (SELECT 1 FROM payments.payment_attempts p WHERE p.order_id = r.order_id)) AS settled, \
             r.gateway_calls \
             FROM payments.payment_requests r WHERE r.order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Writes the attempt and its event in one transaction; false if another
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
        request: &PaymentRequest,
        result: &PaymentResult,
    ) -> Result<bool, HandleError> {
        let correlation_id = request.correlation_id.as_str();
        let payment_id = Uuid::now_v7();
        let final_status = if result.success {
            OrderStatus::Completed
        } else {
            OrderStatus::Failed
        };
        let processing_time_ms = result.processing_time.as_millis() as i64;
        let event = PaymentCompleted {
            metadata: Some(events::metadata(correlation_id, PRODUCER, Utc::now())),
            order_id: order_id.to_string(),
            success: result.success,
            final_status: final_status as i32,
            attempt_count: result.attempt_count,
            processing_time_ms,
            error_message: result.error_message.clone().unwrap_or_default(),
            amount: format_money(request.amount),
            customer_email: request.customer_email.clone(),
            customer_name: request.customer_name.clone(),
            payment_id: payment_id.to_string(),
        };
        let event = OutboxMessage {
            topic: self.payment_completed_topic.clone(),
            key: order_id.to_string(),
            payload: event.encode_to_vec(),
            headers: events::standard_headers::<PaymentCompleted>(
                correlation_id,
                &telemetry::inject_span(&tracing::Span::current()),
            ),
        };
        Ok(self
            .outcomes
            .submit(Outcome {
                payment_id,
                order_id,
                success: result.success,
                amount: request.amount,
                attempt_count: result.attempt_count,
                error_message: result.error_message.clone(),
                processing_time_ms,
                event,
            })
            .await?)
    }

    /// Before dead-lettering a record keyed by an order id, so that no one
    /// waits on that order forever: an order this service was asked to pay
    /// (its request is stored) is settled now; an id it never had a valid
    /// request for is noted in `payments.unsettled_poison`, and declared
    /// unprocessable by [`MessageHandler::housekeeping`] if its real
    /// `order.placed` does not come within the wait: no payment event is
    /// ever made for an id this service has no request for. A database or
    /// gateway error is returned, so the record is retried rather than
    /// dead-lettered with the order left waiting.
    async fn settle_known_order(&self, key: Option<&str>, reason: &str) -> Result<(), HandleError> {
        let Some(order_id) = key.and_then(|key| Uuid::parse_str(key).ok()) else {
            return Ok(());
        };
        match self.known_request(order_id).await? {
            Some(known) => self.settle(order_id, known, reason).await,
            None => {
                sqlx::query(
                    "INSERT INTO payments.unsettled_poison (order_id, reason) VALUES ($1, $2) \
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(events::bounded_reason(reason))
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    }

    /// Settles `order_id` as given up: voided at the gateway first, so that
    /// a charge in flight on another instance cannot land afterwards; a charge
    /// that landed before the void stands and the order is COMPLETED.
    async fn settle(
        &self,
        order_id: Uuid,
        known: KnownRequest,
        reason: &str,
    ) -> Result<(), HandleError> {
        if known.settled {
            return Ok(());
        }
        let request = ChargeRequest {
            idempotency_key: order_id.to_string(),
            amount: known.request.amount,
        };
        let outcome = self
            .processor
            .abandon(
                &request,
                u32::try_from(known.gateway_calls).unwrap_or(0),
                &format!("Payment could not be processed: {reason}"),
            )
            .await
            .map_err(|error| HandleError::Retryable(anyhow::Error::new(error)))?;
        if self
            .record_outcome(order_id, &known.request, &outcome)
            .await?
        {
            self.processor.metrics().recorded(&outcome);
            tracing::warn!(%order_id, reason, success = outcome.success, "order settled after a poison record");
        }
        Ok(())
    }

    /// Deals with the ids poison records named that got no valid
    /// `order.placed` within the wait: one whose request came meanwhile is
    /// settled with it (paid already, or voided and FAILED); one still
    /// without a request is declared unprocessable. Then the id is forgotten.
    async fn settle_overdue_poison(&self) -> Result<(), HandleError> {
        let overdue: Vec<(Uuid, String, chrono::DateTime<Utc>)> = sqlx::query_as(
            "SELECT order_id, reason, first_seen_at FROM payments.unsettled_poison \
             WHERE first_seen_at < now() - make_interval(secs => $1) ORDER BY first_seen_at LIMIT 100",
        )
        .bind(self.poison_settle_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        for (order_id, reason, first_seen_at) in overdue {
            if !self
                .declare_unprocessable(order_id, &reason, first_seen_at)
                .await?
            {
                // A valid request came first: it is a real order, settled as one.
                if let Some(known) = self.known_request(order_id).await? {
                    self.settle(order_id, known, &reason).await?;
                }
            }
            sqlx::query("DELETE FROM payments.unsettled_poison WHERE order_id = $1")
                .bind(order_id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Declares `order_id` unprocessable, unless a request is stored for it:
    /// a request row with the reason and no customer takes the id's place
    /// (so a valid `order.placed` arriving later is never paid), and an
    /// `OrderUnprocessable` event for the order API goes to the outbox, in
    /// one transaction. Nothing was charged: a charge needs a stored request.
    /// Returns false, changing nothing, when a request is stored.
    async fn declare_unprocessable(
        &self,
        order_id: Uuid,
        reason: &str,
        first_seen_at: chrono::DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let reason = events::bounded_reason(reason);
        let mut tx = self.pool.begin().await?;
        let declared = sqlx::query(
            "INSERT INTO payments.payment_requests \
             (order_id, amount, customer_name, customer_email, correlation_id, unprocessable_reason) \
             VALUES ($1, 0, '', '', '', $2) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(&reason)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !declared {
            tx.rollback().await?;
            return Ok(false);
        }
        let event = OrderUnprocessable {
            metadata: Some(events::metadata("", PRODUCER, Utc::now())),
            order_id: order_id.to_string(),
            reason: reason.clone(),
            first_seen_at: Some(events::timestamp(first_seen_at)),
        };
        let event = OutboxMessage {
            topic: self.order_unprocessable_topic.clone(),
            key: order_id.to_string(),
            payload: event.encode_to_vec(),
            headers: events::standard_headers::<OrderUnprocessable>(
                "",
                &std::collections::BTreeMap::new(),
            ),
        };
        outbox::enqueue_all(&mut tx, &SCHEMA, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        outbox::committed(&SCHEMA);
        tracing::warn!(
            %order_id,
            reason,
            "no valid order.placed came for an order id poison records named; declared it unprocessable to the order API"
        );
        Ok(true)
    }
}

impl<G: PaymentGateway> MessageHandler for PaymentHandler<G> {
    async fn housekeeping(&self) {
        if let Err(error) = self.settle_overdue_poison().await {
            tracing::warn!(%error, "failed to settle orders named by poison records; retrying later");
        }
    }

    async fn handle(&self, message: &ReceivedMessage) -> Result<Handled, HandleError> {
        let (order_id, event) =
            match events::decode_order_placed(message.key.as_deref(), message.payload.as_deref()) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    Box::pin(self.settle_known_order(message.key_str(), &reason)).await?;
                    return Err(HandleError::Fatal(reason));
                }
            };
        let request = PaymentRequest {
            amount: events::amount(&event.total_amount).map_err(HandleError::Fatal)?,
            customer_name: event.customer_name,
            customer_email: event.customer_email,
            // An event's correlation id travels further (stored, logged, in
            // payment.completed) only once it passes the request-id check.
            correlation_id: event
                .metadata
                .as_ref()
                .and_then(|metadata| telemetry::loggable_request_id(&metadata.correlation_id))
                .unwrap_or_default()
                .to_owned(),
        };
        // The database steps are boxed: they are short, and an in-flight
        // payment then holds only the gateway call's state while it waits
        // (thousands wait at once at the gateway's latency).
        let stored = Box::pin(self.remember(order_id, request.clone())).await?;
        if stored.settled {
            tracing::info!(%order_id, "order already settled, skipping duplicate delivery");
            return Ok(Handled::Duplicate);
        }
        if stored.request.amount != request.amount
            || stored.request.customer_email != request.customer_email
        {
            // The order's first request stands; one that contradicts it is not paid.
            return Err(HandleError::Fatal(format!(
                "OrderPlaced for order {order_id} contradicts its first request (amount or customer)"
            )));
        }
        let request = stored.request;
        let charge = ChargeRequest {
            idempotency_key: order_id.to_string(),
            amount: request.amount,
        };
        let calls = CountedCalls {
            reservations: &self.reservations,
            order_id,
            made_before: u32::try_from(stored.gateway_calls).unwrap_or(0),
        };
        let result = self
            .processor
            .pay_counted(&charge, &calls)
            .await
            .map_err(|error| HandleError::Retryable(anyhow::Error::new(error)))?;
        if self.crash_after_charge {
            tracing::error!(%order_id, "fault injection: aborting after the gateway call, before the commit");
            std::process::abort();
        }
        let recorded = Box::pin(self.record_outcome(order_id, &request, &result)).await?;
        if recorded {
            self.processor.metrics().recorded(&result);
            tracing::info!(
                %order_id,
                request_id = request.correlation_id,
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
