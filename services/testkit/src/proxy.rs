//! A TCP proxy a test can cut, blackhole and restore.

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
/// * [`CuttableProxy::restore`]: forwards again.
pub struct CuttableProxy {
    address: SocketAddr,
    enabled: Arc<AtomicBool>,
    forwarding: watch::Sender<bool>,
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
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (accept_enabled, accept_connections, accept_forwarding) =
            (enabled.clone(), connections.clone(), forwarding.clone());
        let accept_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accept_enabled.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let forwarding = accept_forwarding.subscribe();
                let task = tokio::spawn(relay(inbound, target, forwarding));
                accept_connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            address,
            enabled,
            forwarding,
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

/// One connection: to `target` once forwarding, then both directions.
async fn relay(inbound: TcpStream, target: SocketAddr, mut forwarding: watch::Receiver<bool>) {
    if forwarding.wait_for(|on| *on).await.is_err() {
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
    mut forwarding: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        if forwarding.wait_for(|on| *on).await.is_err() {
            return Ok(());
        }
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        if forwarding.wait_for(|on| *on).await.is_err() {
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
    }
}
