//! A private Jaeger whose query API a test reads traces from.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, repository_root, wait_for};

/// A private Jaeger (in-memory storage) for tests that read traces back through
/// Jaeger's own HTTP query API. It runs `JAEGER_BIN` (exported by
/// `build-support/test`) with `build-support/jaeger/config.yaml`, the same
/// configuration as `build-support/run`, on ephemeral ports. Killed when dropped.
pub struct PrivateJaeger {
    child: Child,
    otlp_port: u16,
    query_port: u16,
}

impl PrivateJaeger {
    /// The Jaeger binary, or `None` (with the reason) when it is not installed.
    pub fn binary() -> Result<String, String> {
        std::env::var("JAEGER_BIN").map_err(|_| {
            "JAEGER_BIN is not set: build-support/test installs Jaeger and exports it".to_owned()
        })
    }

    /// Starts Jaeger and waits until its query API answers.
    pub async fn start(binary: &str) -> Self {
        let (otlp_port, query_port) = (free_port(), free_port());
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("foodorder-jaeger-{query_port}.log")),
        )
        .expect("create Jaeger's log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(repository_root().join("build-support/jaeger/config.yaml"))
            .env("JAEGER_OTLP_PORT", otlp_port.to_string())
            .env("JAEGER_OTLP_HTTP_PORT", free_port().to_string())
            .env("JAEGER_QUERY_PORT", query_port.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", free_port().to_string())
            .env("JAEGER_HEALTH_PORT", free_port().to_string())
            .stdout(Stdio::from(log.try_clone().expect("clone a file handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("failed to start Jaeger");
        let jaeger = Self {
            child,
            otlp_port,
            query_port,
        };
        wait_for(
            "Jaeger's query API to answer",
            Duration::from_secs(60),
            || async { jaeger.get("/api/services").await.map(|_| ()) },
        )
        .await;
        jaeger
    }

    /// The OTLP/gRPC endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_port)
    }

    /// GETs `path` from the query API; the JSON body of a 200 answer.
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.query_port))
            .await
            .ok()?;
        // HTTP/1.0: the answer is the body up to the end of the stream, never chunked.
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }
}

impl Drop for PrivateJaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
