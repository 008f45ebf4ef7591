//! A minimal HTTP health endpoint for the Kafka consumers (the gRPC API uses
//! grpc.health.v1 instead): `GET /healthz` answers 200 while the service is
//! ready and 503 otherwise. Deliberately tiny: no HTTP framework for one route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared readiness flag.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `/healthz` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, readiness: Readiness, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "health endpoint accept failed");
                    continue;
                }
            },
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let mut buffer = [0_u8; 1024];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut buffer))
                    .await;
            let request = match read {
                Ok(Ok(length)) => String::from_utf8_lossy(&buffer[..length]).into_owned(),
                _ => return,
            };
            let (status, body) = if !request.starts_with("GET /healthz") {
                ("404 Not Found", "not found\n")
            } else if readiness.is_ready() {
                ("200 OK", "ready\n")
            } else {
                ("503 Service Unavailable", "not ready\n")
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Binds `address` for the health endpoint.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to bind the health endpoint on {address}"))
}
