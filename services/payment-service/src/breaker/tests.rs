use std::collections::VecDeque;
use std::time::Duration;

use super::*;

/// Threshold 5, rate 50 %, window 10 s, at least 10 calls, 3 trials, 30 s open.
fn settings() -> BreakerSettings {
    BreakerSettings {
        failure_threshold: 5,
        recovery_timeout: Duration::from_secs(30),
        failure_rate: 0.5,
        window: Duration::from_secs(10),
        minimum_calls: 10,
        half_open_calls: 3,
    }
}

fn call(breaker: &CircuitBreaker, outcome: CallOutcome) -> bool {
    match breaker.try_acquire() {
        Some(permit) => {
            breaker.record(permit, outcome);
            true
        }
        None => false,
    }
}

fn open(breaker: &CircuitBreaker) {
    for _ in 0..10 {
        call(breaker, CallOutcome::Failed);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_only_with_enough_calls_failures_and_failure_share() {
    let breaker = CircuitBreaker::new(settings());
    for _ in 0..9 {
        assert!(call(&breaker, CallOutcome::Failed));
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "9 failures, but fewer calls than the minimum"
    );
    assert!(call(&breaker, CallOutcome::Failed));
    assert_eq!(breaker.state(), BreakerState::Open);
    assert!(breaker.try_acquire().is_none(), "fails fast while open");

    // Half the window failing, not more: 5 of 10 is the rate exactly.
    let breaker = CircuitBreaker::new(settings());
    for index in 0..9 {
        let outcome = if index % 2 == 0 {
            CallOutcome::Answered
        } else {
            CallOutcome::Failed
        };
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), BreakerState::Closed, "4 of 9");
    call(&breaker, CallOutcome::Failed);
    assert_eq!(breaker.state(), BreakerState::Open, "5 of 10");
}

#[tokio::test(start_paused = true)]
async fn a_high_share_of_few_failures_does_not_open_it() {
    // The failure share is reached (4 of 10) with a 40 % rate, but the
    // threshold of 5 failures is not: closed.
    let breaker = CircuitBreaker::new(BreakerSettings {
        failure_rate: 0.4,
        ..settings()
    });
    for index in 0..20 {
        let outcome = if index % 5 < 2 {
            CallOutcome::Failed
        } else {
            CallOutcome::Answered
        };
        call(&breaker, outcome);
        if index == 9 {
            assert_eq!(breaker.state(), BreakerState::Closed, "4 failures < 5");
        }
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "8 of 20: both the threshold and the rate"
    );
}

#[tokio::test(start_paused = true)]
async fn the_window_slides() {
    let breaker = CircuitBreaker::new(settings());
    // Failures 11 s ago (too few to open it then) have left the 10 s
    // window: counted, they would open it with the 9 below.
    for _ in 0..4 {
        call(&breaker, CallOutcome::Failed);
    }
    tokio::time::advance(Duration::from_secs(6)).await;
    for _ in 0..6 {
        call(&breaker, CallOutcome::Answered);
    }
    assert_eq!(breaker.state(), BreakerState::Closed, "4 failures < 5");
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..4 {
        call(&breaker, CallOutcome::Answered);
    }
    for _ in 0..9 {
        call(&breaker, CallOutcome::Failed);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "9 of 19 in the last 10 s"
    );
    call(&breaker, CallOutcome::Failed);
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "10 of 20 in the last 10 s"
    );
}

#[tokio::test(start_paused = true)]
async fn inconclusive_outcomes_count_for_nothing() {
    let breaker = CircuitBreaker::new(settings());
    for _ in 0..100 {
        call(&breaker, CallOutcome::Inconclusive);
    }
    for _ in 0..9 {
        call(&breaker, CallOutcome::Failed);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn calls_from_before_a_state_change_do_not_move_the_state() {
    let breaker = CircuitBreaker::new(settings());
    let slow = breaker.try_acquire().unwrap();
    open(&breaker);
    // A success of a call that started while closed does not close it.
    breaker.record(slow, CallOutcome::Answered);
    assert_eq!(breaker.state(), BreakerState::Open);

    tokio::time::advance(Duration::from_secs(30)).await;
    let trials: Vec<Permit> = (0..3).filter_map(|_| breaker.try_acquire()).collect();
    assert_eq!(trials.len(), 3);
    for trial in trials {
        breaker.record(trial, CallOutcome::Answered);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);

    // A late failure from before the breaker closed does not count against
    // the new window: ten of them, and still closed.
    let breaker = CircuitBreaker::new(settings());
    let late: Vec<Permit> = (0..10).filter_map(|_| breaker.try_acquire()).collect();
    open(&breaker);
    tokio::time::advance(Duration::from_secs(30)).await;
    for _ in 0..3 {
        call(&breaker, CallOutcome::Answered);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    for permit in late {
        breaker.record(permit, CallOutcome::Failed);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_a_bounded_number_of_trials() {
    let breaker = CircuitBreaker::new(settings());
    open(&breaker);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(breaker.try_acquire().is_none());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    let trials: Vec<Permit> = (0..10).filter_map(|_| breaker.try_acquire()).collect();
    assert_eq!(trials.len(), 3, "three trial calls, no more");
    let mut trials = trials.into_iter();
    breaker.record(trials.next().unwrap(), CallOutcome::Answered);
    breaker.record(trials.next().unwrap(), CallOutcome::Failed);
    assert_eq!(
        breaker.state(),
        BreakerState::HalfOpen,
        "undecided: 1 of 3 failed"
    );
    breaker.record(trials.next().unwrap(), CallOutcome::Answered);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "1 of 3 failed: below 50 %"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_trials_open_it_again_at_once() {
    let breaker = CircuitBreaker::new(settings());
    open(&breaker);
    tokio::time::advance(Duration::from_secs(30)).await;
    let trials: Vec<Permit> = (0..3).filter_map(|_| breaker.try_acquire()).collect();
    let mut trials = trials.into_iter();
    breaker.record(trials.next().unwrap(), CallOutcome::Failed);
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.record(trials.next().unwrap(), CallOutcome::Failed);
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "2 of 3 trials failed: open without waiting for the third"
    );
    // The third trial started in half-open: stale now.
    breaker.record(trials.next().unwrap(), CallOutcome::Answered);
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(breaker.try_acquire().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_trial_frees_its_slot() {
    let breaker = CircuitBreaker::new(settings());
    open(&breaker);
    tokio::time::advance(Duration::from_secs(30)).await;
    let trials: Vec<Permit> = (0..3).filter_map(|_| breaker.try_acquire()).collect();
    assert!(breaker.try_acquire().is_none());
    let mut trials = trials.into_iter();
    breaker.record(trials.next().unwrap(), CallOutcome::Inconclusive);
    assert!(breaker.try_acquire().is_some(), "another trial may go");
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_trial_frees_its_slot() {
    let breaker = CircuitBreaker::new(settings());
    open(&breaker);
    tokio::time::advance(Duration::from_secs(30)).await;
    let trials: Vec<Permit> = (0..3).filter_map(|_| breaker.try_acquire()).collect();
    assert!(breaker.try_acquire().is_none(), "every trial slot is taken");
    // The calls are abandoned (their tries cut, the service stopping): their
    // permits are dropped without an outcome.
    drop(trials);
    let again: Vec<Permit> = (0..3).filter_map(|_| breaker.try_acquire()).collect();
    assert_eq!(again.len(), 3, "the slots went to new trials");
    for permit in again {
        breaker.record(permit, CallOutcome::Answered);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "and the trials closed it"
    );
}

/// A deterministic stream of outcomes: `failed` of every 1,000 calls fail,
/// spread out (a multiplicative hash of the call's index).
fn fails(index: u64, failed_per_mille: u64) -> bool {
    (index.wrapping_mul(2_654_435_761) % 1000) < failed_per_mille
}

/// The seed's defaults with thousands of payments in flight: permits taken by
/// 1,792 calls at once, outcomes coming back 500 a second.
#[tokio::test(start_paused = true)]
async fn under_concurrency_it_trips_on_a_failing_gateway_only() {
    let breaker = CircuitBreaker::new(BreakerSettings::default());
    let transitions = |breaker: &CircuitBreaker, to: &'static str| {
        breaker
            .transitions
            .get_or_create(&TransitionLabel { to })
            .get()
    };
    let mut in_flight: VecDeque<Permit> = VecDeque::new();
    let mut index = 0_u64;
    // The seed's gateway: 15 % declines (answers) and a few timeouts (5 %).
    for _ in 0..50_000 {
        while in_flight.len() < 1_792 {
            in_flight.push_back(breaker.try_acquire().expect("closed"));
        }
        let permit = in_flight.pop_front().unwrap();
        tokio::time::advance(Duration::from_millis(2)).await;
        index += 1;
        let outcome = if fails(index, 50) {
            CallOutcome::Failed
        } else {
            CallOutcome::Answered
        };
        breaker.record(permit, outcome);
    }
    assert_eq!(
        transitions(&breaker, "open"),
        0,
        "no trip with the default gateway"
    );

    // The gateway times out 90 % of the time: it opens within seconds.
    let failing_since = Instant::now();
    while breaker.state() == BreakerState::Closed {
        while in_flight.len() < 1_792 {
            match breaker.try_acquire() {
                Some(permit) => in_flight.push_back(permit),
                None => break,
            }
        }
        let permit = in_flight.pop_front().unwrap();
        tokio::time::advance(Duration::from_millis(2)).await;
        index += 1;
        let outcome = if fails(index, 900) {
            CallOutcome::Failed
        } else {
            CallOutcome::Answered
        };
        breaker.record(permit, outcome);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let took = failing_since.elapsed();
    assert!(
        took <= Duration::from_secs(5),
        "opened {took:?} after the gateway started failing"
    );
    // The calls still in flight answer late: no effect on the open breaker.
    for permit in in_flight.drain(..) {
        breaker.record(permit, CallOutcome::Answered);
    }
    assert_eq!(breaker.state(), BreakerState::Open);

    // Still failing at the first recovery: open again; healthy at the next: closed.
    tokio::time::advance(Duration::from_secs(30)).await;
    while let Some(permit) = breaker.try_acquire() {
        breaker.record(permit, CallOutcome::Failed);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    while let Some(permit) = breaker.try_acquire() {
        breaker.record(permit, CallOutcome::Answered);
        if breaker.state() == BreakerState::Closed {
            break;
        }
    }
    assert_eq!(breaker.state(), BreakerState::Closed, "recovered");
    assert_eq!(transitions(&breaker, "open"), 2);
    assert_eq!(transitions(&breaker, "closed"), 1);
}
