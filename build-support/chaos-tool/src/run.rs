//! The `run` subcommand: one whole chaos run in one process, once
//! build-support/chaos has provisioned PostgreSQL, the broker's jars and the
//! binaries. It starts the broker and the four service instances (with
//! `--cluster`: three KRaft nodes and two instances of each service, each
//! instance in a network namespace of its own, see [`crate::netns`]), waits
//! until they are ready, places the load as a task while it injects the faults
//! of the seeded schedule, watches every instance's readiness and for
//! instances that exit on their own, then checks the invariants and prints the
//! tables. Whatever happens (success, failure, Ctrl-C, SIGTERM), every process
//! it started is stopped, and the network it made removed, before it exits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::broker::Brokers;
use crate::netns::Network;
use crate::observe::{self, Watcher, Window};
use crate::postgres::Postgres;
use crate::schedule::{Fault, Mode, Schedule};
use crate::supervise::{Kind, Services, Spec, free_addr};
use crate::{check, load, say};

/// The order API's server-side deadline in a run (`ORDER_API_REQUEST_TIMEOUT_MS`).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A PlaceOrder call answered later than this after it started counts as unanswered.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(7);

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
    /// Three KRaft nodes (RF 3, min ISR 2), two instances of every service in
    /// network namespaces, and the faults of a distributed deployment (needs root).
    #[arg(long)]
    cluster: bool,
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
    /// Kafka with SASL/SCRAM and ACLs: the credentials directory
    /// (`kafka-<principal>.password` for admin, broker, controller and each
    /// service; lib.sh's `kafka_sasl_credentials`). The brokers take SASL
    /// only, the run provisions the principals, topics and ACLs with
    /// `--provision`, each service logs in as its own principal and the
    /// run's own clients as the admin.
    #[arg(long, requires = "provision")]
    kafka_credentials: Option<PathBuf>,
    /// build-support/kafka/Provision.java.
    #[arg(long)]
    provision: Option<PathBuf>,
    /// order-api's `DATABASE_URL` (the role owning `orders`); default `--database`.
    #[arg(long, env = "CHAOS_ORDERS_DATABASE_URL", hide_env_values = true)]
    orders_database: Option<String>,
    /// payment-service's `DATABASE_URL` (the role owning `payments`); default `--database`.
    #[arg(long, env = "CHAOS_PAYMENTS_DATABASE_URL", hide_env_values = true)]
    payments_database: Option<String>,
    /// notification-service's `DATABASE_URL` (the role owning `notifications`); default `--database`.
    #[arg(long, env = "CHAOS_NOTIFICATIONS_DATABASE_URL", hide_env_values = true)]
    notifications_database: Option<String>,
}

/// What each kind of service logs in as: its database URL and, with SASL,
/// its Kafka principal and password.
struct Logins {
    databases: [(Kind, String); 3],
    kafka: Option<[(Kind, String, String); 3]>,
}

impl Logins {
    fn of(args: &RunArgs) -> anyhow::Result<Self> {
        let database = |url: &Option<String>| url.clone().unwrap_or_else(|| args.database.clone());
        let kafka = match &args.kafka_credentials {
            None => None,
            Some(dir) => {
                let login = |kind, principal: &str| -> anyhow::Result<(Kind, String, String)> {
                    Ok((kind, principal.to_owned(), read_password(dir, principal)?))
                };
                Some([
                    login(Kind::OrderApi, "order-api")?,
                    login(Kind::Payment, "payment-service")?,
                    login(Kind::Notification, "notification-service")?,
                ])
            }
        };
        Ok(Self {
            databases: [
                (Kind::OrderApi, database(&args.orders_database)),
                (Kind::Payment, database(&args.payments_database)),
                (Kind::Notification, database(&args.notifications_database)),
            ],
            kafka,
        })
    }

    /// The variables of one instance of `kind`; `database` rewrites its
    /// database URL (a cluster instance reaches PostgreSQL through the forwarder).
    fn env(&self, kind: Kind, database: impl Fn(&str) -> String) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some((_, url)) = self.databases.iter().find(|(of, _)| *of == kind) {
            env.push(("DATABASE_URL".to_owned(), database(url)));
        }
        if let Some((_, principal, password)) =
            self.kafka.iter().flatten().find(|(of, _, _)| *of == kind)
        {
            env.extend([
                ("KAFKA_SASL_USERNAME".to_owned(), principal.clone()),
                ("KAFKA_SASL_PASSWORD".to_owned(), password.clone()),
                (
                    "KAFKA_SASL_MECHANISM".to_owned(),
                    "SCRAM-SHA-512".to_owned(),
                ),
            ]);
        }
        env
    }
}

/// `dir/kafka-<principal>.password`, trimmed.
fn read_password(dir: &std::path::Path, principal: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("kafka-{principal}.password"));
    let password = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(password.trim().to_owned())
}

/// The state of one run: the processes it supervises and what it recorded.
pub struct Chaos {
    /// The service instances.
    pub(crate) services: Services,
    /// The run's own broker, or its three KRaft nodes.
    pub(crate) brokers: Brokers,
    /// The namespaces of a cluster run.
    pub(crate) network: Option<std::sync::Arc<Network>>,
    /// The broker's jars (for Kafka's quorum tool).
    pub(crate) kafka_libs: PathBuf,
    /// The tasks that heal the network faults in force.
    pub(crate) impaired: Vec<JoinHandle<anyhow::Result<()>>>,
    /// (window index, when it healed) of every healed network fault.
    pub(crate) healed: std::sync::Arc<std::sync::Mutex<Vec<(usize, Duration)>>>,
    /// Every fault's window, for the findings.
    pub(crate) windows: Vec<Window>,
    /// When the load started.
    pub(crate) load_started: Option<Instant>,
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
    pub(crate) cluster: bool,
    rate: u32,
    pub(crate) pg_port: u16,
    stop_postgres_at_exit: bool,
    load: Option<JoinHandle<anyhow::Result<load::LoadReport>>>,
    injected: BTreeMap<Fault, usize>,
    bin_dir: PathBuf,
    broker_script: PathBuf,
    /// With SASL: the credentials directory.
    pub(crate) kafka_credentials: Option<PathBuf>,
    provision: Option<PathBuf>,
    logins: Logins,
}

/// Runs the suite; returns whether it found no violation.
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    if let Some(dir) = &args.kafka_credentials {
        foodorder_testkit::kafka::log_in_as("admin", &read_password(dir, "admin")?)?;
    }
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
        let brokers = if args.cluster {
            // The cluster's addresses are known once its network exists (`drive`).
            Brokers::single(PathBuf::new(), PathBuf::new(), PathBuf::new(), None)
        } else {
            Brokers::single(
                args.broker_script.clone(),
                args.kafka_libs.clone(),
                args.log_dir.join("kafka"),
                args.kafka_credentials.clone(),
            )
        };
        let logins = Logins::of(&args)?;
        let mut specs = Services::single_layout(api, api_http);
        for spec in &mut specs {
            spec.env = logins.env(spec.kind, str::to_owned);
        }
        Ok(Self {
            services: Services::new(args.bin_dir.clone(), args.log_dir.clone(), specs),
            brokers,
            network: None,
            kafka_libs: args.kafka_libs.clone(),
            impaired: Vec::new(),
            healed: Default::default(),
            windows: Vec::new(),
            load_started: None,
            postgres: Postgres::new(args.pg_ctl, args.pg_data, args.pg_port, args.pg_as_postgres),
            schedule: Schedule::new(args.seed, mode, args.cluster),
            seed: args.seed,
            prefix: format!("chaos{}-", args.seed),
            database: args.database,
            log_dir: args.log_dir,
            hostile_sent: Vec::new(),
            mode,
            cluster: args.cluster,
            rate: args.rate,
            pg_port: args.pg_port,
            stop_postgres_at_exit: args.pg_stop_at_exit,
            load: None,
            injected: BTreeMap::new(),
            bin_dir: args.bin_dir,
            broker_script: args.broker_script,
            kafka_credentials: args.kafka_credentials,
            provision: args.provision,
            logins,
        })
    }

    /// Cluster run: the namespaces, the PostgreSQL forwarder, the three nodes
    /// on the bridge address, and six instances, each in its own namespace.
    async fn prepare_cluster(&mut self) -> anyhow::Result<()> {
        let names = [
            "order-api-1",
            "order-api-2",
            "payment-1",
            "payment-2",
            "notification-1",
            "notification-2",
        ];
        let mut network = Network::create(self.seed, &names).await?;
        let postgres = network.forward_postgres(self.pg_port).await?;
        say(format!(
            "network: bridge {} with a namespace per instance; PostgreSQL forwarded on {postgres}",
            network.host
        ));
        self.brokers = Brokers::cluster(
            self.broker_script.clone(),
            self.kafka_libs.clone(),
            &self.log_dir,
            std::net::IpAddr::V4(network.host),
            self.kafka_credentials.clone(),
        );
        let local = format!("127.0.0.1:{}", self.pg_port);
        let forwarded = |url: &str| url.replacen(&local, &postgres.to_string(), 1);
        for (_, url) in &self.logins.databases {
            anyhow::ensure!(
                forwarded(url) != *url,
                "a database URL does not name {local}"
            );
        }
        let mut specs = Vec::new();
        for name in names {
            let address = network
                .address_of(name)
                .context("an instance has no namespace")?;
            let at = |port| SocketAddr::from((address, port));
            let kind = match name.split('-').next() {
                Some("order") => Kind::OrderApi,
                Some("payment") => Kind::Payment,
                _ => Kind::Notification,
            };
            specs.push(Spec {
                name: name.to_owned(),
                kind,
                health: at(8080),
                grpc: (kind == Kind::OrderApi).then(|| at(50051)),
                namespace: network.namespace_of(name),
                env: self.logins.env(kind, forwarded),
            });
        }
        self.services = Services::new(self.bin_dir.clone(), self.log_dir.clone(), specs);
        self.network = Some(std::sync::Arc::new(network));
        Ok(())
    }

    /// A consumer group of the run, named after its service's principal
    /// (the ACLs allow a service the groups that start with its name), e.g.
    /// `payment-service-chaos-4242` for `payment`.
    fn group(&self, service: &str) -> String {
        let principal = match service {
            "payment" => "payment-service",
            "notification" => "notification-service",
            other => other,
        };
        format!("{principal}-chaos-{}", self.seed)
    }

    /// Who owns each service schema's tables, as the services' migrations
    /// left them (with the roles: each schema its own service's role).
    async fn schema_owners(&self) -> anyhow::Result<String> {
        // Bounded, like every call of the run: a stalled server fails it.
        tokio::time::timeout(Duration::from_secs(30), self.read_schema_owners())
            .await
            .context("the database did not say who owns the tables within 30 s")?
    }

    async fn read_schema_owners(&self) -> anyhow::Result<String> {
        let pool = sqlx::PgPool::connect(&self.database)
            .await
            .context("failed to connect to the database")?;
        let owners: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT schemaname::text, tableowner::text, count(*) FROM pg_tables \
             WHERE schemaname IN ('orders', 'payments', 'notifications') \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .context("cannot read the tables' owners")?;
        pool.close().await;
        Ok(owners
            .iter()
            .map(|(schema, owner, tables)| format!("{schema}.* ({tables} tables) owned by {owner}"))
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// With SASL: the services' principals, the run's topics (RF and min
    /// ISR of the mode) and every ACL, made as the admin by Provision.java.
    async fn provision_kafka(&self) -> anyhow::Result<()> {
        let (Some(credentials), Some(provision)) = (&self.kafka_credentials, &self.provision)
        else {
            return Ok(());
        };
        let (replication, min_insync) = if self.cluster { ("3", "2") } else { ("1", "1") };
        let started = Instant::now();
        let output = tokio::process::Command::new("java")
            .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp"])
            .arg(format!("{}/*", self.kafka_libs.display()))
            .arg(provision)
            .args(["--bootstrap", &self.brokers.bootstrap()])
            .arg("--credentials")
            .arg(credentials)
            .args(["--prefix", &self.prefix])
            .args(["--partitions", "6", "--dlq-partitions", "1"])
            .args(["--replication", replication, "--min-insync", min_insync])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(180), output)
            .await
            .context("Provision.java did not finish within 180 s")?
            .context("cannot run java for Provision.java")?;
        let text = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "Provision.java failed: {}{}",
            text.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        say(format!(
            "kafka: SASL/SCRAM-SHA-512 with ACLs, provisioned in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            text.lines().last().unwrap_or_default().trim()
        ));
        Ok(())
    }

    /// The environment of every service instance (the health address of the
    /// consumers is added per start).
    fn service_env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", self.brokers.bootstrap()),
            ("KAFKA_TOPIC_PREFIX", self.prefix.clone()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            (
                "KAFKA_REPLICATION_FACTOR",
                if self.cluster { "3" } else { "1" }.into(),
            ),
            (
                "KAFKA_MIN_INSYNC_REPLICAS",
                if self.cluster { "2" } else { "1" }.into(),
            ),
            (
                "ORDER_API_REQUEST_TIMEOUT_MS",
                REQUEST_DEADLINE.as_millis().to_string(),
            ),
            ("LOG_LEVEL", "info".into()),
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
        let seconds = self.mode.seconds(self.cluster);
        say(format!(
            "chaos ({}{}, seed {}): {seconds} s of load at {} orders/s; logs in {}",
            self.mode.name(),
            if self.cluster { ", cluster" } else { "" },
            self.seed,
            self.rate,
            self.log_dir.display()
        ));
        if self.cluster {
            self.prepare_cluster().await?;
        }
        let booting = Instant::now();
        self.brokers.boot().await?;
        say(format!(
            "kafka on {} ({} node(s), up in {:.1} s)",
            self.brokers.bootstrap(),
            self.brokers.len(),
            booting.elapsed().as_secs_f64()
        ));
        self.provision_kafka().await?;
        self.services.set_env(self.service_env());
        self.services.start_all()?;
        self.services.wait_ready(READY_WITHIN).await?;
        say(format!("database: {}", self.schema_owners().await?));
        say("platform ready; load starts");

        let addrs: Vec<String> = self
            .services
            .grpc_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let rate = self.rate;
        let duration = Duration::from_secs(seconds);
        let load =
            tokio::spawn(
                async move { load::place_orders(&addrs, rate, duration, RETRY_FOR).await },
            );
        let load_started = Instant::now();
        self.load_started = Some(load_started);
        let watcher = Watcher::start(self.services.endpoints(), load_started);
        self.load = Some(load);
        for (at, fault) in std::mem::take(&mut self.schedule.events) {
            while load_started.elapsed() < Duration::from_secs(at) {
                self.tend().await?;
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
        while self.load.as_ref().is_some_and(|load| !load.is_finished())
            || self.impaired.iter().any(|heal| !heal.is_finished())
        {
            self.tend().await?;
            sleep(Duration::from_millis(500)).await;
        }
        for heal in std::mem::take(&mut self.impaired) {
            heal.await.context("a heal task panicked")??;
        }
        self.brokers.settle().await?;
        for (index, at) in self.healed.lock().unwrap().iter() {
            self.windows[*index].to = *at;
        }
        let load = self.load.take().context("the load task is gone")?;
        let placed = load
            .await
            .context("the load client panicked")?
            .context("the load client failed")?;
        load::write_acked(&self.log_dir.join("acked.txt"), &placed.acked)?;
        watcher.await_recovery(&self.windows, load_started).await;
        let changes = watcher.finish();
        std::fs::write(
            self.log_dir.join("readiness.log"),
            observe::render_changes(&changes),
        )?;
        let findings = observe::findings(&self.windows, &placed.calls, &changes);
        let unanswered = placed
            .calls
            .iter()
            .filter(|call| call.took >= ANSWER_WITHIN)
            .count();
        let longest = placed
            .calls
            .iter()
            .map(|call| call.took)
            .max()
            .unwrap_or_default();
        std::fs::write(
            self.log_dir.join("load.json"),
            format!("{}\n", placed.summary),
        )?;
        self.services.check_alive()?;

        say("load done; waiting for quiescence and checking the invariants");
        let inputs = check::Inputs {
            database: self.database.clone(),
            bootstrap: self.brokers.bootstrap(),
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
        let undetected = findings.iter().filter(|finding| finding.undetected).count();
        let unrecovered = findings
            .iter()
            .filter(|finding| finding.unrecovered)
            .count();
        let mut text = verdict.text.clone();
        // Every order the careful client placed must end acknowledged: a call
        // answered with a final error, or retried past its time, is a failure
        // of the platform (with an empty acknowledged list every other row
        // would check nothing).
        let orders = placed.summary["placed"].as_u64().unwrap_or_default();
        let unacknowledged = orders.saturating_sub(placed.acked.len() as u64);
        text.push_str(&format!(
            "{:<52} {:>8} {:>10}\n",
            "every order placed was acknowledged", orders, unacknowledged
        ));
        text.push_str(&format!(
            "{:<52} {:>8} {:>10}\n",
            format!("PlaceOrder answered within {} s", ANSWER_WITHIN.as_secs()),
            placed.calls.len(),
            unanswered
        ));
        if self.cluster {
            let impairments = findings.iter().filter(|finding| finding.evaluated).count();
            text.push_str(&format!(
                "{:<52} {:>8} {:>10}\n",
                "partitioned instance reported not ready", impairments, undetected
            ));
            let healed = self
                .windows
                .iter()
                .filter(|window| window.fault.impaired().is_some())
                .count();
            text.push_str(&format!(
                "{:<52} {:>8} {:>10}\n",
                format!(
                    "ready again by itself within {} s",
                    observe::RECOVERY_LIMIT.as_secs()
                ),
                healed,
                unrecovered
            ));
        }
        let mut faults = format!("{}\n", observe::header());
        for finding in &findings {
            faults.push_str(&finding.line);
            faults.push('\n');
        }
        faults.push_str(&format!(
            "longest PlaceOrder call of the run: {} ms\n",
            longest.as_millis()
        ));
        std::fs::write(self.log_dir.join("faults.txt"), &faults)?;
        self.print_table(&placed.summary, &text, &faults);
        Ok(verdict.clean
            && self.services.unexpected_exits == 0
            && unacknowledged == 0
            && orders > 0
            && unanswered == 0
            && undetected == 0
            && unrecovered == 0)
    }

    /// Between faults: restarts instances that exited on their own.
    async fn tend(&mut self) -> anyhow::Result<()> {
        self.services.check_alive()
    }

    /// Time since the load started.
    pub(crate) fn now(&self) -> Duration {
        self.load_started.map(|at| at.elapsed()).unwrap_or_default()
    }

    /// The table build-support/chaos has always printed.
    fn print_table(&self, load_summary: &serde_json::Value, invariants: &str, faults: &str) {
        println!();
        println!(
            "chaos {}{}, seed {}, {} s at {} orders/s",
            self.mode.name(),
            if self.cluster {
                " --cluster (3 KRaft nodes, RF 3, min ISR 2; 2 instances per service)"
            } else {
                ""
            },
            self.seed,
            self.mode.seconds(self.cluster),
            self.rate
        );
        println!("{:<52} {:>8}", "fault injected", "count");
        for fault in Fault::ALL {
            if self.mode.count(fault, self.cluster) == 0 {
                continue;
            }
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
        print!("{faults}");
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
        self.brokers.stop().await;
        for heal in self.impaired.drain(..) {
            heal.abort();
        }
        if let Some(network) = self.network.take() {
            match std::sync::Arc::try_unwrap(network) {
                Ok(mut network) => network.teardown().await,
                Err(network) => network.remove().await,
            }
        }
        if self.stop_postgres_at_exit {
            self.postgres.stop().await;
        }
    }
}
