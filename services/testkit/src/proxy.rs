//! A TCP proxy a test can cut, black-hole and restore.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

/// Sockets kept open and never read or written again: black-holed connections.
type Graveyard = Arc<Mutex<Vec<TcpStream>>>;

/// A TCP proxy that a test can cut and restore, to simulate a dependency
/// (PostgreSQL, a broker) going away and coming back, or black-hole, to
/// simulate a partition that drops packets instead of resetting connections.
pub struct CuttableProxy {
    address: std::net::SocketAddr,
    enabled: Arc<AtomicBool>,
    blackholed: Arc<AtomicBool>,
    /// Bumped by [`CuttableProxy::blackhole`]: the open connections go silent.
    silence: tokio::sync::watch::Sender<u64>,
    graveyard: Graveyard,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding 127.0.0.1:<ephemeral> to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let enabled = Arc::new(AtomicBool::new(true));
        let blackholed = Arc::new(AtomicBool::new(false));
        let (silence, _) = tokio::sync::watch::channel(0_u64);
        let graveyard: Graveyard = Arc::default();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept_task = tokio::spawn({
            let (enabled, blackholed, silence, graveyard, connections) = (
                enabled.clone(),
                blackholed.clone(),
                silence.clone(),
                graveyard.clone(),
                connections.clone(),
            );
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !enabled.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    if blackholed.load(Ordering::SeqCst) {
                        // Accepted, then never answered: a connection attempt into a partition.
                        graveyard.lock().unwrap().push(inbound);
                        continue;
                    }
                    let mut silenced = silence.subscribe();
                    let graveyard = graveyard.clone();
                    let task = tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let went_silent = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                            _ = silenced.changed() => true,
                        };
                        if went_silent {
                            // Both ends stay open and nothing more passes: no
                            // reset, no close, just silence.
                            graveyard.lock().unwrap().extend([inbound, outbound]);
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        Self {
            address,
            enabled,
            blackholed,
            silence,
            graveyard,
            connections,
            accept_task,
        }
    }

    /// The address to connect to instead of the target.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
        self.graveyard.lock().unwrap().clear();
    }

    /// A partition that drops packets: every open connection goes silent for
    /// good (no reset, no close: what was sent is never answered), and new
    /// connections are accepted but never answered, until
    /// [`CuttableProxy::restore`]; the silenced connections stay silent after it.
    pub fn blackhole(&self) {
        self.blackholed.store(true, Ordering::SeqCst);
        self.silence.send_modify(|generation| *generation += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.blackholed.store(false, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}
