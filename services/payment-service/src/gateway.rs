//! The payment gateway seam and the deliberately unreliable mock behind it.
//!
//! [`PaymentGateway`] is what a real gateway would implement. [`MockGateway`]
//! draws, per call, a latency uniform in [min, max] and (if the call is not cut
//! by the caller's timeout first) a decline with the configured probability
//! ("Insufficient funds"), or, with `PAYMENT_TIMEOUT_RATE`, never answers (the
//! caller's timeout cuts it); both rates can change at run time
//! ([`crate::gateway_control`]). It is idempotent by key like real gateways: every
//! decision is written to its ledger (`gateway_ledger`), and a call with a key
//! that already has a decision returns that decision without charging again. An
//! advisory lock per key makes concurrent calls with one key safe. Giving up on
//! a key ([`PaymentGateway::void`]) is a decision too, taken under the same
//! lock: a charge still in flight cannot land after it, and a charge that landed
//! first stands — so the ledger is the one truth about whether money moved.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::GatewaySettings;
use crate::gateway_control::GatewayRates;

foodorder_contract::text_enum! {
    /// A decision in the gateway's ledger (`gateway_ledger.outcome`).
    pub enum Decision {
        /// Charged.
        Approved => "APPROVED",
        /// Refused by the gateway.
        Declined => "DECLINED",
        /// Given up on: nothing may be charged for the key any more.
        Voided => "VOIDED",
    }
}

/// Message of a decline.
pub const DECLINE_REASON: &str = "Insufficient funds";

/// One charge request.
#[derive(Clone, Debug)]
pub struct ChargeRequest {
    /// Makes the charge idempotent: the order id.
    pub idempotency_key: String,
    /// Amount to charge.
    pub amount: Decimal,
}

/// The gateway's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Charged.
    Approved {
        /// The gateway's id of the charge.
        charge_id: Uuid,
    },
    /// Not charged; not worth retrying.
    Declined {
        /// Why.
        reason: String,
    },
    /// The caller gave up on this key; it will never be charged.
    Voided {
        /// Why the caller gave up.
        reason: String,
    },
}

/// The gateway could not give a decision for reasons on our side.
#[derive(Debug, thiserror::Error)]
#[error("payment gateway unavailable")]
pub struct GatewayUnavailable(#[source] pub anyhow::Error);

/// A payment gateway. Slow calls are cut by the caller's timeout (the future is dropped).
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges `request.amount`, idempotently by `request.idempotency_key`.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, GatewayUnavailable>> + Send;

    /// The decision already made for `idempotency_key`, if any (no charge, no latency).
    fn decision(
        &self,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<Option<ChargeOutcome>, GatewayUnavailable>> + Send;

    /// Gives up on `request`: afterwards no call can charge it. Returns the
    /// decision that stands — a charge that got in first is returned as such.
    fn void(
        &self,
        request: &ChargeRequest,
        reason: &str,
    ) -> impl Future<Output = Result<ChargeOutcome, GatewayUnavailable>> + Send;
}

/// What one call of the mock will do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// How long the call takes.
    pub latency: Duration,
    /// Whether it declines.
    pub decline: bool,
    /// Whether it never answers (drawn only while the timeout rate is above 0,
    /// so that seeded draws without it stay as they were).
    pub hang: bool,
}

/// The mock gateway with its ledger in PostgreSQL.
pub struct MockGateway {
    pool: PgPool,
    settings: GatewaySettings,
    rates: GatewayRates,
    rng: Mutex<StdRng>,
}

impl MockGateway {
    /// A mock over `pool`, seeded from `settings.rng_seed` when set.
    pub fn new(pool: PgPool, settings: GatewaySettings) -> Self {
        let rng = match settings.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            pool,
            rates: GatewayRates::new(&settings),
            settings,
            rng: Mutex::new(rng),
        }
    }

    /// The decline and timeout rates this mock draws with, changeable while it runs.
    pub fn rates(&self) -> GatewayRates {
        self.rates.clone()
    }

    /// Draws the next call's latency, decline and whether it hangs.
    pub fn draw(&self) -> Draw {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (min, max) = (
            self.settings.min_latency.as_secs_f64(),
            self.settings.max_latency.as_secs_f64(),
        );
        let latency = if max > min {
            rng.random_range(min..=max)
        } else {
            min
        };
        let decline = rng.random_bool(self.rates.decline_rate());
        let timeout_rate = self.rates.timeout_rate();
        Draw {
            latency: Duration::from_secs_f64(latency),
            decline,
            hang: timeout_rate > 0.0 && rng.random_bool(timeout_rate),
        }
    }

    async fn recorded(
        executor: impl sqlx::PgExecutor<'_>,
        key: &str,
    ) -> Result<Option<ChargeOutcome>, sqlx::Error> {
        let row: Option<(Uuid, Decision, Option<String>)> = sqlx::query_as(
            "SELECT charge_id, outcome, decline_reason FROM payments.gateway_ledger \
             WHERE idempotency_key = $1 ORDER BY created_at LIMIT 1",
        )
        .bind(key)
        .fetch_optional(executor)
        .await?;
        Ok(row.map(|(charge_id, outcome, reason)| match outcome {
            Decision::Approved => ChargeOutcome::Approved { charge_id },
            Decision::Voided => ChargeOutcome::Voided {
                reason: reason.unwrap_or_default(),
            },
            Decision::Declined => ChargeOutcome::Declined {
                reason: reason.unwrap_or_else(|| DECLINE_REASON.to_owned()),
            },
        }))
    }

    /// Records `wanted` for the request's key unless a decision exists; returns the one that stands.
    async fn decide(
        &self,
        request: &ChargeRequest,
        wanted: ChargeOutcome,
    ) -> Result<ChargeOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(&request.idempotency_key)
            .execute(&mut *tx)
            .await?;
        if let Some(outcome) = Self::recorded(&mut *tx, &request.idempotency_key).await? {
            tx.commit().await?;
            return Ok(outcome);
        }
        let (charge_id, label, reason) = match &wanted {
            ChargeOutcome::Approved { charge_id } => (*charge_id, Decision::Approved, None),
            ChargeOutcome::Declined { reason } => {
                (Uuid::now_v7(), Decision::Declined, Some(reason.as_str()))
            }
            ChargeOutcome::Voided { reason } => {
                (Uuid::now_v7(), Decision::Voided, Some(reason.as_str()))
            }
        };
        sqlx::query(
            "INSERT INTO payments.gateway_ledger (charge_id, idempotency_key, amount, outcome, decline_reason) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(charge_id)
        .bind(&request.idempotency_key)
        .bind(request.amount)
        .bind(label)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(wanted)
    }
}

impl PaymentGateway for MockGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayUnavailable> {
        let unavailable = |error: sqlx::Error| GatewayUnavailable(anyhow::Error::new(error));
        // A key the gateway already decided on answers at once, without a new charge.
        // Database steps boxed: a call waiting out its latency holds little.
        if let Some(outcome) = Box::pin(Self::recorded(&self.pool, &request.idempotency_key))
            .await
            .map_err(unavailable)?
        {
            tracing::info!(
                idempotency_key = request.idempotency_key,
                "gateway returned a recorded decision"
            );
            return Ok(outcome);
        }
        let draw = self.draw();
        if draw.hang {
            // No answer ever: the caller's timeout cuts the call.
            return std::future::pending().await;
        }
        tokio::time::sleep(draw.latency).await;
        let wanted = if draw.decline {
            ChargeOutcome::Declined {
                reason: DECLINE_REASON.to_owned(),
            }
        } else {
            ChargeOutcome::Approved {
                charge_id: Uuid::now_v7(),
            }
        };
        Box::pin(self.decide(request, wanted))
            .await
            .map_err(unavailable)
    }

    async fn decision(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<ChargeOutcome>, GatewayUnavailable> {
        Self::recorded(&self.pool, idempotency_key)
            .await
            .map_err(|error| GatewayUnavailable(anyhow::Error::new(error)))
    }

    async fn void(
        &self,
        request: &ChargeRequest,
        reason: &str,
    ) -> Result<ChargeOutcome, GatewayUnavailable> {
        let wanted = ChargeOutcome::Voided {
            reason: reason.to_owned(),
        };
        self.decide(request, wanted)
            .await
            .map_err(|error| GatewayUnavailable(anyhow::Error::new(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(seed: u64, decline_rate: f64) -> MockGateway {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://unused@127.0.0.1/unused")
            .unwrap();
        MockGateway::new(
            pool,
            GatewaySettings {
                min_latency: Duration::from_secs(1),
                max_latency: Duration::from_secs(5),
                decline_rate,
                timeout_rate: 0.0,
                rng_seed: Some(seed),
                db_connections: 1,
            },
        )
    }

    #[tokio::test]
    async fn seeded_draws_repeat_and_follow_the_settings() {
        let (first, second) = (gateway(7, 0.15), gateway(7, 0.15));
        let draws: Vec<Draw> = (0..2000).map(|_| first.draw()).collect();
        let again: Vec<Draw> = (0..2000).map(|_| second.draw()).collect();
        assert_eq!(draws, again, "same seed, same draws");
        assert!(
            draws
                .iter()
                .all(|draw| (Duration::from_secs(1)..=Duration::from_secs(5))
                    .contains(&draw.latency))
        );
        let declines = draws.iter().filter(|draw| draw.decline).count() as f64 / draws.len() as f64;
        assert!((0.12..0.18).contains(&declines), "decline share {declines}");
        let over_four = draws
            .iter()
            .filter(|draw| draw.latency > Duration::from_secs(4))
            .count() as f64
            / 2000.0;
        assert!(
            (0.21..0.29).contains(&over_four),
            "share of calls over 4 s {over_four}"
        );
    }

    #[tokio::test]
    async fn zero_and_one_decline_rates_are_exact() {
        assert!((0..500).all(|_| !gateway(1, 0.0).draw().decline));
        let always = gateway(2, 1.0);
        assert!((0..500).all(|_| always.draw().decline));
    }
}
