//! The run's own Apache Kafka: one broker, or in a cluster run three KRaft
//! nodes (combined broker and controller, three voters), each started through
//! `build-support/kafka/broker` (the one broker path of the repository) with
//! its durable data in the run's log directory. Ready means a node answers a
//! metadata request through rdkafka. Like lib.sh's `boot_kafka`, a single
//! broker that exits while starting (most often because another socket took
//! one of its ports meanwhile) has the tail of its logs printed and is started
//! again, up to three tries: on a new port for the first start, on the same
//! port (which the services already know) after a pause for a restart. The
//! nodes of a cluster start together (none answers before a quorum exists) on
//! ports chosen up front.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::supervise::{fixed_port, port_open, spawn, stop, tail};

/// How long a starting broker may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(90);

/// How long a stopped broker gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// What makes a node one of a cluster.
#[derive(Clone)]
struct Membership {
    node_id: u32,
    /// `1@127.0.0.1:port,2@…`, the controllers' addresses.
    quorum: String,
    cluster_id: String,
}

/// One KRaft node the run starts, kills and restarts.
pub struct Broker {
    script: PathBuf,
    libs: PathBuf,
    data: PathBuf,
    host: IpAddr,
    port: u16,
    controller_port: u16,
    membership: Option<Membership>,
    /// With SASL: the credentials directory (`build-support/kafka/broker --sasl`).
    sasl: Option<PathBuf>,
    child: Option<Child>,
}

/// The run's brokers: one, or a three-node cluster. A killed node may be
/// restarted in the background ([`Brokers::restart_later`]); until it is
/// back ([`Brokers::settle`]) its slot is empty and no other node is killed.
pub struct Brokers {
    nodes: Vec<Option<Broker>>,
    /// Every node's client address (fixed once booted).
    addresses: Vec<SocketAddr>,
    /// Every node's KRaft id (0 for a single broker).
    ids: Vec<u32>,
    restarting: Option<(usize, tokio::task::JoinHandle<anyhow::Result<Broker>>)>,
}

impl Brokers {
    /// A single broker on 127.0.0.1 run by `script` from the jars in `libs`,
    /// keeping its data in `data`, taking SASL/SCRAM only with the
    /// credentials in `sasl` when given; not started.
    pub fn single(script: PathBuf, libs: PathBuf, data: PathBuf, sasl: Option<PathBuf>) -> Self {
        Self::of(vec![Broker {
            script,
            libs,
            data,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            controller_port: 0,
            membership: None,
            sasl,
            child: None,
        }])
    }

    /// Three nodes whose client listeners bind to `host` (the controllers
    /// stay on 127.0.0.1), data in `data/kafka-<id>`, SASL as for [`Brokers::single`]; not started.
    pub fn cluster(
        script: PathBuf,
        libs: PathBuf,
        data: &Path,
        host: IpAddr,
        sasl: Option<PathBuf>,
    ) -> Self {
        let controller_ports: Vec<u16> = (0..3).map(|_| fixed_port()).collect();
        let quorum = controller_ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}@127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = new_cluster_id();
        let nodes = controller_ports
            .iter()
            .enumerate()
            .map(|(index, controller_port)| Broker {
                script: script.clone(),
                libs: libs.clone(),
                data: data.join(format!("kafka-{}", index + 1)),
                host,
                port: fixed_port(),
                controller_port: *controller_port,
                membership: Some(Membership {
                    node_id: u32::try_from(index).unwrap_or(0) + 1,
                    quorum: quorum.clone(),
                    cluster_id: cluster_id.clone(),
                }),
                sasl: sasl.clone(),
                child: None,
            })
            .collect();
        Self::of(nodes)
    }

    fn of(nodes: Vec<Broker>) -> Self {
        Self {
            addresses: nodes.iter().map(Broker::address).collect(),
            ids: nodes
                .iter()
                .map(|node| node.membership.as_ref().map_or(0, |m| m.node_id))
                .collect(),
            nodes: nodes.into_iter().map(Some).collect(),
            restarting: None,
        }
    }

    /// The bootstrap list for the clients: every node's client listener.
    pub fn bootstrap(&self) -> String {
        self.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client port.
    pub fn ports(&self) -> Vec<u16> {
        self.addresses.iter().map(SocketAddr::port).collect()
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// The node with KRaft id `node_id` (1-based), as an index.
    pub fn index_of(&self, node_id: u32) -> Option<usize> {
        self.ids.iter().position(|id| *id == node_id)
    }

    fn node(&mut self, index: usize) -> anyhow::Result<&mut Broker> {
        self.nodes[index]
            .as_mut()
            .with_context(|| format!("kafka node {} is being restarted", index + 1))
    }

    /// The first start: a single broker on a free port (another one if that
    /// is taken meanwhile); a cluster's nodes all at once, then each waited for.
    pub async fn boot(&mut self) -> anyhow::Result<()> {
        if self.nodes.len() == 1 {
            let node = self.node(0)?;
            // Below the ephemeral range, where the instances' addresses (taken
            // from it before they bind) cannot be handed out again.
            node.port = fixed_port();
            node.launch(false).await?;
            self.addresses = vec![node.address()];
            return Ok(());
        }
        for node in self.nodes.iter_mut().flatten() {
            node.child = Some(node.spawn_node()?);
        }
        for node in self.nodes.iter_mut().flatten() {
            // The nodes of a cluster share their quorum and cluster id: one
            // that exits while starting fails the boot (its logs were
            // printed), instead of the run going on without it.
            anyhow::ensure!(
                node.wait_ready(1).await?,
                "{} exited while starting, see {}",
                node.name(),
                node.data.join("logs").display()
            );
        }
        Ok(())
    }

    /// Waits for the node being restarted in the background, if any, and
    /// takes it back; fails when it did not come back.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        if let Some((index, restart)) = self.restarting.take() {
            let node = restart.await.context("a broker restart panicked")??;
            self.nodes[index] = Some(node);
        }
        Ok(())
    }

    /// SIGKILLs node `index` (no clean shutdown) and reaps it, once the node
    /// restarted before it is back (one node down at a time).
    pub async fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.settle().await?;
        self.node(index)?.kill().await;
        Ok(())
    }

    /// Starts node `index` again after `pause`, in the background, on the
    /// ports the others know and with the same data; `done` is called with
    /// nothing once it answers.
    pub fn restart_later(
        &mut self,
        index: usize,
        pause: Duration,
        done: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut node = self.nodes[index]
            .take()
            .with_context(|| format!("kafka node {} is already being restarted", index + 1))?;
        self.restarting = Some((
            index,
            tokio::spawn(async move {
                sleep(pause).await;
                node.kill().await;
                node.launch(true).await?;
                done();
                Ok(node)
            }),
        ));
        Ok(())
    }

    /// Stops every node, all at once (one by one, the last ones would wait
    /// for a quorum that is gone): SIGTERM, bounded wait, SIGKILL. A node
    /// still being restarted is given up (its process dies with its handle).
    pub async fn stop(&mut self) {
        if let Some((_, restart)) = self.restarting.take() {
            restart.abort();
        }
        let stops: Vec<_> = self
            .nodes
            .iter_mut()
            .flatten()
            .filter_map(|node| {
                let name = node.name();
                node.child.take().map(|mut child| {
                    tokio::spawn(async move { stop(&name, &mut child, GRACE).await })
                })
            })
            .collect();
        for stopping in stops {
            let _ = stopping.await;
        }
    }
}

impl Broker {
    fn address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    fn name(&self) -> String {
        match &self.membership {
            Some(membership) => format!("kafka node {} ({})", membership.node_id, self.address()),
            None => format!("the kafka broker ({})", self.address()),
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&self.name(), &mut child, Duration::ZERO).await;
        }
    }

    fn spawn_node(&self) -> anyhow::Result<Child> {
        std::fs::create_dir_all(&self.data)
            .with_context(|| format!("failed to create {}", self.data.display()))?;
        let mut command = Command::new(&self.script);
        command
            .arg("--libs")
            .arg(&self.libs)
            .arg("--data")
            .arg(&self.data)
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()]);
        if let Some(membership) = &self.membership {
            command
                .args(["--node-id", &membership.node_id.to_string()])
                .args(["--quorum", &membership.quorum])
                .args(["--cluster-id", &membership.cluster_id])
                .args(["--host", &self.host.to_string()]);
        }
        if let Some(sasl) = &self.sasl {
            command.arg("--sasl").arg(sasl);
        }
        spawn(&mut command, &self.data.join("broker.out"), true)
    }

    /// Waits until the running node answers; `Ok(false)` when it exited
    /// while starting (its logs' tail printed), an error after [`READY_WITHIN`].
    async fn wait_ready(&mut self, attempt: u32) -> anyhow::Result<bool> {
        let server_log = self.data.join("logs/server.log");
        let output = self.data.join("broker.out");
        let deadline = Instant::now() + READY_WITHIN;
        let (name, address) = (self.name(), self.address().to_string());
        let in_cluster = self.membership.is_some();
        let child = self.child.as_mut().context("the broker is not running")?;
        loop {
            if answers(address.clone()).await {
                return Ok(true);
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "warning: {name} exited while starting ({status}, try {attempt} of 3); the end of its logs:\n{}\n{}",
                    tail(&output, 20),
                    tail(&server_log, 20)
                );
                self.child = None;
                return Ok(false);
            }
            if Instant::now() >= deadline {
                stop(&name, child, GRACE).await;
                self.child = None;
                anyhow::bail!(
                    "{name} did not answer within {} s{}, see {}",
                    READY_WITHIN.as_secs(),
                    if in_cluster {
                        " (a node answers once the quorum has a leader: are the other nodes up?)"
                    } else {
                        ""
                    },
                    server_log.display()
                );
            }
            sleep(Duration::from_millis(300)).await;
        }
    }

    async fn launch(&mut self, same_port: bool) -> anyhow::Result<()> {
        for attempt in 1..=3 {
            if self.membership.is_none() {
                self.controller_port = match self.port.checked_add(1) {
                    Some(next) if !port_open(SocketAddr::from(([127, 0, 0, 1], next))).await => {
                        next
                    }
                    _ => fixed_port(),
                };
            }
            self.child = Some(self.spawn_node()?);
            if self.wait_ready(attempt).await? {
                return Ok(());
            }
            if same_port || self.membership.is_some() {
                sleep(Duration::from_secs(3)).await;
            } else {
                self.port = fixed_port();
            }
        }
        anyhow::bail!(
            "{} would not start, see {}",
            self.name(),
            self.data.join("logs/server.log").display()
        )
    }
}

/// A new random cluster id that Kafka's tools accept: like Kafka's own
/// `Uuid.randomUuid()`, never one that starts with `-`, which the storage
/// tool's argument parser takes for an option (1 run in 64 failed to format).
fn new_cluster_id() -> String {
    loop {
        let id = kafka_cluster_id(uuid::Uuid::new_v4());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// A Kafka cluster id: the 16 bytes of a UUID in URL-safe base64 without padding.
fn kafka_cluster_id(uuid: uuid::Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid.as_bytes();
    let mut text = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let value = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for index in 0..=chunk.len() {
            text.push(char::from(
                ALPHABET[((value >> (18 - 6 * index)) & 63) as usize],
            ));
        }
    }
    text
}

/// Whether a broker at `bootstrap` answers a metadata request within two seconds.
async fn answers(bootstrap: String) -> bool {
    tokio::task::spawn_blocking(move || {
        foodorder_testkit::broker::broker_answers(&bootstrap, Duration::from_secs(2))
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::{kafka_cluster_id, new_cluster_id};

    #[test]
    fn a_cluster_id_is_22_url_safe_base64_characters() {
        let id = kafka_cluster_id(uuid::Uuid::from_bytes([0xff; 16]));
        assert_eq!(id, "_____________________w");
        let id = kafka_cluster_id(uuid::Uuid::nil());
        assert_eq!(id, "AAAAAAAAAAAAAAAAAAAAAA");
        // 0xf8 makes the first six bits 62: '-'.
        let mut bytes = [0u8; 16];
        bytes[0] = 0xf8;
        assert!(kafka_cluster_id(uuid::Uuid::from_bytes(bytes)).starts_with('-'));
    }

    #[test]
    fn a_new_cluster_id_never_starts_with_a_dash() {
        for _ in 0..2000 {
            let id = new_cluster_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}
