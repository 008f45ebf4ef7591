//! Unit tests of the parent module.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::breaker::BreakerState;
use crate::config::BreakerSettings;

/// A scripted gateway: each call takes the given time and returns the given outcome.
struct ScriptedGateway {
    script: Mutex<VecDeque<(Duration, ChargeOutcome)>>,
    calls: Mutex<Vec<Instant>>,
    /// The ledger: the decision that stands, per idempotency key.
    decided: Mutex<std::collections::HashMap<String, ChargeOutcome>>,
    /// Record the decision before the (possibly too slow) reply.
    decide_before_reply: bool,
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
            decided: Mutex::new(std::collections::HashMap::new()),
            decide_before_reply: false,
        }
    }
}

impl PaymentGateway for ScriptedGateway {
    async fn decision(&self, key: &str) -> Result<Option<ChargeOutcome>, GatewayUnavailable> {
        Ok(self.decided.lock().unwrap().get(key).cloned())
    }

    async fn void(
        &self,
        request: &ChargeRequest,
        reason: &str,
    ) -> Result<ChargeOutcome, GatewayUnavailable> {
        let mut decided = self.decided.lock().unwrap();
        let voided = ChargeOutcome::Voided {
            reason: reason.to_owned(),
        };
        Ok(decided
            .entry(request.idempotency_key.clone())
            .or_insert(voided)
            .clone())
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayUnavailable> {
        self.calls.lock().unwrap().push(Instant::now());
        let (latency, outcome) = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .expect("unexpected call");
        let key = request.idempotency_key.clone();
        if self.decide_before_reply {
            self.decided
                .lock()
                .unwrap()
                .entry(key.clone())
                .or_insert(outcome.clone());
        }
        tokio::time::sleep(latency).await;
        Ok(self
            .decided
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(outcome)
            .clone())
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
            minimum_calls: threshold,
            // Long enough to hold every call of one payment (4 s timeouts, back-off).
            window: Duration::from_secs(20),
            ..BreakerSettings::default()
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
async fn a_charge_that_lands_after_the_timeout_wins_over_giving_up() {
    let mut gateway = ScriptedGateway::new(vec![
        (5000, approved()),
        (5000, approved()),
        (5000, approved()),
    ]);
    gateway.decide_before_reply = true;
    let processor = PaymentProcessor::new(
        gateway,
        CircuitBreaker::new(BreakerSettings {
            failure_threshold: 10,
            minimum_calls: 10,
            ..BreakerSettings::default()
        }),
        PaymentSettings {
            timeout: Duration::from_secs(4),
            max_attempts: 1,
            retry_base_delay: Duration::from_secs(1),
        },
    );
    let result = processor.pay(&request()).await.unwrap();
    assert!(
        result.success,
        "the gateway charged, so the payment succeeded: {result:?}"
    );
    assert_eq!(result.attempt_count, 1);
}

#[tokio::test(start_paused = true)]
async fn giving_up_voids_so_nothing_can_charge_later() {
    let processor = processor(
        vec![(5000, approved()), (5000, approved()), (5000, approved())],
        10,
    );
    let result = processor.pay(&request()).await.unwrap();
    assert!(!result.success);
    let voided = matches!(
        processor.gateway.decided.lock().unwrap().get("order-1"),
        Some(ChargeOutcome::Voided { .. })
    );
    assert!(voided, "giving up voids the order at the gateway");
    let again = processor.pay(&request()).await.unwrap();
    assert!(
        !again.success,
        "a redelivery sees the void and does not call the gateway"
    );
    assert_eq!(again.attempt_count, 0);
    assert_eq!(processor.gateway.calls.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_recorded_decision_is_used_without_a_call() {
    let processor = processor(vec![], 10);
    processor
        .gateway
        .decided
        .lock()
        .unwrap()
        .insert("order-1".into(), approved());
    let result = processor.pay(&request()).await.unwrap();
    assert!(result.success);
    assert!(processor.gateway.calls.lock().unwrap().is_empty());
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
    // Two timeouts open a breaker with threshold 2.
    let processor = processor(vec![(5000, approved()), (5000, approved())], 2);
    let order = |key: &str| ChargeRequest {
        idempotency_key: key.into(),
        ..request()
    };
    processor.pay(&order("order-1")).await.unwrap();
    let result = processor.pay(&order("order-2")).await.unwrap();
    assert_eq!(result.attempt_count, 0);
    assert_eq!(result.error_message.as_deref(), Some(BREAKER_OPEN_MESSAGE));
    assert_eq!(
        processor.gateway.calls.lock().unwrap().len(),
        2,
        "the gateway was not called"
    );
}

#[tokio::test(start_paused = true)]
async fn declines_do_not_trip_the_breaker() {
    let declined = || {
        (
            10,
            ChargeOutcome::Declined {
                reason: "Insufficient funds".into(),
            },
        )
    };
    let processor = processor((0..5).map(|_| declined()).collect(), 2);
    for index in 0..5 {
        let order = ChargeRequest {
            idempotency_key: format!("order-{index}"),
            ..request()
        };
        let result = processor.pay(&order).await.unwrap();
        assert_eq!((result.success, result.attempt_count), (false, 1));
    }
    assert_eq!(processor.breaker().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_opening_mid_retries_stops_them() {
    let processor = processor(vec![(5000, approved()), (5000, approved())], 2);
    let result = processor.pay(&request()).await.unwrap();
    assert_eq!(result.attempt_count, 2);
    assert_eq!(result.error_message.as_deref(), Some(BREAKER_OPEN_MESSAGE));
}
