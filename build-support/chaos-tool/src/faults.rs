//! Injecting one fault of the schedule into the running platform: SIGKILLing
//! and restarting service instances, SIGKILLing and restarting a broker on
//! its port (in a cluster: a random node, the active controller, or the leader
//! of the busiest partition), the abrupt PostgreSQL restart, the network
//! faults of a cluster run (started here, healed by the run when due), and the
//! duplicated and hostile records, produced in-process. The record injectors
//! run as tasks of their own, so that a panic in one (they panic on broker
//! errors) fails the run cleanly instead of unwinding through the supervisor.
//! Every fault's window is recorded for the findings table.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::time::Instant;

use crate::inject;
use crate::observe::Window;
use crate::run::Chaos;
use crate::say;
use crate::schedule::Fault;

/// Records copied per event topic by the `duplicate` fault.
const DUPLICATES_PER_TOPIC: usize = 100;

impl Chaos {
    /// Injects `fault` and returns once the platform was put back together
    /// (a killed instance or broker started again), except for the instance
    /// killed for good.
    pub async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        if matches!(
            fault,
            Fault::KillBroker | Fault::KillController | Fault::KillPartitionLeader
        ) {
            // One node down at a time, and the roles asked of the whole cluster.
            self.brokers.settle().await?;
        }
        let from = self.now();
        let order_api = if self.cluster {
            "order-api-1"
        } else {
            "order-api"
        };
        let target = match fault {
            Fault::KillPayment => self.kill_and_restart("payment-1", None).await?,
            Fault::KillNotification => self.kill_and_restart("notification-1", None).await?,
            Fault::KillOrderApi => {
                let pause = Duration::from_secs(1);
                self.kill_and_restart(order_api, Some(pause)).await?
            }
            Fault::KillPayment2ForGood => {
                self.services.kill_for_good("payment-2").await;
                "payment-2".to_owned()
            }
            Fault::KillBroker => {
                let index = self.schedule.any_of(self.brokers.len());
                self.kill_broker(index).await?
            }
            Fault::KillController => {
                let index = self.active_controller().await?;
                self.kill_broker(index).await?
            }
            Fault::KillPartitionLeader => {
                let index = self.busiest_leader().await?;
                self.kill_broker(index).await?
            }
            Fault::RestartPostgres => {
                self.postgres.restart(Duration::from_secs(2)).await?;
                "postgres".to_owned()
            }
            Fault::Duplicate => {
                self.duplicate().await?;
                "event topics".to_owned()
            }
            Fault::Hostile => {
                self.hostile().await?;
                "event topics".to_owned()
            }
            Fault::PartitionOrderApiFromPostgres
            | Fault::PartitionOrderApiFromBrokers
            | Fault::PartitionPaymentFromBrokers
            | Fault::PartitionNotificationFromPostgres
            | Fault::SlowPaymentPostgres
            | Fault::SlowNotificationPostgres => {
                // The window ends at the heal (`heal`).
                return self.impair(fault).await;
            }
        };
        let to = self.now();
        self.windows.push(Window {
            fault,
            target,
            from,
            to,
        });
        Ok(())
    }

    /// Starts the network fault `fault` and schedules its heal.
    async fn impair(&mut self, fault: Fault) -> anyhow::Result<()> {
        let instance = fault.impaired().context("not a network fault")?;
        let network = self
            .network
            .as_ref()
            .context("network faults need a cluster run")?;
        let brokers = self.brokers.ports();
        let postgres = [self.pg_port];
        match fault {
            Fault::PartitionOrderApiFromBrokers | Fault::PartitionPaymentFromBrokers => {
                network.partition(instance, &brokers).await?;
            }
            Fault::PartitionOrderApiFromPostgres | Fault::PartitionNotificationFromPostgres => {
                network.partition(instance, &postgres).await?;
            }
            _ => network.delay_postgres(instance)?,
        }
        let lasts = self.schedule.impairment();
        say(format!("  {instance}: for {} s", lasts.as_secs()));
        let from = self.now();
        let index = self.windows.len();
        self.windows.push(Window {
            fault,
            target: instance.to_owned(),
            from,
            to: from + lasts,
        });
        // Healed on time by a task of its own, whatever the run is doing then
        // (another fault may take longer than this one lasts).
        let (network, healed, origin) = (
            network.clone(),
            self.healed.clone(),
            self.load_started.unwrap_or_else(Instant::now),
        );
        self.impaired.push(tokio::spawn(async move {
            tokio::time::sleep(lasts).await;
            let outcome = network.heal(instance).await;
            let at = origin.elapsed();
            say(format!(
                "t={}s: healed {} ({instance})",
                at.as_secs(),
                fault.name()
            ));
            healed.lock().unwrap().push((index, at));
            outcome
        }));
        Ok(())
    }

    /// SIGKILLs broker `index` and starts it again a few seconds later: in a
    /// cluster in the background (the run goes on; the next broker fault
    /// waits for it), with a single broker before going on. Returns its name.
    async fn kill_broker(&mut self, index: usize) -> anyhow::Result<String> {
        self.brokers.kill(index).await?;
        let pause = Duration::from_secs(if self.cluster { 5 } else { 3 });
        say(format!(
            "  kafka node {} down for {} s",
            index + 1,
            pause.as_secs()
        ));
        let (healed, window, origin) = (
            self.healed.clone(),
            self.windows.len(),
            self.load_started.unwrap_or_else(Instant::now),
        );
        self.brokers.restart_later(index, pause, move || {
            let at = origin.elapsed();
            say(format!(
                "t={}s: kafka node {} is back",
                at.as_secs(),
                index + 1
            ));
            healed.lock().unwrap().push((window, at));
        })?;
        if !self.cluster {
            self.brokers.settle().await?;
        }
        Ok(format!("kafka node {}", index + 1))
    }

    /// The index of the active KRaft controller, as Kafka's quorum tool reports it.
    async fn active_controller(&self) -> anyhow::Result<usize> {
        let output = tokio::process::Command::new("java")
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!("{}/*", self.kafka_libs.display()))
            .arg("org.apache.kafka.tools.MetadataQuorumCommand")
            .args(["--bootstrap-server", &self.brokers.bootstrap()])
            .args(
                self.kafka_credentials
                    .as_ref()
                    .map(|dir| {
                        [
                            std::ffi::OsString::from("--command-config"),
                            dir.join("kafka-admin.properties").into_os_string(),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .args(["describe", "--status"])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .context("Kafka's quorum tool did not answer within 60 s")?
            .context("cannot run Kafka's quorum tool")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let leader: u32 = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("LeaderId:"))
            .and_then(|id| id.trim().parse().ok())
            .with_context(|| {
                format!(
                    "the quorum tool named no leader: {}{}",
                    text.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })?;
        self.brokers
            .index_of(leader)
            .with_context(|| format!("the quorum leader {leader} is none of the run's nodes"))
    }

    /// The index of the broker leading the `order.placed` partition with the most records.
    async fn busiest_leader(&self) -> anyhow::Result<usize> {
        let bootstrap = self.brokers.bootstrap();
        let topic = crate::topics::Topics::with_prefix(&self.prefix).order_placed;
        let leader = tokio::task::spawn_blocking(move || -> anyhow::Result<i32> {
            let consumer: BaseConsumer = foodorder_testkit::kafka::client(&bootstrap)
                .create()
                .context("cannot create a metadata client")?;
            let timeout = Duration::from_secs(10);
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .context("no metadata for order.placed")?;
            let partitions: Vec<(i32, i32)> = metadata
                .topics()
                .first()
                .map(|topic| {
                    topic
                        .partitions()
                        .iter()
                        .map(|partition| (partition.id(), partition.leader()))
                        .collect()
                })
                .unwrap_or_default();
            let mut busiest = None;
            for (partition, leader) in partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .context("no watermarks for order.placed")?;
                if busiest.is_none_or(|(most, _)| high > most) {
                    busiest = Some((high, leader));
                }
            }
            busiest
                .map(|(_, leader)| leader)
                .context("order.placed has no partitions")
        })
        .await
        .context("the metadata lookup panicked")??;
        let leader = u32::try_from(leader).context("the partition has no leader")?;
        self.brokers
            .index_of(leader)
            .with_context(|| format!("broker {leader} is none of the run's nodes"))
    }

    /// SIGKILL, a pause (`pause`, or 1–2 s drawn from the schedule), start again.
    async fn kill_and_restart(
        &mut self,
        name: &str,
        pause: Option<Duration>,
    ) -> anyhow::Result<String> {
        self.services.kill(name).await;
        let pause = pause.unwrap_or_else(|| self.schedule.restart_pause());
        tokio::time::sleep(pause).await;
        self.services.start(name)?;
        Ok(name.to_owned())
    }

    async fn duplicate(&mut self) -> anyhow::Result<()> {
        let topics = crate::topics::Topics::with_prefix(&self.prefix);
        for topic in [topics.order_placed, topics.payment_completed] {
            let bootstrap = self.brokers.bootstrap();
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
        let (bootstrap, prefix, seed) = (self.brokers.bootstrap(), self.prefix.clone(), self.seed);
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
