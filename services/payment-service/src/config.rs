//! The payment service's configuration, read from environment variables with
//! the seed's names and defaults.

use std::time::Duration;

use foodorder_runtime::config::{env_count, env_or, env_seconds};
use foodorder_runtime::consumer::ConsumerConfig;
use foodorder_runtime::outbox::RelayConfig;

/// Payments handled at once by default. Sized for the default gateway: a
/// payment takes about 4.2 s on average there (1–5 s calls, a timeout at 4 s,
/// retries after 1 s and 2 s), so by Little's law 2560 slots carry about 610
/// payments a second. A slot costs a few KiB and the consumer's prefetch is
/// bounded, so memory is too (measured in the bench: peak RSS 37 MiB, the seed
/// phase at 450 orders/s with its database steps batched).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2560;

/// The mock gateway's behaviour.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// `PAYMENT_MIN_LATENCY` (default 1.0 s).
    pub min_latency: Duration,
    /// `PAYMENT_MAX_LATENCY` (default 5.0 s).
    pub max_latency: Duration,
    /// `PAYMENT_DECLINE_RATE` (default 0.15).
    pub decline_rate: f64,
    /// `PAYMENT_TIMEOUT_RATE` (default 0): the share of calls that never
    /// answer (the caller's `PAYMENT_TIMEOUT` cuts them). Both rates can be
    /// changed at run time (`PUT /mock-gateway`, see [`crate::gateway_control`]).
    pub timeout_rate: f64,
    /// `PAYMENT_RNG_SEED`: makes the gateway's draws repeatable (default: random).
    pub rng_seed: Option<u64>,
    /// `PAYMENT_GATEWAY_DB_CONNECTIONS` (default 16): connections of the mock
    /// gateway's own pool for its ledger. A real gateway is another system: a
    /// service pool busy with consumers must not look like a slow gateway.
    pub db_connections: u32,
}

/// Timeouts and retries around the gateway.
#[derive(Clone, Debug)]
pub struct PaymentSettings {
    /// `PAYMENT_TIMEOUT` (default 4.0 s): a gateway call slower than this is a timeout.
    pub timeout: Duration,
    /// `PAYMENT_MAX_RETRIES` (default 3): gateway attempts in all.
    pub max_attempts: u32,
    /// `PAYMENT_RETRY_BASE_DELAY` (default 1.0 s): back-off before retry n is base × 2^(n-1).
    pub retry_base_delay: Duration,
}

impl PaymentSettings {
    /// The longest the gateway calls of one payment may take: every attempt
    /// cut at the timeout, with the back-offs in between.
    pub fn longest_payment(&self) -> Duration {
        let backoffs: Duration = (0..self.max_attempts.saturating_sub(1))
            .map(|retry| self.retry_base_delay.saturating_mul(1 << retry.min(20)))
            .sum();
        self.timeout.saturating_mul(self.max_attempts) + backoffs
    }
}

/// Room a handler's try has beyond its gateway calls (database work, waits for a connection).
const HANDLER_SLACK: Duration = Duration::from_secs(30);

/// Room the shutdown grace has beyond the slowest payment (its commit and event).
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

/// The shutdown grace: as set, or, when not set, at least the slowest payment
/// and its commit.
fn fit_shutdown_grace(grace: Duration, set: bool, payment: &PaymentSettings) -> Duration {
    if set {
        grace
    } else {
        grace.max(payment.longest_payment() + SHUTDOWN_SLACK)
    }
}

/// The circuit breaker's thresholds.
#[derive(Clone, Debug)]
pub struct BreakerSettings {
    /// `CIRCUIT_BREAKER_FAILURE_THRESHOLD` (default 5): failures (timeouts,
    /// gateway errors; a decline is an answer) in the window that, with the
    /// failure rate, open it.
    pub failure_threshold: u32,
    /// `CIRCUIT_BREAKER_RECOVERY_TIMEOUT` (default 30 s) open before half-open trials.
    pub recovery_timeout: Duration,
    /// `CIRCUIT_BREAKER_FAILURE_RATE` (default 0.5): the share of the window's
    /// outcomes that must be failures, as well as the threshold, to open it;
    /// and the share of failed trials that opens it again.
    pub failure_rate: f64,
    /// `CIRCUIT_BREAKER_WINDOW_SECONDS` (default 5): how far back outcomes count.
    pub window: Duration,
    /// `CIRCUIT_BREAKER_MINIMUM_CALLS` (default 50): outcomes needed in the
    /// window before it may open.
    pub minimum_calls: u32,
    /// `CIRCUIT_BREAKER_HALF_OPEN_CALLS` (default 5): trial calls let through
    /// after the recovery timeout.
    pub half_open_calls: u32,
}

impl Default for BreakerSettings {
    /// The seed's threshold (5) and recovery timeout (30 s), in a window of
    /// the last 10 s with at least 20 calls and half of them failing; 5 trials.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            failure_rate: 0.5,
            window: Duration::from_secs(5),
            minimum_calls: 50,
            half_open_calls: 5,
        }
    }
}

/// Everything the payment service needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `PAYMENT_MAX_IN_FLIGHT` (default [`DEFAULT_MAX_IN_FLIGHT`]), `PAYMENT_CONSUMER_GROUP`
    /// (`payment-service`), `PAYMENT_HEALTH_ADDR` (`0.0.0.0:9102`), the
    /// database, Kafka and the shutdown grace.
    pub consumer: ConsumerConfig,
    /// Outbox relay settings (for `payment.completed`).
    pub relay: RelayConfig,
    /// Mock gateway.
    pub gateway: GatewaySettings,
    /// Timeouts and retries.
    pub payment: PaymentSettings,
    /// Circuit breaker.
    pub breaker: BreakerSettings,
    /// `PAYMENT_FAULT_CRASH_AFTER_CHARGE=1` aborts the process right after a
    /// gateway charge, before the outcome is committed. Fault injection for the
    /// crash-safety test; never set it in production.
    pub crash_after_charge: bool,
    /// `PAYMENT_POISON_SETTLE_SECONDS` (default 60): how long an order id named
    /// only by poison `order.placed` records waits for its real one before it
    /// is declared unprocessable to the order API (`order.unprocessable`).
    pub poison_settle_after: Duration,
}

impl Config {
    /// Settings for a test: a fast, repeatable gateway that never declines
    /// (latency 0–20 ms, seeded), quick retries, a breaker that does not trip,
    /// poison-only orders settled after 2 s; see [`ConsumerConfig::for_tests`].
    pub fn for_tests() -> Self {
        Self {
            consumer: ConsumerConfig::for_tests("payment"),
            relay: RelayConfig::default(),
            gateway: GatewaySettings {
                min_latency: Duration::ZERO,
                max_latency: Duration::from_millis(20),
                decline_rate: 0.0,
                timeout_rate: 0.0,
                rng_seed: Some(42),
                db_connections: 4,
            },
            payment: PaymentSettings {
                timeout: Duration::from_secs(2),
                max_attempts: 3,
                retry_base_delay: Duration::from_millis(50),
            },
            breaker: BreakerSettings {
                failure_threshold: 1000,
                minimum_calls: 1000,
                ..BreakerSettings::default()
            },
            crash_after_charge: false,
            poison_settle_after: Duration::from_secs(2),
        }
    }

    /// Reads the configuration from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let seed: String = env_or("PAYMENT_RNG_SEED", String::new())?;
        let mut config = Self {
            consumer: ConsumerConfig::from_env(
                "PAYMENT",
                "payment-service",
                DEFAULT_MAX_IN_FLIGHT,
                9102,
            )?,
            relay: RelayConfig::from_env()?,
            gateway: GatewaySettings {
                min_latency: env_seconds("PAYMENT_MIN_LATENCY", 1.0)?,
                max_latency: env_seconds("PAYMENT_MAX_LATENCY", 5.0)?,
                decline_rate: env_or("PAYMENT_DECLINE_RATE", 0.15)?,
                timeout_rate: env_or("PAYMENT_TIMEOUT_RATE", 0.0)?,
                rng_seed: if seed.is_empty() {
                    None
                } else {
                    Some(seed.parse()?)
                },
                db_connections: env_count("PAYMENT_GATEWAY_DB_CONNECTIONS", 16)?,
            },
            payment: PaymentSettings {
                timeout: env_seconds("PAYMENT_TIMEOUT", 4.0)?,
                max_attempts: env_count("PAYMENT_MAX_RETRIES", 3)?,
                retry_base_delay: env_seconds("PAYMENT_RETRY_BASE_DELAY", 1.0)?,
            },
            breaker: {
                let defaults = BreakerSettings::default();
                BreakerSettings {
                    failure_threshold: env_count(
                        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
                        defaults.failure_threshold,
                    )?,
                    recovery_timeout: env_seconds(
                        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
                        defaults.recovery_timeout.as_secs_f64(),
                    )?,
                    failure_rate: env_or("CIRCUIT_BREAKER_FAILURE_RATE", defaults.failure_rate)?,
                    window: env_seconds(
                        "CIRCUIT_BREAKER_WINDOW_SECONDS",
                        defaults.window.as_secs_f64(),
                    )?,
                    minimum_calls: env_count(
                        "CIRCUIT_BREAKER_MINIMUM_CALLS",
                        defaults.minimum_calls,
                    )?,
                    half_open_calls: env_count(
                        "CIRCUIT_BREAKER_HALF_OPEN_CALLS",
                        defaults.half_open_calls,
                    )?,
                }
            },
            crash_after_charge: env_or("PAYMENT_FAULT_CRASH_AFTER_CHARGE", 0_u8)? == 1,
            poison_settle_after: env_seconds("PAYMENT_POISON_SETTLE_SECONDS", 60.0)?,
        };
        // One try of the handler includes every gateway call of a payment:
        // unless set, its bound grows with the gateway settings.
        if env_or("PAYMENT_HANDLER_TIMEOUT_MS", String::new())?.is_empty() {
            config.consumer.handler_timeout = config
                .consumer
                .handler_timeout
                .max(config.payment.longest_payment() + HANDLER_SLACK);
        }
        // In-flight payments finish within the shutdown grace: unless set, it
        // covers the slowest payment (every attempt timing out, with its
        // back-offs) and the commit after it, so that a deploy does not cut
        // payments short and send their records to another instance to start
        // over.
        let grace_set = !env_or("SHUTDOWN_GRACE_SECONDS", String::new())?.is_empty();
        config.consumer.shutdown_grace =
            fit_shutdown_grace(config.consumer.shutdown_grace, grace_set, &config.payment);
        if grace_set && config.consumer.shutdown_grace < config.payment.longest_payment() {
            tracing::warn!(
                shutdown_grace_ms = config.consumer.shutdown_grace.as_millis() as u64,
                longest_payment_ms = config.payment.longest_payment().as_millis() as u64,
                "SHUTDOWN_GRACE_SECONDS is shorter than the slowest payment: a stop may cut payments short"
            );
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.gateway.min_latency <= self.gateway.max_latency,
            "PAYMENT_MIN_LATENCY must not exceed PAYMENT_MAX_LATENCY"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.gateway.decline_rate),
            "PAYMENT_DECLINE_RATE must be within 0..=1"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.gateway.timeout_rate),
            "PAYMENT_TIMEOUT_RATE must be within 0..=1"
        );
        anyhow::ensure!(
            self.payment.max_attempts >= 1,
            "PAYMENT_MAX_RETRIES must be at least 1"
        );
        let breaker = &self.breaker;
        anyhow::ensure!(
            breaker.failure_threshold >= 1,
            "CIRCUIT_BREAKER_FAILURE_THRESHOLD must be at least 1"
        );
        anyhow::ensure!(
            breaker.failure_rate > 0.0 && breaker.failure_rate <= 1.0,
            "CIRCUIT_BREAKER_FAILURE_RATE must be within (0, 1]"
        );
        // A breaker that can never open is a misconfiguration, not a choice.
        anyhow::ensure!(
            breaker.minimum_calls >= 1,
            "CIRCUIT_BREAKER_MINIMUM_CALLS must be at least 1"
        );
        // Whole seconds: the window counts outcomes per second.
        anyhow::ensure!(
            breaker.window >= Duration::from_secs(1)
                && breaker.window.subsec_nanos() == 0
                && breaker.window <= Duration::from_secs(3600),
            "CIRCUIT_BREAKER_WINDOW_SECONDS must be a whole number of seconds within 1..=3600"
        );
        anyhow::ensure!(
            breaker.half_open_calls >= 1,
            "CIRCUIT_BREAKER_HALF_OPEN_CALLS must be at least 1"
        );
        anyhow::ensure!(
            self.consumer.max_in_flight >= 1,
            "PAYMENT_MAX_IN_FLIGHT must be at least 1"
        );
        anyhow::ensure!(
            self.consumer.handler_timeout > self.payment.longest_payment(),
            "PAYMENT_HANDLER_TIMEOUT_MS ({:?}) must exceed the longest a payment's gateway calls may take \
             with PAYMENT_TIMEOUT, PAYMENT_MAX_RETRIES and PAYMENT_RETRY_BASE_DELAY ({:?})",
            self.consumer.handler_timeout,
            self.payment.longest_payment()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_payment_counts_every_attempt_and_back_off() {
        let defaults = PaymentSettings {
            timeout: Duration::from_secs(4),
            max_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
        };
        // 3 attempts of 4 s, then back-offs of 1 s and 2 s between them.
        assert_eq!(defaults.longest_payment(), Duration::from_secs(15));
        let mut config = Config::for_tests();
        assert!(config.validate().is_ok());
        config.payment.timeout = Duration::from_secs(30);
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("PAYMENT_HANDLER_TIMEOUT_MS"), "{refused}");
    }

    #[test]
    fn the_shutdown_grace_covers_the_slowest_payment_unless_set() {
        let payment = PaymentSettings {
            timeout: Duration::from_secs(4),
            max_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
        };
        let ten = Duration::from_secs(10);
        assert_eq!(
            fit_shutdown_grace(ten, false, &payment),
            Duration::from_secs(17)
        );
        assert_eq!(fit_shutdown_grace(ten, true, &payment), ten, "as set");
        let long = Duration::from_secs(60);
        assert_eq!(fit_shutdown_grace(long, false, &payment), long);
    }

    #[test]
    fn a_breaker_that_could_never_open_is_refused() {
        let refused = |change: fn(&mut BreakerSettings)| {
            let mut config = Config::for_tests();
            config.breaker = BreakerSettings::default();
            assert!(config.validate().is_ok());
            change(&mut config.breaker);
            config.validate().unwrap_err().to_string()
        };
        assert!(refused(|b| b.minimum_calls = 0).contains("CIRCUIT_BREAKER_MINIMUM_CALLS"));
        assert!(refused(|b| b.window = Duration::from_millis(1500)).contains("WINDOW_SECONDS"));
        assert!(refused(|b| b.window = Duration::ZERO).contains("WINDOW_SECONDS"));
        assert!(refused(|b| b.failure_rate = 0.0).contains("CIRCUIT_BREAKER_FAILURE_RATE"));
        assert!(refused(|b| b.failure_rate = 1.5).contains("CIRCUIT_BREAKER_FAILURE_RATE"));
        assert!(refused(|b| b.half_open_calls = 0).contains("CIRCUIT_BREAKER_HALF_OPEN_CALLS"));
    }

    #[test]
    fn gateway_rates_outside_zero_to_one_are_refused() {
        let mut config = Config::for_tests();
        config.gateway.timeout_rate = 1.0;
        assert!(config.validate().is_ok());
        for bad in [-0.1, 1.5, f64::NAN] {
            config.gateway.timeout_rate = bad;
            let refused = config.validate().unwrap_err().to_string();
            assert!(refused.contains("PAYMENT_TIMEOUT_RATE"), "{refused}");
        }
    }
}
