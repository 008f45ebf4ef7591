//! A TCP proxy a test can cut, blackhole, abandon and restore.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A TCP proxy that a test can cut, blackhole and restore, to simulate a
/// dependency (PostgreSQL, say) going away and coming back:
///
/// * [`CuttableProxy::cut`]: the connections are reset and new ones refused,
///   as when the server is stopped;
/// * [`CuttableProxy::blackhole`]: a network partition that drops packets —
///   open connections stay open and carry nothing, new ones are accepted and
///   carry nothing, no error is ever seen; what was sent meanwhile is
///   delivered once the partition heals, as TCP retransmits it;
/// * [`CuttableProxy::abandon`]: the open connections never carry another
///   byte, even after a restore, and are never closed either — their peer
///   vanished without a word (a failover to another address, a lost NAT
///   entry), so only the client's own deadlines can tell;
/// * [`CuttableProxy::restore`]: forwards again.
pub struct CuttableProxy {
    address: SocketAddr,
    enabled: Arc<AtomicBool>,
    forwarding: watch::Sender<bool>,
    /// Bumped by [`CuttableProxy::abandon`]: connections opened before are silent for good.
    generation: watch::Sender<u64>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding 127.0.0.1:<ephemeral> to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let enabled = Arc::new(AtomicBool::new(true));
        let forwarding = watch::channel(true).0;
        let generation = watch::channel(0_u64).0;
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (accept_enabled, accept_connections, accept_forwarding, accept_generation) = (
            enabled.clone(),
            connections.clone(),
            forwarding.clone(),
            generation.clone(),
        );
        let accept_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accept_enabled.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let forwarding = Carrying {
                    forwarding: accept_forwarding.subscribe(),
                    generation: accept_generation.subscribe(),
                    born: *accept_generation.borrow(),
                };
                let task = tokio::spawn(relay(inbound, target, forwarding));
                accept_connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            address,
            enabled,
            forwarding,
            generation,
            connections,
            accept_task,
        }
    }

    /// The address to connect to instead of the target.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Stops carrying bytes, in both directions, on every connection, open or
    /// new, without closing any: a partition that drops packets.
    pub fn blackhole(&self) {
        self.forwarding.send_replace(false);
    }

    /// Every connection open now carries nothing more, ever, and stays open:
    /// its peer vanished silently. New connections are not affected.
    pub fn abandon(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Forwards again (after [`CuttableProxy::cut`] or [`CuttableProxy::blackhole`]).
    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
        self.forwarding.send_replace(true);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}

/// Whether a connection may carry bytes now: the proxy forwards, and the
/// connection was not abandoned.
#[derive(Clone)]
struct Carrying {
    forwarding: watch::Receiver<bool>,
    generation: watch::Receiver<u64>,
    born: u64,
}

impl Carrying {
    /// Waits until the connection may carry bytes; false once the proxy is
    /// gone. An abandoned connection waits for good, its sockets open.
    async fn wait_for(&mut self) -> bool {
        if self.forwarding.wait_for(|on| *on).await.is_err() {
            return false;
        }
        if *self.generation.borrow() != self.born {
            std::future::pending::<()>().await;
        }
        true
    }
}

/// One connection: to `target` once forwarding, then both directions.
async fn relay(inbound: TcpStream, target: SocketAddr, mut forwarding: Carrying) {
    if !forwarding.wait_for().await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let _ = tokio::join!(
        pump(inbound_read, outbound_write, forwarding.clone()),
        pump(outbound_read, inbound_write, forwarding),
    );
}

/// Copies `from` to `to` while forwarding; while not, reads nothing more and
/// holds what was read (TCP's own buffers fill, as with dropped packets).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut forwarding: Carrying,
) -> std::io::Result<()> {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        if !forwarding.wait_for().await {
            return Ok(());
        }
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        if !forwarding.wait_for().await {
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
    }
}
