//! A circuit breaker guarding the payment gateway, made for thousands of
//! payments in flight at once (the same model as resilience4j's):
//!
//! * **Closed**: every call goes through; the outcomes of the last
//!   `CIRCUIT_BREAKER_WINDOW_SECONDS` are kept in a sliding window (one bucket
//!   per second, as resilience4j's time-based window). The breaker opens when,
//!   in that window, there are at least `CIRCUIT_BREAKER_MINIMUM_CALLS`
//!   outcomes, at least `CIRCUIT_BREAKER_FAILURE_THRESHOLD` failures *and* a
//!   failure share of at least `CIRCUIT_BREAKER_FAILURE_RATE`. A window in
//!   time, not in calls: with hundreds of payments completing a second, the
//!   last hundred calls are a fraction of a second, and a moment's stall (a
//!   checkpoint, a burst of slow answers) would open it; a gateway that
//!   stopped answering still opens it within seconds.
//! * **Open**: every call fails fast for `CIRCUIT_BREAKER_RECOVERY_TIMEOUT`.
//! * **Half-open**: at most `CIRCUIT_BREAKER_HALF_OPEN_CALLS` trial calls go
//!   through; once they have all answered, the breaker closes (with an empty
//!   window) if their failure share is below the rate, and opens again
//!   otherwise (at once, as soon as enough trials failed to decide it).
//!
//! Only a timeout or a gateway error is a failure: a decline is an answer
//! from a gateway that works (the card was refused). A call whose outcome says
//! nothing about the gateway (our own database failed, the order was voided by
//! someone else) releases its half-open slot and counts for nothing.
//!
//! Every call carries a [`Permit`] from the state it started in: the outcome
//! of a call that started before the last state change does not move the
//! state (a slow success from before the breaker opened does not close it; a
//! late timeout from before it closed does not count against the new window).
//! State changes are logged with the state's name and counted.

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
    /// A bounded number of trial calls is allowed.
    HalfOpen,
}

/// What a call told about the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The gateway answered: approved or declined.
    Answered,
    /// The gateway timed out or failed.
    Failed,
    /// Nothing about the gateway (our own database failed, a void).
    Inconclusive,
}

/// The right to make one gateway call, from the state it was given in; hand
/// it back with the call's outcome to [`CircuitBreaker::record`]. A permit
/// dropped without an outcome (its call abandoned: a try cut by the handler's
/// timeout, shutdown) counts as [`CallOutcome::Inconclusive`], so that a
/// half-open trial slot is never lost.
#[derive(Debug)]
#[must_use = "a permit's outcome must be recorded"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    recorded: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .apply(self.generation, CallOutcome::Inconclusive);
        }
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        admitted: u32,
        answered: u32,
        failed: u32,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Incremented at every state change: permits of an older generation
    /// are stale.
    generation: u64,
    /// The outcomes while closed, one bucket per second of the window.
    buckets: Vec<Bucket>,
}

/// The outcomes recorded in one second.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Seconds since the breaker's epoch this bucket counts (buckets are reused).
    second: u64,
    calls: u32,
    failures: u32,
}

/// Thread-safe circuit breaker.
pub struct CircuitBreaker {
    settings: BreakerSettings,
    /// Where the window's seconds are counted from.
    epoch: Instant,
    inner: Mutex<Inner>,
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
        let seconds = settings.window.as_secs().max(1) as usize;
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                buckets: vec![Bucket::default(); seconds],
            }),
            epoch: Instant::now(),
            settings,
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (an expired open state reads as half-open).
    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// A permit to call the gateway now, or `None` to fail fast.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => {}
            State::Open { until } if Instant::now() >= until => {
                self.enter(
                    &mut inner,
                    State::HalfOpen {
                        admitted: 1,
                        answered: 0,
                        failed: 0,
                    },
                );
            }
            State::Open { .. } => return None,
            State::HalfOpen {
                ref mut admitted, ..
            } => {
                if *admitted >= self.settings.half_open_calls {
                    return None;
                }
                *admitted += 1;
            }
        }
        Some(Permit {
            breaker: self,
            generation: inner.generation,
            recorded: false,
        })
    }

    /// Records what the call made with `permit` told about the gateway. The
    /// outcome of a call that started before the last state change is ignored.
    pub fn record(&self, mut permit: Permit<'_>, outcome: CallOutcome) {
        permit.recorded = true;
        self.apply(permit.generation, outcome);
    }

    fn apply(&self, generation: u64, outcome: CallOutcome) {
        let mut inner = self.lock();
        if generation != inner.generation {
            return;
        }
        let settings = &self.settings;
        match inner.state {
            State::Closed => {
                let failed = match outcome {
                    CallOutcome::Answered => false,
                    CallOutcome::Failed => true,
                    CallOutcome::Inconclusive => return,
                };
                let now = Instant::now()
                    .saturating_duration_since(self.epoch)
                    .as_secs();
                let size = inner.buckets.len() as u64;
                let bucket = &mut inner.buckets[(now % size) as usize];
                if bucket.second != now {
                    *bucket = Bucket {
                        second: now,
                        ..Bucket::default()
                    };
                }
                bucket.calls += 1;
                bucket.failures += u32::from(failed);
                let (calls, failures) = inner
                    .buckets
                    .iter()
                    .filter(|bucket| bucket.second + size > now)
                    .fold((0_u32, 0_u32), |(calls, failures), bucket| {
                        (calls + bucket.calls, failures + bucket.failures)
                    });
                if calls >= settings.minimum_calls
                    && failures >= settings.failure_threshold
                    && f64::from(failures) >= settings.failure_rate * f64::from(calls)
                {
                    self.open(
                        &mut inner,
                        format!("{failures} of {calls} calls failed in the last {size} s"),
                    );
                }
            }
            State::HalfOpen {
                ref mut admitted,
                ref mut answered,
                ref mut failed,
            } => {
                match outcome {
                    CallOutcome::Answered => *answered += 1,
                    CallOutcome::Failed => *failed += 1,
                    // The slot goes to another trial.
                    CallOutcome::Inconclusive => {
                        *admitted -= 1;
                        return;
                    }
                }
                let trials = f64::from(settings.half_open_calls);
                let (answered, failed) = (*answered, *failed);
                if f64::from(failed) >= settings.failure_rate * trials {
                    self.open(
                        &mut inner,
                        format!(
                            "{failed} of {} trial calls failed",
                            settings.half_open_calls
                        ),
                    );
                } else if answered + failed >= settings.half_open_calls {
                    self.enter(&mut inner, State::Closed);
                }
            }
            // No permit is handed out while open.
            State::Open { .. } => {}
        }
    }

    fn open(&self, inner: &mut Inner, why: String) {
        let until = Instant::now() + self.settings.recovery_timeout;
        tracing::warn!(
            state = "open",
            why,
            recovery_timeout_ms = self.settings.recovery_timeout.as_millis() as u64,
            "circuit breaker opened"
        );
        self.enter(inner, State::Open { until });
    }

    /// A state change: a new generation, an empty window.
    fn enter(&self, inner: &mut Inner, state: State) {
        let to = match state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        };
        match to {
            "closed" => tracing::info!(state = to, "circuit breaker closed"),
            "half_open" => tracing::info!(
                state = to,
                trial_calls = self.settings.half_open_calls,
                "circuit breaker half-open, letting trial calls through"
            ),
            _ => {}
        }
        inner.state = state;
        inner.generation += 1;
        inner.buckets.fill(Bucket::default());
        self.transitions
            .get_or_create(&TransitionLabel { to })
            .inc();
    }
}

#[cfg(test)]
mod tests;
