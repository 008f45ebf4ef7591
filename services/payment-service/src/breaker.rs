//! A circuit breaker (closed → open → half-open → closed) guarding the payment
//! gateway: N consecutive failures open it; while open every call fails fast;
//! after the recovery timeout one trial call is let through (half-open); its
//! success closes the breaker, its failure opens it again. State changes are
//! logged with the state name, so they can be followed in the logs.

use std::sync::{Mutex, MutexGuard, PoisonError};

use foodorder_runtime::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use tokio::time::Instant;

use crate::config::BreakerSettings;

/// The breaker's externally visible state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One trial call is allowed.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// Thread-safe circuit breaker.
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<State>,
    transitions: Family<TransitionLabel, Counter>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The `to` label of the transitions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabel {
    to: &'static str,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
            transitions: Family::default(),
        }
    }

    /// Registers `foodorder_payment_breaker_state` (0 closed, 1 half-open,
    /// 2 open) and `foodorder_payment_breaker_transitions_total{to}` in `metrics`.
    pub fn register(self: &std::sync::Arc<Self>, metrics: &Metrics) {
        for to in ["closed", "half_open", "open"] {
            drop(self.transitions.get_or_create(&TransitionLabel { to }));
        }
        metrics.register(
            "foodorder_payment_breaker_transitions",
            "Circuit-breaker state changes, by the state entered",
            self.transitions.clone(),
        );
        let gauge = metrics.gauge(
            "foodorder_payment_breaker_state",
            "Circuit-breaker state: 0 closed, 1 half-open, 2 open",
        );
        let breaker = std::sync::Arc::downgrade(self);
        metrics.on_scrape(move || {
            if let Some(breaker) = breaker.upgrade() {
                gauge.set(match breaker.state() {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                });
            }
        });
    }

    fn entered(&self, to: &'static str) {
        self.transitions
            .get_or_create(&TransitionLabel { to })
            .inc();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (an expired open state reads as half-open).
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to the gateway now. A `true` in half-open state
    /// makes the caller the trial; it must report its outcome.
    pub fn try_acquire(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen {
                    trial_in_flight: true,
                };
                tracing::info!(
                    state = "half_open",
                    "circuit breaker half-open, letting a trial call through"
                );
                self.entered("half_open");
                true
            }
            State::Open { .. } => false,
            State::HalfOpen {
                ref mut trial_in_flight,
            } => {
                if *trial_in_flight {
                    false
                } else {
                    *trial_in_flight = true;
                    true
                }
            }
        }
    }

    /// The gateway call succeeded.
    pub fn record_success(&self) {
        let mut state = self.lock();
        if !matches!(
            *state,
            State::Closed {
                consecutive_failures: 0
            }
        ) {
            if !matches!(*state, State::Closed { .. }) {
                tracing::info!(state = "closed", "circuit breaker closed");
                self.entered("closed");
            }
            *state = State::Closed {
                consecutive_failures: 0,
            };
        }
    }

    /// The gateway call failed (decline or timeout).
    pub fn record_failure(&self) {
        let mut state = self.lock();
        let open = match *state {
            State::Closed {
                ref mut consecutive_failures,
            } => {
                *consecutive_failures += 1;
                *consecutive_failures >= self.settings.failure_threshold
            }
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.settings.recovery_timeout,
            };
            tracing::warn!(
                state = "open",
                failure_threshold = self.settings.failure_threshold,
                recovery_timeout_ms = self.settings.recovery_timeout.as_millis() as u64,
                "circuit breaker opened"
            );
            self.entered("open");
        }
    }

    /// The call ended without a verdict on the gateway (e.g. our own database
    /// failed): a half-open trial slot is released, counters are unchanged.
    pub fn record_inconclusive(&self) {
        if let State::HalfOpen {
            ref mut trial_in_flight,
        } = *self.lock()
        {
            *trial_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failure_threshold: 3,
            recovery_timeout: Duration::from_secs(30),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers() {
        let breaker = breaker();
        for _ in 0..2 {
            assert!(breaker.try_acquire());
            breaker.record_failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.try_acquire());
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.try_acquire(), "fails fast while open");

        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!breaker.try_acquire());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.try_acquire(), "trial after the recovery timeout");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.try_acquire(), "only one trial at a time");
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_trial_opens_again() {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.record_failure();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(breaker.try_acquire());
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!breaker.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let breaker = breaker();
        breaker.record_failure();
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn inconclusive_trial_frees_the_slot() {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.record_failure();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(breaker.try_acquire());
        breaker.record_inconclusive();
        assert!(breaker.try_acquire(), "another trial may go");
    }
}
