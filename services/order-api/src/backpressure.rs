//! Backpressure: when the pipeline behind PlaceOrder cannot keep up, the order
//! API says so (RESOURCE_EXHAUSTED with a google.rpc.RetryInfo) instead of
//! letting the backlog grow without bound.
//!
//! The signal is the number of orders awaiting their payment outcome (status
//! PROCESSING; PENDING, allowed but unused, counts alike). That is the whole
//! pipeline's backlog — outbox, relay, broker, payment-service, the outcome
//! coming back — in one number; it is the order API's own data (no rights on
//! another service's consumer groups are needed); every instance sees the same
//! number (one database); and by Little's law it is the end-to-end rate times
//! the end-to-end latency, so a bound on it bounds the latency a newly accepted
//! order can expect at the rate the platform sustains.
//!
//! A background task counts it every `ORDER_API_BACKLOG_CHECK_INTERVAL_MS`
//! with a bounded query (at most the limit + 1 index entries of a partial
//! index over exactly those rows) over a connection of its own, within the
//! service's statement deadlines, and stores the verdict in atomics: PlaceOrder
//! reads them before it writes anything. Hysteresis: rejection starts when the
//! count reaches `ORDER_API_MAX_PENDING_ORDERS` and stops once it is below
//! [`RESUME_PERCENT`] % of it, so the gate does not flap around the bound.
//! When the count cannot be read, the last verdict stands for [`stale_after`]
//! at most, then the gate opens: rejecting on stale data would turn a
//! monitoring failure into an outage (the write path's own deadlines deal with
//! a database that does not answer).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foodorder_runtime::health::Condition;
use foodorder_runtime::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Rejection stops once the backlog is below this share of the limit, in percent.
pub const RESUME_PERCENT: u64 = 90;
/// The shortest retry delay a rejection advises.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest retry delay a rejection advises (also what it advises while
/// the backlog is not seen draining).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Polls the drain rate is estimated over.
const DRAIN_WINDOW: usize = 8;

/// How long the last count may stand when the count cannot be read: four
/// intervals, at least 10 s.
pub fn stale_after(check_interval: Duration) -> Duration {
    (check_interval * 4).max(Duration::from_secs(10))
}

/// The backpressure settings.
#[derive(Clone, Debug)]
pub struct BackpressureConfig {
    /// `ORDER_API_MAX_PENDING_ORDERS` (default 20000; 0 turns backpressure off).
    pub max_pending: u64,
    /// `ORDER_API_BACKLOG_CHECK_INTERVAL_MS` (default 250).
    pub check_interval: Duration,
}

/// The `reason` label of `foodorder_place_order_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `backpressure` or `rate_limit`.
    pub reason: &'static str,
}

/// Registers `foodorder_place_order_rejected_total{reason}`, both reasons at 0.
pub fn rejected_calls(metrics: &Metrics) -> Family<ReasonLabel, Counter> {
    let family = metrics.counter_family::<ReasonLabel>(
        "foodorder_place_order_rejected",
        "Calls refused with RESOURCE_EXHAUSTED before any work: backpressure (PlaceOrder, \
         ORDER_API_MAX_PENDING_ORDERS reached) or rate_limit (any OrderService call, \
         ORDER_API_RATE_LIMIT_PER_SECOND reached for its client)",
    );
    for reason in ["backpressure", "rate_limit"] {
        let _ = family.get_or_create(&ReasonLabel { reason });
    }
    family
}

/// The hysteresis and the retry-delay estimate, apart from any clock or database.
#[derive(Debug)]
pub struct Gate {
    limit: u64,
    rejecting: bool,
    samples: VecDeque<(Instant, u64)>,
}

impl Gate {
    /// A gate for `limit` (at least 1), accepting.
    pub fn new(limit: u64) -> Self {
        Self {
            limit: limit.max(1),
            rejecting: false,
            samples: VecDeque::with_capacity(DRAIN_WINDOW + 1),
        }
    }

    /// The backlog under which rejection stops.
    pub fn resume_below(&self) -> u64 {
        (self.limit * RESUME_PERCENT).div_ceil(100)
    }

    /// Records a count taken `at`; whether PlaceOrder is to be rejected now.
    pub fn observe(&mut self, at: Instant, pending: u64) -> bool {
        self.samples.push_back((at, pending));
        while self.samples.len() > DRAIN_WINDOW {
            self.samples.pop_front();
        }
        if !self.rejecting && pending >= self.limit {
            self.rejecting = true;
        } else if self.rejecting && pending < self.resume_below() {
            self.rejecting = false;
        }
        self.rejecting
    }

    /// Whether PlaceOrder is being rejected.
    pub fn rejecting(&self) -> bool {
        self.rejecting
    }

    /// Forgets everything (the counts are stale): accepting.
    pub fn forget(&mut self) {
        self.rejecting = false;
        self.samples.clear();
    }

    /// When a rejected caller should retry: the time the backlog needs to fall
    /// below [`Gate::resume_below`] at the rate it fell over the last polls
    /// (the oldest and newest of [`DRAIN_WINDOW`]), within
    /// [`MIN_RETRY_DELAY`]..=[`MAX_RETRY_DELAY`]; the longest when it is not
    /// seen falling (the payment side stalled, or too few polls yet).
    pub fn retry_delay(&self) -> Duration {
        let (Some(&(first_at, first)), Some(&(last_at, last))) =
            (self.samples.front(), self.samples.back())
        else {
            return MAX_RETRY_DELAY;
        };
        let elapsed = last_at.saturating_duration_since(first_at).as_secs_f64();
        if elapsed <= 0.0 || last >= first {
            return MAX_RETRY_DELAY;
        }
        let per_second = (first - last) as f64 / elapsed;
        let to_drain = (last + 1).saturating_sub(self.resume_below()) as f64;
        Duration::from_secs_f64(to_drain / per_second).clamp(MIN_RETRY_DELAY, MAX_RETRY_DELAY)
    }
}

struct Shared {
    limit: u64,
    pending: AtomicU64,
    /// Orders this instance admitted since the count in `pending` was
    /// started: they may not be in it yet, so they count on top of it.
    admitted_since_count: AtomicU64,
    rejecting: AtomicBool,
    retry_delay_ms: AtomicU64,
    rejected: Counter,
}

/// What PlaceOrder reads before it writes: a few atomics. Cheap to clone.
#[derive(Clone)]
pub struct Backpressure(Arc<Shared>);

impl Backpressure {
    /// A gate for `config` (off when `max_pending` is 0) counting its
    /// rejections in `rejected`.
    pub fn new(config: &BackpressureConfig, rejected: &Family<ReasonLabel, Counter>) -> Self {
        Self(Arc::new(Shared {
            limit: config.max_pending,
            pending: AtomicU64::new(0),
            admitted_since_count: AtomicU64::new(0),
            rejecting: AtomicBool::new(false),
            retry_delay_ms: AtomicU64::new(MAX_RETRY_DELAY.as_millis() as u64),
            rejected: rejected
                .get_or_create(&ReasonLabel {
                    reason: "backpressure",
                })
                .clone(),
        }))
    }

    /// Backpressure that never rejects.
    pub fn off() -> Self {
        Self::new(
            &BackpressureConfig {
                max_pending: 0,
                check_interval: Duration::from_secs(1),
            },
            &Family::default(),
        )
    }

    /// Whether a limit is set.
    pub fn enabled(&self) -> bool {
        self.0.limit > 0
    }

    /// Ok when a new order may be taken; the error to answer otherwise
    /// (counted in `foodorder_place_order_rejected_total{reason="backpressure"}`).
    ///
    /// Between two counts the backlog is estimated as the last count plus
    /// the orders this instance admitted since that count began, so that one
    /// instance does not overshoot the limit by its rate × the check interval.
    pub fn admit(&self) -> Result<(), ApiError> {
        let shared = &self.0;
        if shared.limit == 0 {
            return Ok(());
        }
        if !shared.rejecting.load(Ordering::Relaxed) {
            let pending = shared.pending.load(Ordering::Relaxed);
            // Taken only while under the limit: nothing is ever given back,
            // so a concurrent reset cannot make the count wrap.
            let admitted = shared.admitted_since_count.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |admitted| {
                    (pending.saturating_add(admitted) < shared.limit).then_some(admitted + 1)
                },
            );
            if admitted.is_ok() {
                return Ok(());
            }
        }
        self.0.rejected.inc();
        Err(ApiError::Backpressure {
            pending: self.0.pending.load(Ordering::Relaxed),
            limit: self.0.limit,
            retry_after: Duration::from_millis(self.0.retry_delay_ms.load(Ordering::Relaxed)),
        })
    }

    /// The orders admitted so far (to be taken off once a count that started
    /// after them is in).
    fn admitted_so_far(&self) -> u64 {
        self.0.admitted_since_count.load(Ordering::Relaxed)
    }

    /// Takes the first `admitted` admissions off the local estimate (the
    /// count that started after them includes them).
    fn counted(&self, admitted: u64) {
        let _ =
            self.0
                .admitted_since_count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    Some(now.saturating_sub(admitted))
                });
    }

    fn publish(&self, gate: &Gate, pending: u64) {
        self.0.pending.store(pending, Ordering::Relaxed);
        self.0
            .retry_delay_ms
            .store(gate.retry_delay().as_millis() as u64, Ordering::Relaxed);
        self.0.rejecting.store(gate.rejecting(), Ordering::Relaxed);
    }

    /// Counts the backlog every `check_interval` until `stop`, over `pool`
    /// (a pool of its own, with the service's session deadlines), each count
    /// also bounded by `timeout` on this side; keeps `condition` (shown on
    /// `/healthz`, never gating readiness) and `foodorder_orders_pending`.
    pub async fn run(
        self,
        pool: PgPool,
        check_interval: Duration,
        timeout: Duration,
        condition: Condition,
        metrics: Metrics,
        stop: CancellationToken,
    ) {
        let limit = self.0.limit;
        let gauge: Gauge = metrics.gauge(
            "foodorder_orders_pending",
            "Orders awaiting their payment outcome, as last counted for backpressure \
             (counted up to ORDER_API_MAX_PENDING_ORDERS + 1)",
        );
        let mut gate = Gate::new(limit);
        let resume_below = gate.resume_below();
        let stale_after = stale_after(check_interval);
        let mut last_count = Instant::now();
        let mut stale = false;
        condition.met(format!(
            "accepting: not counted yet (limit {limit}, accepting again below {resume_below})"
        ));
        let mut ticker = tokio::time::interval(check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let admitted_before = self.admitted_so_far();
            let counted = tokio::time::timeout(timeout, count_pending(&pool, limit + 1)).await;
            let now = Instant::now();
            match counted {
                Ok(Ok(pending)) => {
                    self.counted(admitted_before);
                    last_count = now;
                    stale = false;
                    let was_rejecting = gate.rejecting();
                    let rejecting = gate.observe(now, pending);
                    self.publish(&gate, pending);
                    gauge.set(pending as i64);
                    if rejecting {
                        let retry = gate.retry_delay();
                        if !was_rejecting {
                            tracing::warn!(
                                pending,
                                limit,
                                retry_after_ms = retry.as_millis() as u64,
                                "backpressure: rejecting new orders until fewer than {resume_below} await payment"
                            );
                        }
                        condition.unmet(format!(
                            "rejecting PlaceOrder: {pending} orders await payment (limit {limit}); \
                             accepting again below {resume_below}; advised retry {:.1} s",
                            retry.as_secs_f64()
                        ));
                    } else {
                        if was_rejecting {
                            tracing::info!(
                                pending,
                                limit,
                                "backpressure: accepting new orders again"
                            );
                        }
                        condition.met(format!(
                            "accepting: {pending} orders await payment (limit {limit})"
                        ));
                    }
                }
                failed => {
                    let reason = match failed {
                        Ok(Err(error)) => format!("{error}"),
                        _ => format!("no answer within {timeout:?}"),
                    };
                    let since = now.saturating_duration_since(last_count);
                    if since < stale_after {
                        tracing::warn!(
                            error = reason,
                            "backpressure: cannot count the orders awaiting payment; keeping the last count"
                        );
                        continue;
                    }
                    if !stale {
                        stale = true;
                        gate.forget();
                        // Nothing estimated from stale data either.
                        self.0.admitted_since_count.store(0, Ordering::Relaxed);
                        self.publish(&gate, 0);
                        tracing::warn!(
                            error = reason,
                            "backpressure: no count for {since:?}; accepting orders until the count answers again"
                        );
                    }
                    condition.met(format!(
                        "accepting: the orders awaiting payment could not be counted for {:.0} s ({reason}); \
                         not rejecting on stale data",
                        since.as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// The orders awaiting their payment outcome, counted up to `cap`.
async fn count_pending(pool: &PgPool, cap: u64) -> Result<u64, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM orders.orders \
         WHERE status IN ('PENDING', 'PROCESSING') LIMIT $1) AS awaiting",
    )
    .bind(i64::try_from(cap).unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await?;
    Ok(count.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_does_not_overshoot_between_counts() {
        let backpressure = Backpressure::new(
            &BackpressureConfig {
                max_pending: 10,
                check_interval: Duration::from_millis(250),
            },
            &Family::default(),
        );
        let gate = Gate::new(10);
        backpressure.publish(&gate, 7);
        for _ in 0..3 {
            assert!(
                backpressure.admit().is_ok(),
                "7 counted + up to 2 admitted < 10"
            );
        }
        assert!(
            backpressure.admit().is_err(),
            "7 counted + 3 admitted since reach the limit before the next count"
        );
        // A count started after those three includes them.
        let admitted = backpressure.admitted_so_far();
        backpressure.counted(admitted);
        backpressure.publish(&gate, 9);
        assert!(backpressure.admit().is_ok());
        assert!(backpressure.admit().is_err());
        assert!(Backpressure::off().admit().is_ok());
    }

    #[test]
    fn rejects_at_the_limit_and_resumes_below_ninety_percent() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut gate = Gate::new(100);
        assert_eq!(gate.resume_below(), 90);
        assert!(!gate.observe(at(0), 50));
        assert!(!gate.observe(at(250), 99));
        assert!(gate.observe(at(500), 100), "the limit is reached");
        // Between 90 and 100: no flapping, still rejecting.
        assert!(gate.observe(at(750), 95));
        assert!(gate.observe(at(1000), 90));
        assert!(!gate.observe(at(1250), 89), "below 90 %: accepting");
        // Back above 90 but under the limit: still accepting.
        assert!(!gate.observe(at(1500), 99));
        assert!(gate.observe(at(1750), 130));
        gate.forget();
        assert!(!gate.rejecting());
        // A small limit: 5 rejects from 5, accepts below 5 (90 % of 5, rounded up).
        let mut small = Gate::new(5);
        assert!(small.observe(at(0), 5));
        assert!(!small.observe(at(250), 4));
    }

    #[test]
    fn retry_delay_follows_the_drain_rate_within_bounds() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut gate = Gate::new(1000);
        // One count: no rate known yet, the longest delay.
        gate.observe(at(0), 1200);
        assert_eq!(gate.retry_delay(), MAX_RETRY_DELAY);
        // 100 orders per second drained; 1000 - 900 + 1 = 101 to go: about 1 s.
        gate.observe(at(1000), 1100);
        gate.observe(at(2000), 1000);
        let delay = gate.retry_delay();
        assert!(
            (Duration::from_millis(1000)..=Duration::from_millis(1020)).contains(&delay),
            "{delay:?}"
        );
        // Slow drain: 1 order a second from 1000 → clamped to 30 s.
        let mut slow = Gate::new(1000);
        slow.observe(at(0), 1001);
        slow.observe(at(1000), 1000);
        assert_eq!(slow.retry_delay(), MAX_RETRY_DELAY);
        // Growing or flat: the longest.
        let mut stuck = Gate::new(10);
        stuck.observe(at(0), 10);
        stuck.observe(at(1000), 12);
        assert_eq!(stuck.retry_delay(), MAX_RETRY_DELAY);
        // Fast drain: clamped to 1 s at least.
        let mut fast = Gate::new(100);
        fast.observe(at(0), 10_000);
        fast.observe(at(1000), 100);
        assert_eq!(fast.retry_delay(), MIN_RETRY_DELAY);
    }

    #[test]
    fn the_estimate_uses_the_last_polls_only() {
        let start = Instant::now();
        let mut gate = Gate::new(100);
        // A fast drain long ago, then flat: the window forgets the drain.
        gate.observe(start, 1000);
        for poll in 1..=DRAIN_WINDOW as u64 {
            gate.observe(start + Duration::from_millis(250 * poll), 150);
        }
        assert_eq!(gate.retry_delay(), MAX_RETRY_DELAY);
    }

    #[test]
    fn stale_counts_are_trusted_for_a_bounded_time() {
        assert_eq!(
            stale_after(Duration::from_millis(250)),
            Duration::from_secs(10)
        );
        assert_eq!(stale_after(Duration::from_secs(5)), Duration::from_secs(20));
    }
}
