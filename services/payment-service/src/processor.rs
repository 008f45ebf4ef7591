//! Paying for one order: gateway calls under a timeout, retried on timeout
//! only (attempts in all: `PAYMENT_MAX_RETRIES`, back-off base × 1, 2, 4 …),
//! all behind the circuit breaker. A decline is final. An open breaker fails
//! fast: attempt_count 0 when it was open before the first call.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::breaker::CircuitBreaker;
use crate::config::PaymentSettings;
use crate::gateway::{ChargeOutcome, ChargeRequest, GatewayUnavailable, PaymentGateway};

/// Error message when the circuit breaker rejects a payment.
pub const BREAKER_OPEN_MESSAGE: &str =
    "Payment service temporarily unavailable (circuit breaker open)";

/// How the payment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentResult {
    /// Whether the order was charged.
    pub success: bool,
    /// Gateway calls made.
    pub attempt_count: i32,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Time spent, back-off included.
    pub processing_time: Duration,
    /// The gateway's charge id on success.
    pub charge_id: Option<Uuid>,
}

/// Runs payments through a gateway with retries and a circuit breaker.
pub struct PaymentProcessor<G> {
    gateway: G,
    breaker: CircuitBreaker,
    settings: PaymentSettings,
}

impl<G: PaymentGateway> PaymentProcessor<G> {
    /// A processor over `gateway`.
    pub fn new(gateway: G, breaker: CircuitBreaker, settings: PaymentSettings) -> Self {
        Self {
            gateway,
            breaker,
            settings,
        }
    }

    /// The circuit breaker, for observation.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Pays `request`. `Err` only when our side failed (e.g. the ledger database): retry later.
    pub async fn pay(&self, request: &ChargeRequest) -> Result<PaymentResult, GatewayUnavailable> {
        let started = Instant::now();
        let mut attempts: u32 = 0;
        let failed = |attempts: u32, message: String| PaymentResult {
            success: false,
            attempt_count: attempts as i32,
            error_message: Some(message),
            processing_time: started.elapsed(),
            charge_id: None,
        };
        loop {
            if !self.breaker.try_acquire() {
                tracing::warn!(
                    order_id = request.idempotency_key,
                    attempts,
                    "circuit breaker open, failing fast"
                );
                return Ok(failed(attempts, BREAKER_OPEN_MESSAGE.to_owned()));
            }
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
            span.record("payment.latency_ms", latency_ms);
            span.record(
                "payment.outcome",
                match &outcome {
                    Ok(Ok(ChargeOutcome::Approved { .. })) => "approved",
                    Ok(Ok(ChargeOutcome::Declined { .. })) => "declined",
                    Ok(Err(_)) => "unavailable",
                    Err(_) => "timeout",
                },
            );
            match outcome {
                Ok(Ok(ChargeOutcome::Approved { charge_id })) => {
                    self.breaker.record_success();
                    tracing::info!(
                        order_id = request.idempotency_key,
                        attempt = attempts,
                        latency_ms,
                        outcome = "approved",
                        "gateway attempt"
                    );
                    return Ok(PaymentResult {
                        success: true,
                        attempt_count: attempts as i32,
                        error_message: None,
                        processing_time: started.elapsed(),
                        charge_id: Some(charge_id),
                    });
                }
                Ok(Ok(ChargeOutcome::Declined { reason })) => {
                    self.breaker.record_failure();
                    tracing::info!(
                        order_id = request.idempotency_key,
                        attempt = attempts,
                        latency_ms,
                        outcome = "declined",
                        "gateway attempt"
                    );
                    return Ok(failed(attempts, reason));
                }
                Ok(Err(unavailable)) => {
                    self.breaker.record_inconclusive();
                    return Err(unavailable);
                }
                Err(_elapsed) => {
                    self.breaker.record_failure();
                    tracing::info!(
                        order_id = request.idempotency_key,
                        attempt = attempts,
                        latency_ms,
                        outcome = "timeout",
                        "gateway attempt"
                    );
                    if attempts >= self.settings.max_attempts {
                        return Ok(failed(
                            attempts,
                            format!("Payment gateway timeout after {attempts} attempts"),
                        ));
                    }
                    let backoff =
                        self.settings.retry_base_delay * 2_u32.saturating_pow(attempts - 1);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::config::BreakerSettings;

    /// A scripted gateway: each call takes the given time and returns the given outcome.
    struct ScriptedGateway {
        script: Mutex<VecDeque<(Duration, ChargeOutcome)>>,
        calls: Mutex<Vec<Instant>>,
    }

    impl ScriptedGateway {
        fn new(script: Vec<(u64, ChargeOutcome)>) -> Self {
            Self {
                script: Mutex::new(
                    script
                        .into_iter()
                        .map(|(ms, outcome)| (Duration::from_millis(ms), outcome))
                        .collect(),
                ),
                calls: Mutex::new(Vec::new()),
            }
        }
    }

    impl PaymentGateway for ScriptedGateway {
        async fn charge(
            &self,
            _request: &ChargeRequest,
        ) -> Result<ChargeOutcome, GatewayUnavailable> {
            self.calls.lock().unwrap().push(Instant::now());
            let (latency, outcome) = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .expect("unexpected call");
            tokio::time::sleep(latency).await;
            Ok(outcome)
        }
    }

    fn approved() -> ChargeOutcome {
        ChargeOutcome::Approved {
            charge_id: Uuid::nil(),
        }
    }

    fn processor(
        script: Vec<(u64, ChargeOutcome)>,
        threshold: u32,
    ) -> PaymentProcessor<ScriptedGateway> {
        PaymentProcessor::new(
            ScriptedGateway::new(script),
            CircuitBreaker::new(BreakerSettings {
                failure_threshold: threshold,
                recovery_timeout: Duration::from_secs(30),
            }),
            PaymentSettings {
                timeout: Duration::from_secs(4),
                max_attempts: 3,
                retry_base_delay: Duration::from_secs(1),
            },
        )
    }

    fn request() -> ChargeRequest {
        ChargeRequest {
            idempotency_key: "order-1".into(),
            amount: rust_decimal::Decimal::new(1299, 2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_timeouts_with_exponential_backoff() {
        let processor = processor(
            vec![(5000, approved()), (4500, approved()), (1000, approved())],
            10,
        );
        let result = processor.pay(&request()).await.unwrap();
        assert!(result.success);
        assert_eq!(result.attempt_count, 3);
        // 4 s timeout + 1 s back-off + 4 s timeout + 2 s back-off + 1 s call.
        assert_eq!(result.processing_time, Duration::from_secs(12));
        let calls = processor.gateway.calls.lock().unwrap().clone();
        assert_eq!(calls[1] - calls[0], Duration::from_secs(5));
        assert_eq!(calls[2] - calls[1], Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let processor = processor(
            vec![(5000, approved()), (5000, approved()), (5000, approved())],
            10,
        );
        let result = processor.pay(&request()).await.unwrap();
        assert!(!result.success);
        assert_eq!(result.attempt_count, 3);
        assert_eq!(
            result.error_message.as_deref(),
            Some("Payment gateway timeout after 3 attempts")
        );
        assert_eq!(
            result.processing_time,
            Duration::from_secs(4 + 1 + 4 + 2 + 4)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn declines_are_not_retried() {
        let processor = processor(
            vec![(
                1500,
                ChargeOutcome::Declined {
                    reason: "Insufficient funds".into(),
                },
            )],
            10,
        );
        let result = processor.pay(&request()).await.unwrap();
        assert_eq!((result.success, result.attempt_count), (false, 1));
        assert_eq!(result.error_message.as_deref(), Some("Insufficient funds"));
        assert_eq!(result.processing_time, Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_fails_fast_with_zero_attempts() {
        let declined = || {
            (
                10,
                ChargeOutcome::Declined {
                    reason: "Insufficient funds".into(),
                },
            )
        };
        let processor = processor(vec![declined(), declined()], 2);
        processor.pay(&request()).await.unwrap();
        processor.pay(&request()).await.unwrap();
        let result = processor.pay(&request()).await.unwrap();
        assert_eq!(result.attempt_count, 0);
        assert_eq!(result.error_message.as_deref(), Some(BREAKER_OPEN_MESSAGE));
        assert_eq!(
            processor.gateway.calls.lock().unwrap().len(),
            2,
            "the gateway was not called"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opening_mid_retries_stops_them() {
        let processor = processor(vec![(5000, approved()), (5000, approved())], 2);
        let result = processor.pay(&request()).await.unwrap();
        assert_eq!(result.attempt_count, 2);
        assert_eq!(result.error_message.as_deref(), Some(BREAKER_OPEN_MESSAGE));
    }
}
