//! Paying for one order: gateway calls under a timeout, retried on timeout
//! only (attempts in all: `PAYMENT_MAX_RETRIES`, back-off base × 1, 2, 4 …),
//! all behind the circuit breaker. A decline is final. An open breaker fails
//! fast: attempt_count 0 when it was open before the first call.
//!
//! The gateway's ledger is the truth about money: a decision it already made
//! for the order (an earlier delivery, another instance) is used as is, and
//! giving up voids the key at the gateway first — if a charge landed before
//! the void, the payment succeeded after all and is recorded as such.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use foodorder_runtime::backoff::Backoff;
use foodorder_runtime::metrics::{LatencyFamily, Metrics, latency_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::breaker::{CallOutcome, CircuitBreaker};
use crate::config::PaymentSettings;
use crate::gateway::{ChargeOutcome, ChargeRequest, GatewayUnavailable, PaymentGateway};

/// Error message when the circuit breaker rejects a payment.
pub const BREAKER_OPEN_MESSAGE: &str =
    "Payment service temporarily unavailable (circuit breaker open)";

/// How a payment ended, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Charged.
    Succeeded,
    /// The gateway declined the charge.
    Declined,
    /// Every attempt timed out.
    TimedOut,
    /// The circuit breaker failed it fast.
    BreakerOpen,
    /// Given up for another reason (a poison record, a void made elsewhere).
    Failed,
}

impl PaymentOutcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::TimedOut => "timed_out",
            Self::BreakerOpen => "breaker_open",
            Self::Failed => "failed",
        }
    }
}

/// How the payment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentResult {
    /// Whether the order was charged.
    pub success: bool,
    /// Why it ended as it did.
    pub outcome: PaymentOutcome,
    /// Gateway calls made.
    pub attempt_count: i32,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Time spent, back-off included.
    pub processing_time: Duration,
    /// The gateway's charge id on success.
    pub charge_id: Option<Uuid>,
}

/// Counts the gateway calls made for one order across its deliveries (the
/// payment service keeps it in `payments.payment_requests.gateway_calls`).
pub trait CallCount: Send + Sync {
    /// Calls counted for the order before this delivery.
    fn made_before(&self) -> u32;

    /// Counts one more call, durably, before it is made.
    fn reserve(&self) -> impl Future<Output = Result<(), GatewayUnavailable>> + Send;
}

/// No count across deliveries: each delivery starts the budget again.
pub struct Uncounted;

impl CallCount for Uncounted {
    fn made_before(&self) -> u32 {
        0
    }

    async fn reserve(&self) -> Result<(), GatewayUnavailable> {
        Ok(())
    }
}

/// Runs payments through a gateway with retries and a circuit breaker.
pub struct PaymentProcessor<G> {
    gateway: G,
    breaker: Arc<CircuitBreaker>,
    settings: PaymentSettings,
    metrics: PaymentMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The payment metrics.
#[derive(Clone)]
pub struct PaymentMetrics {
    outcomes: Family<OutcomeLabel, Counter>,
    processing: Histogram,
    gateway_calls: LatencyFamily<ResultLabel>,
    attempts: Histogram,
}

impl PaymentMetrics {
    /// Registers the payment families in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let processing = latency_histogram();
        metrics.register(
            "foodorder_payment_processing_duration_seconds",
            "Time to pay one order: gateway calls, back-off and the void when giving up",
            processing.clone(),
        );
        let attempts = Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0]);
        metrics.register(
            "foodorder_payment_attempts",
            "Gateway calls made for one payment (0: failed fast by the open breaker)",
            attempts.clone(),
        );
        let payment = Self {
            outcomes: metrics.counter_family(
                "foodorder_payment_outcomes",
                "Payments recorded, by outcome (succeeded, declined, timed_out, breaker_open, failed)",
            ),
            processing,
            gateway_calls: metrics.latency_family(
                "foodorder_payment_gateway_call_duration_seconds",
                "Gateway charge calls, by result (approved, declined, voided, timeout, error)",
            ),
            attempts,
        };
        // Every known label value is exported from the start, at 0.
        for outcome in [
            PaymentOutcome::Succeeded,
            PaymentOutcome::Declined,
            PaymentOutcome::TimedOut,
            PaymentOutcome::BreakerOpen,
            PaymentOutcome::Failed,
        ] {
            drop(payment.outcomes.get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            }));
        }
        for result in ["approved", "declined", "voided", "timeout", "error"] {
            drop(payment.gateway_calls.get_or_create(&ResultLabel { result }));
        }
        payment
    }

    /// Counts a payment this instance recorded.
    pub fn recorded(&self, result: &PaymentResult) {
        self.outcomes
            .get_or_create(&OutcomeLabel {
                outcome: result.outcome.label(),
            })
            .inc();
        self.processing
            .observe(result.processing_time.as_secs_f64());
        self.attempts
            .observe(f64::from(result.attempt_count.max(0)));
    }
}

impl<G: PaymentGateway> PaymentProcessor<G> {
    /// A processor over `gateway`.
    pub fn new(gateway: G, breaker: CircuitBreaker, settings: PaymentSettings) -> Self {
        Self {
            gateway,
            breaker: Arc::new(breaker),
            settings,
            metrics: PaymentMetrics::new(&Metrics::default()),
        }
    }

    /// Reports into `metrics` (payments, gateway calls, the breaker).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = PaymentMetrics::new(metrics);
        self.breaker.register(metrics);
        self
    }

    /// The payment metrics.
    pub fn metrics(&self) -> &PaymentMetrics {
        &self.metrics
    }

    /// The circuit breaker, for observation.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Pays `request`, with a budget that starts afresh (see [`Self::pay_counted`]).
    pub async fn pay(&self, request: &ChargeRequest) -> Result<PaymentResult, GatewayUnavailable> {
        self.pay_counted(request, &Uncounted).await
    }

    /// Pays `request` with `calls` counting the gateway calls across the
    /// order's deliveries: the calls of earlier deliveries count against
    /// `PAYMENT_MAX_RETRIES` and in the reported attempt count, and each call
    /// is counted before it is made. `Err` only when our side failed (e.g.
    /// the ledger database): retry later.
    pub async fn pay_counted(
        &self,
        request: &ChargeRequest,
        calls: &impl CallCount,
    ) -> Result<PaymentResult, GatewayUnavailable> {
        let started = Instant::now();
        let made_before = calls.made_before();
        // Database steps are boxed so that a payment waiting on the gateway
        // (thousands at once) holds only the call's own state.
        if let Some(decided) = Box::pin(self.gateway.decision(&request.idempotency_key)).await? {
            tracing::info!(
                order_id = request.idempotency_key,
                "the gateway already decided on this order"
            );
            // The decision was made by an earlier delivery: its calls, at
            // least one unless it was a void.
            let calls =
                made_before.max(u32::from(!matches!(decided, ChargeOutcome::Voided { .. })));
            return Ok(self.result(decided, calls, started, PaymentOutcome::Failed));
        }
        // Calls made for the order so far, by every delivery.
        let mut attempts: u32 = made_before;
        if attempts > 0 {
            tracing::info!(
                order_id = request.idempotency_key,
                calls_made_before = attempts,
                "a redelivered payment continues its retry budget"
            );
        }
        // Before retry n: PAYMENT_RETRY_BASE_DELAY × 2^(n-1); the attempt cap bounds it.
        let mut backoff = Backoff::new(self.settings.retry_base_delay, Duration::from_secs(3600));
        loop {
            if attempts >= self.settings.max_attempts {
                // Spent: by this delivery's timeouts, or by earlier deliveries
                // (cut by a restart after their calls).
                let reason = format!("Payment gateway timeout after {attempts} attempts");
                return Box::pin(self.give_up(
                    request,
                    attempts,
                    &reason,
                    started,
                    PaymentOutcome::TimedOut,
                ))
                .await;
            }
            let Some(permit) = self.breaker.try_acquire() else {
                tracing::warn!(
                    order_id = request.idempotency_key,
                    attempts,
                    "circuit breaker open, failing fast"
                );
                return Box::pin(self.give_up(
                    request,
                    attempts,
                    BREAKER_OPEN_MESSAGE,
                    started,
                    PaymentOutcome::BreakerOpen,
                ))
                .await;
            };
            // Counted before it is made; if counting fails, the permit goes
            // back unused (dropped: no verdict on the gateway).
            Box::pin(calls.reserve()).await?;
            attempts += 1;
            let span = tracing::info_span!(
                "payment.gateway.attempt",
                otel.name = "payment gateway attempt",
                payment.attempt = attempts,
                payment.outcome = tracing::field::Empty,
                payment.latency_ms = tracing::field::Empty,
                order_id = request.idempotency_key.as_str(),
            );
            let call_started = Instant::now();
            let outcome = tokio::time::timeout(self.settings.timeout, self.gateway.charge(request))
                .instrument(span.clone())
                .await;
            let latency_ms = call_started.elapsed().as_millis() as u64;
            let label = match &outcome {
                Ok(Ok(ChargeOutcome::Approved { .. })) => "approved",
                Ok(Ok(ChargeOutcome::Declined { .. })) => "declined",
                Ok(Ok(ChargeOutcome::Voided { .. })) => "voided",
                Ok(Err(_)) => "unavailable",
                Err(_) => "timeout",
            };
            let result = match label {
                "unavailable" => "error",
                other => other,
            };
            self.metrics
                .gateway_calls
                .get_or_create(&ResultLabel { result })
                .observe(call_started.elapsed().as_secs_f64());
            span.record("payment.latency_ms", latency_ms);
            span.record("payment.outcome", label);
            tracing::info!(
                order_id = request.idempotency_key,
                attempt = attempts,
                latency_ms,
                outcome = label,
                "gateway attempt"
            );
            match outcome {
                Ok(Ok(decided)) => {
                    self.breaker.record(
                        permit,
                        match decided {
                            // A decline is an answer from a working gateway.
                            ChargeOutcome::Approved { .. } | ChargeOutcome::Declined { .. } => {
                                CallOutcome::Answered
                            }
                            // Someone else gave up on this order: no verdict on the gateway.
                            ChargeOutcome::Voided { .. } => CallOutcome::Inconclusive,
                        },
                    );
                    return Ok(self.result(decided, attempts, started, PaymentOutcome::Failed));
                }
                Ok(Err(unavailable)) => {
                    self.breaker.record(permit, CallOutcome::Inconclusive);
                    return Err(unavailable);
                }
                Err(_elapsed) => {
                    self.breaker.record(permit, CallOutcome::Failed);
                    // The budget's end is handled at the top of the loop.
                    if attempts < self.settings.max_attempts {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
    }

    /// Gives up on an order without charging it (its record is poison): voids
    /// it at the gateway, so a charge in flight elsewhere can no longer land,
    /// and returns what stands — a charge that landed first wins.
    /// `calls_made` is reported as the attempt count (the calls earlier
    /// deliveries made).
    pub async fn abandon(
        &self,
        request: &ChargeRequest,
        calls_made: u32,
        reason: &str,
    ) -> Result<PaymentResult, GatewayUnavailable> {
        self.give_up(
            request,
            calls_made,
            reason,
            Instant::now(),
            PaymentOutcome::Failed,
        )
        .await
    }

    /// Voids the order at the gateway and returns what stands: a charge that
    /// landed before the void (a timed-out call that went through) wins.
    async fn give_up(
        &self,
        request: &ChargeRequest,
        attempts: u32,
        reason: &str,
        started: Instant,
        voided: PaymentOutcome,
    ) -> Result<PaymentResult, GatewayUnavailable> {
        let decided = self.gateway.void(request, reason).await?;
        if matches!(decided, ChargeOutcome::Approved { .. }) {
            tracing::warn!(
                order_id = request.idempotency_key,
                "a charge landed before the payment was given up; it stands"
            );
        }
        Ok(self.result(decided, attempts, started, voided))
    }

    /// The result of `decided`; `voided` says why, when it is a void.
    fn result(
        &self,
        decided: ChargeOutcome,
        attempts: u32,
        started: Instant,
        voided: PaymentOutcome,
    ) -> PaymentResult {
        let (outcome, error_message, charge_id) = match decided {
            ChargeOutcome::Approved { charge_id } => {
                (PaymentOutcome::Succeeded, None, Some(charge_id))
            }
            ChargeOutcome::Declined { reason } => (PaymentOutcome::Declined, Some(reason), None),
            ChargeOutcome::Voided { reason } => (voided, Some(reason), None),
        };
        PaymentResult {
            success: outcome == PaymentOutcome::Succeeded,
            outcome,
            attempt_count: attempts as i32,
            error_message,
            processing_time: started.elapsed(),
            charge_id,
        }
    }
}

#[cfg(test)]
mod tests;
