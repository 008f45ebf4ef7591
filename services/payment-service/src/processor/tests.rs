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
    /// The ledger cannot be read.
    ledger_down: bool,
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
            ledger_down: false,
        }
    }
}

impl PaymentGateway for ScriptedGateway {
    async fn decision(&self, key: &str) -> Result<Option<ChargeOutcome>, GatewayUnavailable> {
        if self.ledger_down {
            return Err(GatewayUnavailable(anyhow::anyhow!("the ledger is down")));
        }
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

/// Calls counted across deliveries, in memory: `made_before` from earlier
/// deliveries, and how many this one counted.
struct Counted {
    made_before: u32,
    counted: std::sync::atomic::AtomicU32,
    fail: bool,
}

impl Counted {
    fn after(made_before: u32) -> Self {
        Self {
            made_before,
            counted: std::sync::atomic::AtomicU32::new(0),
            fail: false,
        }
    }

    fn counted(&self) -> u32 {
        self.counted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl CallCount for Counted {
    fn made_before(&self) -> u32 {
        self.made_before
    }

    async fn reserve(&self) -> Result<(), GatewayUnavailable> {
        if self.fail {
            return Err(GatewayUnavailable(anyhow::anyhow!("the database is down")));
        }
        self.counted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_continues_the_retry_budget_of_earlier_deliveries() {
    // Two calls timed out in a delivery cut by a restart: one call is left.
    let processor = processor(vec![(5000, approved()), (100, approved())], 10);
    let calls = Counted::after(2);
    let result = processor.pay_counted(&request(), &calls).await.unwrap();
    assert!(!result.success);
    assert_eq!(result.outcome, PaymentOutcome::TimedOut);
    assert_eq!(
        result.attempt_count, 3,
        "the earlier calls are reported too"
    );
    assert_eq!(
        result.error_message.as_deref(),
        Some("Payment gateway timeout after 3 attempts")
    );
    assert_eq!(processor.gateway.calls.lock().unwrap().len(), 1);
    assert_eq!(
        calls.counted(),
        1,
        "the call was counted before it was made"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_makes_no_call_and_voids() {
    let processor = processor(vec![(100, approved())], 10);
    let calls = Counted::after(3);
    let result = processor.pay_counted(&request(), &calls).await.unwrap();
    assert!(!result.success);
    assert_eq!(result.attempt_count, 3);
    assert!(
        processor.gateway.calls.lock().unwrap().is_empty(),
        "no fourth call"
    );
    assert_eq!(calls.counted(), 0);
    assert!(matches!(
        processor.gateway.decision("order-1").await.unwrap(),
        Some(ChargeOutcome::Voided { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn every_call_is_counted_and_none_is_made_uncounted() {
    let counted = processor(vec![(5000, approved()), (100, approved())], 10);
    let calls = Counted::after(0);
    let result = counted.pay_counted(&request(), &calls).await.unwrap();
    assert!(result.success);
    assert_eq!(result.attempt_count, 2);
    assert_eq!(calls.counted(), 2);

    let uncounted = processor(vec![(100, approved())], 10);
    let broken = Counted {
        fail: true,
        ..Counted::after(0)
    };
    assert!(uncounted.pay_counted(&request(), &broken).await.is_err());
    assert!(
        uncounted.gateway.calls.lock().unwrap().is_empty(),
        "a call that could not be counted is not made"
    );
    assert_eq!(uncounted.breaker().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_try_that_fails_before_the_call_counts_no_call() {
    let mut gateway = ScriptedGateway::new(vec![(100, approved())]);
    gateway.ledger_down = true;
    let processor = PaymentProcessor::new(
        gateway,
        CircuitBreaker::new(BreakerSettings::default()),
        PaymentSettings {
            timeout: Duration::from_secs(4),
            max_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
        },
    );
    let calls = Counted::after(0);
    for _ in 0..5 {
        assert!(processor.pay_counted(&request(), &calls).await.is_err());
    }
    assert_eq!(
        calls.counted(),
        0,
        "five failed tries spent none of the budget"
    );
    assert!(processor.gateway.calls.lock().unwrap().is_empty());
}
