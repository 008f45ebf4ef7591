//! The `run` subcommand: one whole chaos run in one process, once
//! build-support/chaos has provisioned PostgreSQL, the broker's jars and the
//! binaries. It starts the broker and the four service instances, waits until
//! they are ready, places the load as a task while it injects the faults of
//! the seeded schedule and watches for instances that exit on their own, then
//! checks the invariants and prints the table. Whatever happens (success,
//! failure, Ctrl-C, SIGTERM), every process it started is stopped before it exits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::broker::Broker;
use crate::postgres::Postgres;
use crate::schedule::{Fault, Mode, Schedule};
use crate::supervise::{Services, free_addr};
use crate::{check, load, say};

/// How long the platform may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How long one order may be retried (with its key) before it counts as failed.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// Options of the `run` subcommand.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Seed of the fault schedule, of the payment gateway and of the hostile records.
    #[arg(long)]
    seed: u64,
    /// About a minute of load, each fault class once or twice (the default).
    #[arg(long, conflicts_with = "full")]
    short: bool,
    /// A few minutes: payment SIGKILLed 5x, notification 3x, order-api 3x, the broker 2x.
    #[arg(long)]
    full: bool,
    /// Orders per second.
    #[arg(long, env = "CHAOS_RATE", default_value_t = 40)]
    rate: u32,
    /// Directory of the service binaries (order-api, payment-service, notification-service).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The broker's jars (lib.sh's KAFKA_LIBS).
    #[arg(long)]
    kafka_libs: PathBuf,
    /// The broker launcher, build-support/kafka/broker.
    #[arg(long)]
    broker_script: PathBuf,
    /// Where the logs, the broker's data and the records of the run go.
    #[arg(long)]
    log_dir: PathBuf,
    /// The platform's database (the services create it and run the migrations).
    #[arg(long)]
    database: String,
    /// pg_ctl of the private PostgreSQL cluster the run restarts.
    #[arg(long)]
    pg_ctl: PathBuf,
    /// Data directory of that cluster.
    #[arg(long)]
    pg_data: PathBuf,
    /// Its port on 127.0.0.1 (kept across the restart).
    #[arg(long)]
    pg_port: u16,
    /// Run pg_ctl as the postgres OS user (`runuser -u postgres --`), as root must.
    #[arg(long)]
    pg_as_postgres: bool,
    /// Stop the cluster (fast shutdown) when the run ends.
    #[arg(long)]
    pg_stop_at_exit: bool,
}

/// The state of one run: the processes it supervises and what it recorded.
pub struct Chaos {
    /// The four service instances.
    pub(crate) services: Services,
    /// The run's own broker.
    pub(crate) broker: Broker,
    /// The private cluster the run restarts.
    pub(crate) postgres: Postgres,
    /// The faults still to come, and the generator of the restart pauses.
    pub(crate) schedule: Schedule,
    /// The run's seed.
    pub(crate) seed: u64,
    /// Topic-name prefix of the run, `chaos<seed>-`.
    pub(crate) prefix: String,
    /// The platform's database.
    pub(crate) database: String,
    /// Logs, the broker's data and the records of the run.
    pub(crate) log_dir: PathBuf,
    /// What the hostile-record fault sent, for the checker.
    pub(crate) hostile_sent: Vec<serde_json::Value>,
    mode: Mode,
    rate: u32,
    api: SocketAddr,
    api_http: SocketAddr,
    stop_postgres_at_exit: bool,
    load: Option<JoinHandle<anyhow::Result<load::LoadReport>>>,
    injected: BTreeMap<Fault, usize>,
}

/// Runs the suite; returns whether it found no violation.
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut chaos = Chaos::new(args)?;
    let outcome = tokio::select! {
        outcome = chaos.drive() => outcome,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
        _ = hangup.recv() => Err(anyhow::anyhow!("hung up (SIGHUP)")),
    };
    chaos.shutdown().await;
    let (seed, logs) = (chaos.seed, chaos.log_dir.display());
    match &outcome {
        Ok(true) => say(format!("chaos passed (seed {seed})")),
        Ok(false) => eprintln!("error: chaos found violations (seed {seed}); logs in {logs}"),
        Err(_) => {}
    }
    outcome.with_context(|| format!("chaos run failed (seed {seed}); logs in {logs}"))
}

impl Chaos {
    fn new(args: RunArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(args.rate > 0, "the rate must be at least 1 order/s");
        std::fs::create_dir_all(&args.log_dir)
            .with_context(|| format!("failed to create {}", args.log_dir.display()))?;
        let mode = if args.full { Mode::Full } else { Mode::Short };
        let (api, api_http) = (free_addr(), free_addr());
        Ok(Self {
            services: Services::new(args.bin_dir, args.log_dir.clone(), api, api_http),
            broker: Broker::new(
                args.broker_script,
                args.kafka_libs,
                args.log_dir.join("kafka"),
            ),
            postgres: Postgres::new(args.pg_ctl, args.pg_data, args.pg_port, args.pg_as_postgres),
            schedule: Schedule::new(args.seed, mode),
            seed: args.seed,
            prefix: format!("chaos{}-", args.seed),
            database: args.database,
            log_dir: args.log_dir,
            hostile_sent: Vec::new(),
            mode,
            rate: args.rate,
            api,
            api_http,
            stop_postgres_at_exit: args.pg_stop_at_exit,
            load: None,
            injected: BTreeMap::new(),
        })
    }

    /// A consumer group of the run, e.g. `chaos-payment-4242`.
    fn group(&self, service: &str) -> String {
        format!("chaos-{service}-{}", self.seed)
    }

    /// The environment of every service instance (the health address of the
    /// consumers is added per start).
    fn service_env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", self.broker.bootstrap()),
            ("KAFKA_TOPIC_PREFIX", self.prefix.clone()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("LOG_LEVEL", "info".into()),
            ("ORDER_API_ADDR", self.api.to_string()),
            ("ORDER_API_HTTP_ADDR", self.api_http.to_string()),
            ("PAYMENT_CONSUMER_GROUP", self.group("payment")),
            ("NOTIFICATION_CONSUMER_GROUP", self.group("notification")),
            ("ORDER_API_CONSUMER_GROUP", self.group("order-api")),
            ("PAYMENT_MIN_LATENCY", "0.05".into()),
            ("PAYMENT_MAX_LATENCY", "1.2".into()),
            ("PAYMENT_TIMEOUT", "1.0".into()),
            ("PAYMENT_RETRY_BASE_DELAY", "0.2".into()),
            ("PAYMENT_RNG_SEED", self.seed.to_string()),
            ("SHUTDOWN_GRACE_SECONDS", "5".into()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// The run itself: platform up, load and faults, invariants, table.
    async fn drive(&mut self) -> anyhow::Result<bool> {
        let seconds = self.mode.seconds();
        say(format!(
            "chaos ({}, seed {}): {seconds} s of load at {} orders/s; logs in {}",
            self.mode.name(),
            self.seed,
            self.rate,
            self.log_dir.display()
        ));
        self.broker.boot().await?;
        say(format!("kafka broker on {}", self.broker.bootstrap()));
        self.services.set_env(self.service_env());
        self.services.start_all()?;
        self.services.wait_ready(READY_WITHIN).await?;
        say("platform ready; load starts");

        let (addr, rate) = (self.api.to_string(), self.rate);
        let duration = Duration::from_secs(seconds);
        let load =
            tokio::spawn(async move { load::place_orders(&addr, rate, duration, RETRY_FOR).await });
        let load_started = Instant::now();
        self.load = Some(load);
        for (at, fault) in std::mem::take(&mut self.schedule.events) {
            while load_started.elapsed() < Duration::from_secs(at) {
                self.services.check_alive()?;
                sleep(Duration::from_millis(500)).await;
            }
            say(format!(
                "t={}s: {}",
                load_started.elapsed().as_secs(),
                fault.name()
            ));
            self.inject(fault).await?;
            *self.injected.entry(fault).or_default() += 1;
        }
        while self.load.as_ref().is_some_and(|load| !load.is_finished()) {
            self.services.check_alive()?;
            sleep(Duration::from_millis(500)).await;
        }
        let load = self.load.take().context("the load task is gone")?;
        let placed = load
            .await
            .context("the load client panicked")?
            .context("the load client failed")?;
        load::write_acked(&self.log_dir.join("acked.txt"), &placed.acked)?;
        std::fs::write(
            self.log_dir.join("load.json"),
            format!("{}\n", placed.summary),
        )?;
        self.services.check_alive()?;

        say("load done; waiting for quiescence and checking the invariants");
        let inputs = check::Inputs {
            database: self.database.clone(),
            bootstrap: self.broker.bootstrap(),
            prefix: self.prefix.clone(),
            payment_group: self.group("payment"),
            notification_group: self.group("notification"),
            order_group: self.group("order-api"),
            acked: placed.acked.iter().cloned().collect(),
            hostile: Some(std::mem::take(&mut self.hostile_sent)),
            wait: self.mode.quiescence_wait(),
        };
        let verdict = tokio::spawn(check::verify(inputs))
            .await
            .context("the checker panicked")??;
        std::fs::write(self.log_dir.join("check.txt"), &verdict.text)?;
        self.services.check_alive()?;
        self.print_table(&placed.summary, &verdict.text);
        Ok(verdict.clean && self.services.unexpected_exits == 0)
    }

    /// The table build-support/chaos has always printed.
    fn print_table(&self, load_summary: &serde_json::Value, invariants: &str) {
        println!();
        println!(
            "chaos {}, seed {}, {} s at {} orders/s",
            self.mode.name(),
            self.seed,
            self.mode.seconds(),
            self.rate
        );
        println!("{:<52} {:>8}", "fault injected", "count");
        for fault in Fault::ALL {
            let count = self.injected.get(&fault).copied().unwrap_or(0);
            println!("{:<52} {:>8}", fault.name(), count);
        }
        println!();
        println!("PlaceOrder: {load_summary}");
        println!();
        print!("{invariants}");
        println!(
            "{:<52} {:>8} {:>10}",
            "no service exited on its own", "-", self.services.unexpected_exits
        );
        println!();
    }

    /// Stops everything the run started: the load, the services, the broker
    /// and (when asked to) PostgreSQL.
    async fn shutdown(&mut self) {
        if let Some(load) = self.load.take() {
            load.abort();
        }
        say("stopping the services and the broker");
        self.services.stop_all().await;
        self.broker.stop().await;
        if self.stop_postgres_at_exit {
            self.postgres.stop().await;
        }
    }
}
