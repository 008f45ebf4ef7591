//! Process supervision: the service instances of a run (order-api, payment-1,
//! payment-2, notification-1), started with the run's environment and their
//! output appended to one log file each; the readiness wait; the watch for an
//! instance that exited without being killed (a violation: it is counted and
//! started again); and [`stop`], the one way this tool ends a process, so that
//! every child, on every exit path, gets the same TERM, bounded wait, KILL.
//!
//! Children run in a process group of their own: a Ctrl-C in the terminal
//! reaches this tool only, which then stops them in order. Each child is also
//! killed when its handle is dropped, the last resort should the tool panic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long a stopped service gets between SIGTERM and SIGKILL (it drains
/// for `SHUTDOWN_GRACE_SECONDS`, 5 s, at most).
pub const SERVICE_GRACE: Duration = Duration::from_secs(10);

/// Stops `child`: SIGTERM, up to `grace` for it to exit, then SIGKILL; a zero
/// `grace` is SIGKILL at once (the faults). Returns once the process is reaped.
pub async fn stop(name: &str, child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let (false, Some(pid)) = (grace.is_zero(), pid) {
        if kill(Pid::from_raw(pid), Signal::SIGTERM).is_ok()
            && timeout(grace, child.wait()).await.is_ok()
        {
            return;
        }
        eprintln!("warning: {name} did not stop within {grace:?} of SIGTERM; sending SIGKILL");
    }
    if let Err(error) = child.start_kill() {
        eprintln!("warning: cannot SIGKILL {name}: {error}");
    }
    if let Err(error) = child.wait().await {
        eprintln!("warning: waiting for {name} failed: {error}");
    }
}

/// Starts `command` in a process group of its own, stdin from /dev/null and
/// stdout and stderr to `log` (appended, or truncated first when `truncate`).
pub fn spawn(command: &mut Command, log: &Path, truncate: bool) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!truncate)
        .truncate(truncate)
        .open(log)
        .with_context(|| format!("failed to open {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start {:?}", command.as_std().get_program()))
}

/// The last `lines` lines of a file, or nothing if it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().rev().take(lines).collect();
    kept.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Whether `GET /readyz` on `addr` answers 200 within a couple of seconds.
pub async fn http_ready(addr: SocketAddr) -> bool {
    matches!(readyz(addr).await, Some((true, _)))
}

/// `GET /readyz` on `addr` within two seconds: whether it answered 200, and
/// the body's first line (the reason when not ready); `None` when it did not answer.
pub async fn readyz(addr: SocketAddr) -> Option<(bool, String)> {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        let mut reader = BufReader::new(stream).take(4096);
        reader.read_to_string(&mut response).await.ok()?;
        let ready = response.split_whitespace().nth(1) == Some("200");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.lines().next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        Some((ready, body))
    };
    timeout(Duration::from_secs(2), probe).await.ok().flatten()
}

/// Whether something accepts TCP connections on `addr`.
pub async fn port_open(addr: SocketAddr) -> bool {
    matches!(
        timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// A free TCP address on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], foodorder_testkit::free_port()))
}

/// A free port below the kernel's ephemeral range (32768 and up by default),
/// for a listener that must bind the same port again after a SIGKILL: a port
/// from the ephemeral range may meanwhile be the source port of some outgoing
/// connection, and the restart would fail.
pub fn fixed_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    foodorder_testkit::free_port()
}

/// What an instance is: its binary and how it is told its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `order-api`: `ORDER_API_ADDR` (gRPC) and `ORDER_API_HTTP_ADDR`.
    OrderApi,
    /// `payment-service`: `PAYMENT_HEALTH_ADDR`.
    Payment,
    /// `notification-service`: `NOTIFICATION_HEALTH_ADDR`.
    Notification,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::OrderApi => "order-api",
            Kind::Payment => "payment-service",
            Kind::Notification => "notification-service",
        }
    }
}

/// How one instance is started: its name, kind, addresses and where it runs.
pub struct Spec {
    /// Its name in the logs and the table, e.g. `payment-1`.
    pub name: String,
    /// Which service it is.
    pub kind: Kind,
    /// Its HTTP endpoint (/readyz, /metrics), the same across restarts.
    pub health: SocketAddr,
    /// The order API's gRPC address (ignored for the consumers).
    pub grpc: Option<SocketAddr>,
    /// The network namespace it runs in (`ip netns exec`), if any.
    pub namespace: Option<String>,
    /// Variables that replace the run's for this instance (e.g. its `DATABASE_URL`).
    pub env: Vec<(String, String)>,
}

/// One service process of the run.
struct Instance {
    spec: Spec,
    child: Option<Child>,
    /// False once it was killed for good: its exit is then no violation.
    expected: bool,
}

/// The service instances of a run.
pub struct Services {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
    instances: Vec<Instance>,
    /// How many times an instance exited without being killed.
    pub unexpected_exits: usize,
}

impl Services {
    /// The instances of `specs`, not started.
    pub fn new(bin_dir: PathBuf, log_dir: PathBuf, specs: Vec<Spec>) -> Self {
        Self {
            bin_dir,
            log_dir,
            env: Vec::new(),
            instances: specs
                .into_iter()
                .map(|spec| Instance {
                    spec,
                    child: None,
                    expected: true,
                })
                .collect(),
            unexpected_exits: 0,
        }
    }

    /// The single-broker layout: order-api (gRPC on `grpc`, HTTP on `http`),
    /// payment-1, payment-2 and notification-1, all on 127.0.0.1.
    pub fn single_layout(grpc: SocketAddr, http: SocketAddr) -> Vec<Spec> {
        let spec = |name: &str, kind, health, grpc| Spec {
            name: name.to_owned(),
            kind,
            health,
            grpc,
            namespace: None,
            env: Vec::new(),
        };
        vec![
            spec("order-api", Kind::OrderApi, http, Some(grpc)),
            spec("payment-1", Kind::Payment, free_addr(), None),
            spec("payment-2", Kind::Payment, free_addr(), None),
            spec("notification-1", Kind::Notification, free_addr(), None),
        ]
    }

    /// The environment every instance starts with, from its next start on.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Every instance's name and HTTP endpoint.
    pub fn endpoints(&self) -> Vec<(String, SocketAddr)> {
        self.instances
            .iter()
            .map(|instance| (instance.spec.name.clone(), instance.spec.health))
            .collect()
    }

    /// The order API instances' gRPC addresses.
    pub fn grpc_addrs(&self) -> Vec<SocketAddr> {
        self.instances
            .iter()
            .filter_map(|instance| instance.spec.grpc)
            .collect()
    }

    fn instance(&mut self, name: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|instance| instance.spec.name == name)
            .unwrap_or_else(|| panic!("no instance named {name}"))
    }

    fn log_of(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Starts (or starts again) the instance `name`.
    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let (bin_dir, log, env) = (self.bin_dir.clone(), self.log_of(name), self.env.clone());
        let instance = self.instance(name);
        let spec = &instance.spec;
        let binary = bin_dir.join(spec.kind.binary());
        let mut command = match &spec.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        // Nothing of the tool's own logins reaches an instance (neither the
        // admin's nor the other services' database URLs): its principal and
        // its role (if any) come from its spec.
        for name in [
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_SASL_MECHANISM",
            "CHAOS_ORDERS_DATABASE_URL",
            "CHAOS_PAYMENTS_DATABASE_URL",
            "CHAOS_NOTIFICATIONS_DATABASE_URL",
        ] {
            command.env_remove(name);
        }
        command.envs(env);
        match spec.kind {
            Kind::OrderApi => {
                let grpc = spec
                    .grpc
                    .context("an order-api instance needs a gRPC address")?;
                command
                    .env("ORDER_API_ADDR", grpc.to_string())
                    .env("ORDER_API_HTTP_ADDR", spec.health.to_string());
            }
            Kind::Payment => {
                command.env("PAYMENT_HEALTH_ADDR", spec.health.to_string());
            }
            Kind::Notification => {
                command.env("NOTIFICATION_HEALTH_ADDR", spec.health.to_string());
            }
        }
        command.envs(spec.env.iter().cloned());
        instance.child = Some(spawn(&mut command, &log, false)?);
        Ok(())
    }

    /// Starts every instance.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self
            .instances
            .iter()
            .map(|instance| instance.spec.name.clone())
            .collect();
        names.iter().try_for_each(|name| self.start(name))
    }

    /// SIGKILLs the instance `name` (no clean shutdown) and reaps it.
    pub async fn kill(&mut self, name: &str) {
        let log = self.log_of(name);
        let instance = self.instance(name);
        let expected = instance.expected;
        if let Some(mut child) = instance.child.take() {
            // One that is already gone exited on its own before the fault reached it.
            if let (true, Ok(Some(status))) = (expected, child.try_wait()) {
                eprintln!("{name} exited on its own ({status}), see {}", log.display());
                self.unexpected_exits += 1;
                return;
            }
            stop(name, &mut child, Duration::ZERO).await;
        }
    }

    /// SIGKILLs the instance `name` and leaves it dead.
    pub async fn kill_for_good(&mut self, name: &str) {
        self.instance(name).expected = false;
        self.kill(name).await;
    }

    /// Waits until every instance answers `/readyz` (and an order API's gRPC
    /// port accepts connections), failing early when one exits, and after `limit`.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for index in 0..self.instances.len() {
            let log = self.log_of(&self.instances[index].spec.name);
            let instance = &mut self.instances[index];
            loop {
                if http_ready(instance.spec.health).await
                    && match instance.spec.grpc {
                        Some(grpc) => port_open(grpc).await,
                        None => true,
                    }
                {
                    break;
                }
                if let Some(Ok(Some(status))) = instance.child.as_mut().map(Child::try_wait) {
                    anyhow::bail!(
                        "{} exited while starting ({status}), see {}",
                        instance.spec.name,
                        log.display()
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} did not become ready within {} s, see {}",
                    instance.spec.name,
                    limit.as_secs(),
                    log.display()
                );
                sleep(Duration::from_millis(300)).await;
            }
        }
        Ok(())
    }

    /// Counts every expected instance that exited without being killed, and starts it again.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut exited = Vec::new();
        for instance in self
            .instances
            .iter_mut()
            .filter(|instance| instance.expected)
        {
            if let Some(Ok(Some(status))) = instance.child.as_mut().map(Child::try_wait) {
                exited.push((instance.spec.name.clone(), status));
            }
        }
        for (name, status) in exited {
            self.unexpected_exits += 1;
            eprintln!(
                "{name} exited on its own ({status}), see {}",
                self.log_of(&name).display()
            );
            self.start(&name)?;
        }
        Ok(())
    }

    /// Stops every running instance (SIGTERM, bounded wait, SIGKILL), all at once.
    pub async fn stop_all(&mut self) {
        let stops = self.instances.iter_mut().filter_map(|instance| {
            let name = instance.spec.name.clone();
            instance
                .child
                .take()
                .map(|mut child| async move { stop(&name, &mut child, SERVICE_GRACE).await })
        });
        let handles: Vec<_> = stops.map(tokio::spawn).collect();
        for handle in handles {
            let _ = handle.await;
        }
    }
}
