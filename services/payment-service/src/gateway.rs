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

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foodorder_runtime::batch::{BatchMetrics, BatchSettings, BatchWork, Batcher};

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

/// The mock gateway with its ledger in PostgreSQL. Its ledger reads and
/// decisions are batched (see [`foodorder_runtime::batch`]): concurrent
/// calls share statements and commits, each keeping its own answer.
pub struct MockGateway {
    settings: GatewaySettings,
    rates: GatewayRates,
    rng: Mutex<StdRng>,
    reads: Batcher<LedgerReads>,
    decisions: Batcher<LedgerDecisions>,
}

impl MockGateway {
    /// A mock over `pool`, seeded from `settings.rng_seed` when set; its
    /// batch sizes go to `metrics`. Needs a Tokio runtime (it starts the
    /// batches' writers).
    pub fn new(pool: PgPool, settings: GatewaySettings, metrics: &BatchMetrics) -> Self {
        let rng = match settings.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let batching = BatchSettings::default();
        Self {
            reads: Batcher::new(
                "gateway_ledger_read",
                Arc::new(LedgerReads { pool: pool.clone() }),
                batching.clone(),
                metrics,
            ),
            decisions: Batcher::new(
                "gateway_ledger_decide",
                Arc::new(LedgerDecisions { pool }),
                batching,
                metrics,
            ),
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

    /// The decision recorded for `key`, if any.
    async fn recorded(&self, key: &str) -> Result<Option<ChargeOutcome>, GatewayUnavailable> {
        self.reads
            .submit(key.to_owned())
            .await
            .map_err(|error| GatewayUnavailable(anyhow::Error::new(error)))
    }

    /// Records `wanted` for the request's key unless a decision exists; returns the one that stands.
    async fn decide(
        &self,
        request: &ChargeRequest,
        wanted: ChargeOutcome,
    ) -> Result<ChargeOutcome, GatewayUnavailable> {
        self.decisions
            .submit(Decide {
                key: request.idempotency_key.clone(),
                amount: request.amount,
                wanted,
            })
            .await
            .map_err(|error| GatewayUnavailable(anyhow::Error::new(error)))
    }
}

/// A ledger row as read.
#[derive(sqlx::FromRow)]
struct LedgerRow {
    idempotency_key: String,
    charge_id: Uuid,
    outcome: Decision,
    decline_reason: Option<String>,
}

impl LedgerRow {
    fn outcome(self) -> ChargeOutcome {
        match self.outcome {
            Decision::Approved => ChargeOutcome::Approved {
                charge_id: self.charge_id,
            },
            Decision::Voided => ChargeOutcome::Voided {
                reason: self.decline_reason.unwrap_or_default(),
            },
            Decision::Declined => ChargeOutcome::Declined {
                reason: self
                    .decline_reason
                    .unwrap_or_else(|| DECLINE_REASON.to_owned()),
            },
        }
    }
}

/// The first decision of each of `keys` (a key has one decision: the
/// advisory lock serialises deciding, and the first stands).
async fn first_decisions(
    executor: impl sqlx::PgExecutor<'_>,
    keys: &[&str],
) -> Result<HashMap<String, ChargeOutcome>, sqlx::Error> {
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT DISTINCT ON (idempotency_key) idempotency_key, charge_id, outcome, decline_reason \
         FROM payments.gateway_ledger WHERE idempotency_key = ANY($1) \
         ORDER BY idempotency_key, created_at",
    )
    .bind(keys)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.idempotency_key.clone(), row.outcome()))
        .collect())
}

/// Reads of the ledger, many keys in one statement.
struct LedgerReads {
    pool: PgPool,
}

impl BatchWork for LedgerReads {
    type Job = String;
    type Output = Option<ChargeOutcome>;
    type Error = sqlx::Error;

    async fn run(&self, keys: &[String]) -> Result<Vec<Option<ChargeOutcome>>, sqlx::Error> {
        let wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = first_decisions(&self.pool, &wanted).await?;
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

/// One decision to record.
struct Decide {
    key: String,
    amount: Decimal,
    wanted: ChargeOutcome,
}

/// Decisions, many keys in one transaction: each key's advisory lock (taken
/// in one order, so batches never deadlock), the decisions already made, and
/// one insert for the rest. A key twice in a batch gets the first's decision.
struct LedgerDecisions {
    pool: PgPool,
}

impl BatchWork for LedgerDecisions {
    type Job = Decide;
    type Output = ChargeOutcome;
    type Error = sqlx::Error;

    async fn run(&self, jobs: &[Decide]) -> Result<Vec<ChargeOutcome>, sqlx::Error> {
        let keys: Vec<&str> = jobs.iter().map(|job| job.key.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(lock_key) FROM \
             (SELECT DISTINCT hashtextextended(key, 0) AS lock_key FROM unnest($1::text[]) AS key \
              ORDER BY lock_key) AS locks",
        )
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        let mut standing = first_decisions(&mut *tx, &keys).await?;
        let mut new_rows: Vec<(Uuid, &str, Decimal, Decision, Option<&str>)> = Vec::new();
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Some(outcome) = standing.get(&job.key) {
                outputs.push(outcome.clone());
                continue;
            }
            let (charge_id, label, reason) = match &job.wanted {
                ChargeOutcome::Approved { charge_id } => (*charge_id, Decision::Approved, None),
                ChargeOutcome::Declined { reason } => {
                    (Uuid::now_v7(), Decision::Declined, Some(reason.as_str()))
                }
                ChargeOutcome::Voided { reason } => {
                    (Uuid::now_v7(), Decision::Voided, Some(reason.as_str()))
                }
            };
            new_rows.push((charge_id, job.key.as_str(), job.amount, label, reason));
            standing.insert(job.key.clone(), job.wanted.clone());
            outputs.push(job.wanted.clone());
        }
        if !new_rows.is_empty() {
            let charge_ids: Vec<Uuid> = new_rows.iter().map(|row| row.0).collect();
            let row_keys: Vec<&str> = new_rows.iter().map(|row| row.1).collect();
            let amounts: Vec<Decimal> = new_rows.iter().map(|row| row.2).collect();
            let outcomes: Vec<&str> = new_rows.iter().map(|row| row.3.as_str()).collect();
            let reasons: Vec<Option<&str>> = new_rows.iter().map(|row| row.4).collect();
            sqlx::query(
                "INSERT INTO payments.gateway_ledger (charge_id, idempotency_key, amount, outcome, decline_reason) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::numeric[], $4::text[], $5::text[])",
            )
            .bind(&charge_ids)
            .bind(&row_keys)
            .bind(&amounts)
            .bind(&outcomes)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outputs)
    }

    fn retry_alone(error: &sqlx::Error) -> bool {
        foodorder_runtime::db::is_data_error(error)
    }
}

impl PaymentGateway for MockGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayUnavailable> {
        // A key the gateway already decided on gets that decision back from
        // `decide` (callers ask `decision` first, so the call is not made
        // for a decided key; no read of the ledger is spent on it here).
        let draw = self.draw();
        if draw.hang {
            // No answer ever: the caller's timeout cuts the call.
            return std::future::pending().await;
        }
        // Tokio's timers tick in whole milliseconds: a zero latency would
        // still wait for the next tick.
        if !draw.latency.is_zero() {
            tokio::time::sleep(draw.latency).await;
        }
        let wanted = if draw.decline {
            ChargeOutcome::Declined {
                reason: DECLINE_REASON.to_owned(),
            }
        } else {
            ChargeOutcome::Approved {
                charge_id: Uuid::now_v7(),
            }
        };
        // Database step boxed: a call waiting out its latency holds little.
        Box::pin(self.decide(request, wanted)).await
    }

    async fn decision(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<ChargeOutcome>, GatewayUnavailable> {
        self.recorded(idempotency_key).await
    }

    async fn void(
        &self,
        request: &ChargeRequest,
        reason: &str,
    ) -> Result<ChargeOutcome, GatewayUnavailable> {
        let wanted = ChargeOutcome::Voided {
            reason: reason.to_owned(),
        };
        self.decide(request, wanted).await
    }
}

/// A mock whose ledger is never reached (unit tests of the draws and the
/// run-time rates): latency 1–5 s, the given rates and seed.
#[cfg(test)]
pub(crate) fn unconnected_for_tests(
    seed: u64,
    decline_rate: f64,
    timeout_rate: f64,
) -> MockGateway {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://unused@127.0.0.1/unused")
        .expect("a lazy pool");
    MockGateway::new(
        pool,
        GatewaySettings {
            min_latency: Duration::from_secs(1),
            max_latency: Duration::from_secs(5),
            decline_rate,
            timeout_rate,
            rng_seed: Some(seed),
            db_connections: 1,
        },
        &BatchMetrics::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(seed: u64, decline_rate: f64) -> MockGateway {
        unconnected_for_tests(seed, decline_rate, 0.0)
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
