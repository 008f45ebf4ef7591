//! The network of a cluster run: a Linux bridge on the host with one address
//! the brokers bind to, and one network namespace per partitionable service
//! instance, joined to the bridge by a veth pair. A fault then acts on one
//! instance's packets only:
//!
//! - a **partition** drops the packets the instance sends to the brokers (or
//!   to PostgreSQL) in transit: an nftables rule on the ingress hook of the
//!   host's end of its veth (the `netdev` family), so they left the instance's
//!   stack normally and are never seen again. Nobody answers with a reset: the
//!   instance sees what a real partition looks like — requests and
//!   acknowledgements lost, connections that hang until a timeout says
//!   otherwise. Its own HTTP endpoint stays reachable, so that its readiness
//!   can be watched during the fault.
//! - **latency** delays what the instance exchanges with PostgreSQL by
//!   200 ms ± 50 ms in each direction. This kernel has neither `sch_netem` nor
//!   `nfqueue`, so the delay is made in user space, by the forwarder below,
//!   which holds every chunk from or to that instance for a drawn delay before
//!   passing it on (a delay line: order kept, chunks still pipelined).
//!
//! PostgreSQL listens on 127.0.0.1, which a namespace cannot reach: the
//! forwarder on the bridge address carries those connections (it closes a
//! connection when either side closes it, and adds no fault unless asked).
//!
//! Everything here needs root and Debian's iproute2 and nftables; the bridge,
//! the namespaces and the rules are named after the run's seed and removed at
//! the end (and first, should an earlier run have left them behind).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The delay of the latency fault: 200 ms ± 50 ms, per chunk and direction.
const DELAY: Duration = Duration::from_millis(200);
const JITTER_MS: u64 = 50;

/// The bridge, the namespaces and the PostgreSQL forwarder of one run.
pub struct Network {
    bridge: String,
    /// The host's address on the bridge: the brokers and the forwarder bind to it.
    pub host: Ipv4Addr,
    namespaces: Vec<Namespace>,
    forwarder: Option<JoinHandle<()>>,
    /// Sources whose PostgreSQL traffic the forwarder delays.
    delayed: Arc<Mutex<HashSet<IpAddr>>>,
}

/// One namespace: its name, its end of the veth pair and its address.
struct Namespace {
    name: String,
    device: String,
    address: Ipv4Addr,
    host_end: String,
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_input(program, args, None).await
}

async fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().with_context(|| {
        format!("cannot run {program} (Debian: apt-get install iproute2 nftables)")
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    anyhow::ensure!(
        output.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl Network {
    /// Creates the bridge `fochaos<n>` with 10.231.<n>.1/24, n = 20 + tag % 200, and one
    /// namespace per name in `instances`, each with the next address from .11.
    pub async fn create(tag: u64, instances: &[&str]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            nix::unistd::Uid::effective().is_root(),
            "the cluster faults need root: network namespaces, veth pairs and nftables (run build-support/chaos --cluster as root)"
        );
        // The bridge's name and its subnet follow from the same number, so that
        // a leftover of an earlier run with that subnet is the one removed first.
        let subnet = u8::try_from(tag % 200).unwrap_or(0) + 20;
        let bridge = format!("fochaos{subnet}");
        let mut network = Self {
            bridge: bridge.clone(),
            host: Ipv4Addr::new(10, 231, subnet, 1),
            namespaces: Vec::new(),
            forwarder: None,
            delayed: Arc::default(),
        };
        for (index, instance) in instances.iter().enumerate() {
            let number = u8::try_from(index).context("too many namespaces")? + 11;
            network.namespaces.push(Namespace {
                name: format!("{bridge}-{instance}"),
                device: format!("{bridge}n{index}"),
                host_end: format!("{bridge}h{index}"),
                address: Ipv4Addr::new(10, 231, subnet, number),
            });
        }
        network.remove().await;
        if let Err(error) = network.build().await {
            network.remove().await;
            return Err(error.context("setting up the cluster run's network namespaces failed"));
        }
        Ok(network)
    }

    async fn build(&self) -> anyhow::Result<()> {
        let host_cidr = format!("{}/24", self.host);
        run("ip", &["link", "add", &self.bridge, "type", "bridge"]).await?;
        run("ip", &["addr", "add", &host_cidr, "dev", &self.bridge]).await?;
        run("ip", &["link", "set", &self.bridge, "up"]).await?;
        for namespace in &self.namespaces {
            let cidr = format!("{}/24", namespace.address);
            let (name, device, host_end) = (
                namespace.name.as_str(),
                namespace.device.as_str(),
                namespace.host_end.as_str(),
            );
            run("ip", &["netns", "add", name]).await?;
            run(
                "ip",
                &[
                    "link", "add", host_end, "type", "veth", "peer", "name", device,
                ],
            )
            .await?;
            run("ip", &["link", "set", host_end, "master", &self.bridge]).await?;
            run("ip", &["link", "set", host_end, "up"]).await?;
            run("ip", &["link", "set", device, "netns", name]).await?;
            run(
                "ip",
                &[
                    "netns", "exec", name, "ip", "addr", "add", &cidr, "dev", device,
                ],
            )
            .await?;
            run(
                "ip",
                &["netns", "exec", name, "ip", "link", "set", device, "up"],
            )
            .await?;
            run(
                "ip",
                &["netns", "exec", name, "ip", "link", "set", "lo", "up"],
            )
            .await?;
        }
        Ok(())
    }

    /// The address of the namespace of `instance`.
    pub fn address_of(&self, instance: &str) -> Option<Ipv4Addr> {
        self.find(instance).map(|namespace| namespace.address)
    }

    /// The namespace name of `instance` (for `ip netns exec`).
    pub fn namespace_of(&self, instance: &str) -> Option<String> {
        self.find(instance).map(|namespace| namespace.name.clone())
    }

    fn find(&self, instance: &str) -> Option<&Namespace> {
        let name = format!("{}-{instance}", self.bridge);
        self.namespaces
            .iter()
            .find(|namespace| namespace.name == name)
    }

    /// Carries connections to `bridge address:port` to 127.0.0.1:`port`, so
    /// that the namespaces reach PostgreSQL; returns the address to give them.
    pub async fn forward_postgres(&mut self, port: u16) -> anyhow::Result<SocketAddr> {
        let listen = SocketAddr::from((self.host, port));
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for the PostgreSQL forwarder"))?;
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let delayed = self.delayed.clone();
        self.forwarder = Some(tokio::spawn(async move {
            while let Ok((inbound, peer)) = listener.accept().await {
                let delayed = delayed.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        forward(inbound, outbound, peer.ip(), delayed).await;
                    }
                });
            }
        }));
        Ok(listen)
    }

    /// Drops, in transit, every packet `instance` sends to the host address
    /// on any of `ports`, until [`Network::heal`].
    pub async fn partition(&self, instance: &str, ports: &[u16]) -> anyhow::Result<()> {
        let namespace = self
            .find(instance)
            .with_context(|| format!("{instance} runs in no namespace of its own"))?;
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let rules = format!(
            "table netdev {table} {{\n  chain ingress {{\n    type filter hook ingress device \"{device}\" priority 0;\n    ip daddr {host} tcp dport {{ {ports} }} drop\n  }}\n}}\n",
            table = self.table(instance),
            device = namespace.host_end,
            host = self.host,
            ports = ports.join(", "),
        );
        run_with_input("nft", &["-f", "-"], Some(&rules)).await
    }

    /// Delays what `instance` exchanges with PostgreSQL (through the
    /// forwarder) by 200 ms ± 50 ms per chunk and direction, until [`Network::heal`].
    pub fn delay_postgres(&self, instance: &str) -> anyhow::Result<()> {
        let address = self
            .address_of(instance)
            .with_context(|| format!("{instance} runs in no namespace of its own"))?;
        self.delayed.lock().unwrap().insert(IpAddr::V4(address));
        Ok(())
    }

    /// Ends any partition or delay of `instance`.
    pub async fn heal(&self, instance: &str) -> anyhow::Result<()> {
        if let Some(address) = self.address_of(instance) {
            self.delayed.lock().unwrap().remove(&IpAddr::V4(address));
        }
        let table = self.table(instance);
        // No table: the fault was a delay, or it is already healed.
        let _ = run("nft", &["delete", "table", "netdev", &table]).await;
        Ok(())
    }

    fn table(&self, instance: &str) -> String {
        format!("{}_{}", self.bridge, instance.replace('-', "_"))
    }

    /// Removes the rules, the namespaces, the veth pairs and the bridge (what exists of them).
    pub async fn remove(&self) {
        for namespace in &self.namespaces {
            let instance = namespace
                .name
                .trim_start_matches(&format!("{}-", self.bridge))
                .to_owned();
            let _ = run(
                "nft",
                &["delete", "table", "netdev", &self.table(&instance)],
            )
            .await;
            let _ = run("ip", &["netns", "del", &namespace.name]).await;
            let _ = run("ip", &["link", "del", &namespace.host_end]).await;
        }
        let _ = run("ip", &["link", "del", &self.bridge]).await;
    }

    /// Stops the forwarder and removes everything [`Network::create`] made.
    pub async fn teardown(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        self.remove().await;
    }
}

/// Forwards both directions of one connection until either side closes,
/// delaying each chunk while `peer` is in `delayed`.
async fn forward(
    inbound: TcpStream,
    outbound: TcpStream,
    peer: IpAddr,
    delayed: Arc<Mutex<HashSet<IpAddr>>>,
) {
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let is_delayed = move || delayed.lock().unwrap().contains(&peer);
    tokio::select! {
        () = delay_line(inbound_read, outbound_write, is_delayed.clone()) => {}
        () = delay_line(outbound_read, inbound_write, is_delayed) => {}
    }
}

/// Copies `reader` to `writer`; while `is_delayed()` each chunk is written
/// a drawn delay after it was read, in order.
async fn delay_line(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    is_delayed: impl Fn() -> bool + Send + 'static,
) {
    let (sender, mut receiver) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let writing = async move {
        while let Some((due, chunk)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reading = async move {
        let mut buffer = vec![0; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            let read = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let now = Instant::now();
            let due = if is_delayed() {
                let jitter = rand::rng().random_range(0..=2 * JITTER_MS);
                let delay =
                    DELAY + Duration::from_millis(jitter) - Duration::from_millis(JITTER_MS);
                (now + delay).max(last_due)
            } else {
                now.max(last_due)
            };
            last_due = due;
            if sender.send((due, buffer[..read].to_vec())).await.is_err() {
                return;
            }
        }
    };
    // Reading ends at EOF: the writer still delivers what is in the line.
    let (_, ()) = tokio::join!(reading, writing);
}
