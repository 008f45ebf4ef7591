//! Injecting one fault of the schedule into the running platform: SIGKILLing
//! and restarting service instances, SIGKILLing and restarting the broker on
//! its port, the abrupt PostgreSQL restart, and the duplicated and hostile
//! records, produced in-process. The record injectors run as tasks of their
//! own, so that a panic in one (they panic on broker errors) fails the run
//! cleanly instead of unwinding through the supervisor.

use std::time::Duration;

use anyhow::Context;

use crate::inject;
use crate::run::Chaos;
use crate::schedule::Fault;

/// Records copied per event topic by the `duplicate` fault.
const DUPLICATES_PER_TOPIC: usize = 100;

impl Chaos {
    /// Injects `fault` and returns once the platform was put back together
    /// (a killed instance or broker started again), except for the instance
    /// killed for good.
    pub async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillPayment => self.kill_and_restart("payment-1", None).await,
            Fault::KillNotification => self.kill_and_restart("notification-1", None).await,
            Fault::KillOrderApi => {
                let pause = Duration::from_secs(1);
                self.kill_and_restart("order-api", Some(pause)).await
            }
            Fault::KillPayment2ForGood => {
                self.services.kill_for_good("payment-2").await;
                Ok(())
            }
            Fault::KillBroker => {
                self.broker.kill().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.broker.restart().await
            }
            Fault::RestartPostgres => self.postgres.restart(Duration::from_secs(2)).await,
            Fault::Duplicate => self.duplicate().await,
            Fault::Hostile => self.hostile().await,
        }
    }

    /// SIGKILL, a pause (`pause`, or 1–2 s drawn from the schedule), start again.
    async fn kill_and_restart(
        &mut self,
        name: &str,
        pause: Option<Duration>,
    ) -> anyhow::Result<()> {
        self.services.kill(name).await;
        let pause = pause.unwrap_or_else(|| self.schedule.restart_pause());
        tokio::time::sleep(pause).await;
        self.services.start(name)
    }

    async fn duplicate(&mut self) -> anyhow::Result<()> {
        let topics = crate::topics::Topics::with_prefix(&self.prefix);
        for topic in [topics.order_placed, topics.payment_completed] {
            let bootstrap = self.broker.bootstrap();
            let copying = topic.clone();
            let copied = tokio::spawn(async move {
                inject::duplicate(&bootstrap, &copying, DUPLICATES_PER_TOPIC).await
            })
            .await
            .context("the duplicator panicked")??;
            self.record_fault(&serde_json::json!({"duplicated": copied, "topic": topic}))?;
        }
        Ok(())
    }

    async fn hostile(&mut self) -> anyhow::Result<()> {
        let live_order = self.live_order().await?;
        let (bootstrap, prefix, seed) = (self.broker.bootstrap(), self.prefix.clone(), self.seed);
        let sent =
            tokio::spawn(
                async move { inject::hostile(&bootstrap, &prefix, &live_order, seed).await },
            )
            .await
            .context("the hostile-record injector panicked")??;
        inject::append_lines(&self.log_dir.join("hostile.jsonl"), &sent.lines)?;
        self.record_fault(&serde_json::json!({"hostile_records": sent.records}))?;
        self.hostile_sent.extend(sent.lines);
        Ok(())
    }

    /// The newest order, whose id keys one garbage record per topic (empty when there is none).
    async fn live_order(&self) -> anyhow::Result<String> {
        let pool = sqlx::PgPool::connect(&self.database)
            .await
            .context("failed to connect to the database")?;
        let newest: Option<String> = sqlx::query_scalar(
            "SELECT id::text FROM orders.orders ORDER BY created_at DESC LIMIT 1",
        )
        .fetch_optional(&pool)
        .await
        .context("failed to read the newest order")?;
        pool.close().await;
        Ok(newest.unwrap_or_default())
    }

    /// Appends what a record fault did to faults.log in the log directory.
    fn record_fault(&self, line: &serde_json::Value) -> anyhow::Result<()> {
        inject::append_lines(&self.log_dir.join("faults.log"), std::slice::from_ref(line))
    }
}
