//! The one back-off policy of the workspace: exponential delays (factor 2,
//! no jitter) from a first delay up to a cap, for as many tries as the caller
//! makes. Built on `backon`'s `ExponentialBuilder`; every retry loop (consumer
//! handling, dead-lettering, the outbox relay, topic creation, the database at
//! start, WatchOrder's listener, gateway retries) uses it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Capped exponential back-off: `first`, `2 × first`, … up to `max`, then `max` for ever.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: <ExponentialBuilder as BackoffBuilder>::Backoff,
}

impl Backoff {
    /// Delays from `first` doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(first)
            .with_max_delay(max.max(first))
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.delays
            .next()
            .unwrap_or_else(|| unreachable!("the back-off has no limit on tries"))
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_again_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
        let mut whole_seconds = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
        let delays: Vec<Duration> = (0..4).map(|_| whole_seconds.next_delay()).collect();
        assert_eq!(delays, [1, 2, 4, 8].map(Duration::from_secs));
    }
}
