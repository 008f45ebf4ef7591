//! Test support (feature `test-support`): unique topic prefixes, reading every
//! record of a topic, private tansu brokers, and bounded waits with clear
//! failure messages.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::config::KafkaConfig;

/// A topic prefix unique to this test run, e.g. `t3f2a…-`.
pub fn unique_prefix() -> String {
    format!("t{}-", &Uuid::new_v4().simple().to_string()[..12])
}

/// The broker the test suite runs against (`KAFKA_BOOTSTRAP_SERVERS`, default 127.0.0.1:9092).
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Kafka settings for the shared test broker with fresh topic names.
pub fn kafka_config() -> KafkaConfig {
    KafkaConfig::local(&bootstrap_servers(), &unique_prefix())
}

/// One record read back from a topic.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Key as UTF-8.
    pub key: String,
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers as name → value.
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` (all `partitions`, from the beginning) until `expected`
/// records arrived, then keeps reading for `grace` to catch extra records.
/// Panics with a clear message if fewer than `expected` arrive within `timeout`.
pub fn collect_records(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
    grace: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .set("log_level", "3")
        .create()
        .expect("failed to create the test consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("valid partition");
    }
    consumer
        .assign(&assignment)
        .expect("failed to assign partitions");
    let started = std::time::Instant::now();
    let mut records = Vec::new();
    let mut complete_since: Option<std::time::Instant> = None;
    loop {
        if let Some(since) = complete_since {
            if since.elapsed() >= grace {
                return records;
            }
        } else if started.elapsed() >= timeout {
            panic!(
                "expected {expected} records on {topic} within {timeout:?}, got {}: {:?}",
                records.len(),
                records
                    .iter()
                    .map(|record: &Record| &record.key)
                    .collect::<Vec<_>>()
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message
                        .key()
                        .map(|key| String::from_utf8_lossy(key).into_owned())
                        .unwrap_or_default(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers: crate::kafka::from_kafka_headers(message.headers()),
                });
                if records.len() >= expected && complete_since.is_none() {
                    complete_since = Some(std::time::Instant::now());
                }
            }
            Some(Err(_)) | None => {
                if records.len() >= expected && complete_since.is_none() {
                    complete_since = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// [`collect_records`] on a blocking thread, for async tests.
pub async fn collect_records_async(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
    grace: Duration,
) -> Vec<Record> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        collect_records(&bootstrap, &topic, partitions, expected, timeout, grace)
    })
    .await
    .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

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

/// A private tansu broker (in-memory storage) for tests that stop and start a broker.
/// Killed when dropped.
pub struct PrivateBroker {
    child: Child,
    port: u16,
}

impl PrivateBroker {
    /// The tansu binary: `TANSU_BIN`, as exported by `build-support/test`.
    pub fn binary() -> String {
        std::env::var("TANSU_BIN").expect(
            "TANSU_BIN is not set: run the suite with build-support/test, which installs tansu and exports it",
        )
    }

    /// Starts a broker on 127.0.0.1:`port` and waits until it accepts connections.
    pub async fn start(port: u16) -> Self {
        let child = Command::new(Self::binary())
            .args(["broker", "--silent", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .current_dir(std::env::temp_dir())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start tansu");
        let broker = Self { child, port };
        wait_for(
            "the private broker to accept connections",
            Duration::from_secs(30),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        broker
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy that a test can cut and restore, to simulate a dependency
/// (PostgreSQL, a broker) going away and coming back.
pub struct CuttableProxy {
    address: std::net::SocketAddr,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding 127.0.0.1:<ephemeral> to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (accept_enabled, accept_connections) = (enabled.clone(), connections.clone());
        let accept_task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_enabled.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            address,
            enabled,
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
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}
