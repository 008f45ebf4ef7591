//! What the tests of every crate share, and no service binary links (it is a
//! dev-dependency only, and a dependency of the build-support tools): a
//! database of each test's own, the test broker and private brokers, records
//! read back from topics, raw produce for hostile records, a proxy to cut or
//! blackhole, a private Jaeger, metric scrapes, bounded waits with clear
//! failure messages, and the fuzz bodies with their fixtures.

pub mod broker;
pub mod database;
pub mod fuzzing;
pub mod jaeger;
pub mod kafka;
pub mod metrics;
pub mod process;
pub mod produce;
pub mod proxy;
pub mod roles;

use std::future::Future;
use std::time::Duration;

pub use broker::PrivateBroker;
pub use database::{TestDatabase, database, database_url, empty_database, proxied_pool};
pub use jaeger::PrivateJaeger;
pub use kafka::*;
pub use metrics::{http_get, metric_value, wait_for_metric};
pub use process::ServiceProcess;
pub use produce::{produce_raw, try_produce_raw_as};
pub use proxy::CuttableProxy;

/// Polls `condition` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An unused TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The repository's root, for the scripts under `build-support/`.
pub fn repository_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}
