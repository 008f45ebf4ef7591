//! A minimal HTTP health endpoint for the Kafka consumers (the gRPC API uses
//! grpc.health.v1 instead): `GET /healthz` (liveness) answers 200 while the
//! process serves; `GET /readyz` answers 200 once the consumer is subscribed
//! and holds its assignment, 503 otherwise (before that, during a rebalance,
//! at shutdown). Deliberately tiny: no HTTP framework for two routes.

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
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let (status, body) = match (request.starts_with("GET "), path) {
                (true, "/healthz") => ("200 OK", "alive\n"),
                (true, "/readyz") if readiness.is_ready() => ("200 OK", "ready\n"),
                (true, "/readyz") => ("503 Service Unavailable", "not ready\n"),
                _ => ("404 Not Found", "not found\n"),
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
