//! TLS on the gRPC API, with rustls: `ORDER_API_TLS_CERT` (a PEM file: the
//! server's certificate, then any intermediates) and `ORDER_API_TLS_KEY` (its
//! PEM private key) turn it on; both or neither. Plaintext stays the local
//! default, so that the README's grpcurl calls work as they are; the
//! production overlay turns TLS on. `build-support/run --tls` makes a local
//! CA and a certificate for 127.0.0.1 and localhost.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Where the server's certificate chain and key are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// `ORDER_API_TLS_CERT`.
    pub cert: PathBuf,
    /// `ORDER_API_TLS_KEY`.
    pub key: PathBuf,
    /// `ORDER_API_TLS_HANDSHAKE_TIMEOUT_MS` (default 10000): a connection
    /// whose TLS handshake is not done by then is closed, so that clients
    /// that connect and say nothing (or trickle bytes) cannot hold sockets
    /// and handshake tasks for good.
    pub handshake_timeout: Duration,
}

impl TlsFiles {
    /// The handshake deadline when none is set.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// These files with the default handshake deadline.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Reads `ORDER_API_TLS_CERT` and `ORDER_API_TLS_KEY`: None when neither
    /// is set; an error when only one is.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let read = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        match (read("ORDER_API_TLS_CERT"), read("ORDER_API_TLS_KEY")) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let timeout = match read("ORDER_API_TLS_HANDSHAKE_TIMEOUT_MS") {
                    None => Self::DEFAULT_HANDSHAKE_TIMEOUT,
                    Some(value) => value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|ms| (1..=600_000).contains(ms))
                        .map(Duration::from_millis)
                        .with_context(|| {
                            format!(
                                "ORDER_API_TLS_HANDSHAKE_TIMEOUT_MS must be 1 to 600000 (ms), not {value:?}"
                            )
                        })?,
                };
                Ok(Some(Self {
                    handshake_timeout: timeout,
                    ..Self::new(cert, key)
                }))
            }
            (Some(_), None) => {
                anyhow::bail!(
                    "ORDER_API_TLS_CERT is set but ORDER_API_TLS_KEY is not: TLS needs both"
                )
            }
            (None, Some(_)) => {
                anyhow::bail!(
                    "ORDER_API_TLS_KEY is set but ORDER_API_TLS_CERT is not: TLS needs both"
                )
            }
        }
    }

    /// The server's TLS settings, from the files as they are now. An
    /// unreadable file, or one that holds no certificate or no key, is an
    /// error naming the file: the service does not start rather than serve
    /// without the TLS it was asked for.
    pub fn server_config(&self) -> anyhow::Result<ServerTlsConfig> {
        let cert = std::fs::read(&self.cert)
            .with_context(|| format!("cannot read ORDER_API_TLS_CERT {}", self.cert.display()))?;
        let key = std::fs::read(&self.key)
            .with_context(|| format!("cannot read ORDER_API_TLS_KEY {}", self.key.display()))?;
        anyhow::ensure!(
            contains(&cert, b"-----BEGIN CERTIFICATE-----"),
            "ORDER_API_TLS_CERT {} holds no PEM certificate",
            self.cert.display()
        );
        anyhow::ensure!(
            contains(&key, b"PRIVATE KEY-----"),
            "ORDER_API_TLS_KEY {} holds no PEM private key",
            self.key.display()
        );
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(self.handshake_timeout))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A client's TLS settings that trust the CA certificate(s) in the PEM file
/// `ca` (for the health check and the tests).
pub fn client_config(ca: &std::path::Path) -> anyhow::Result<ClientTlsConfig> {
    let pem =
        std::fs::read(ca).with_context(|| format!("cannot read the CA file {}", ca.display()))?;
    anyhow::ensure!(
        contains(&pem, b"-----BEGIN CERTIFICATE-----"),
        "{} holds no PEM certificate",
        ca.display()
    );
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
}
