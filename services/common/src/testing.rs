//! Test support (feature `test-support`): unique topic prefixes, reading every
//! record of a topic, private Apache Kafka brokers, and bounded waits with
//! clear failure messages.

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
    /// Headers whose name and value are UTF-8, as name → value.
    pub headers: BTreeMap<String, String>,
    /// Every header, byte-exact.
    pub raw_headers: Vec<crate::record_headers::RawHeader>,
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
                    headers: crate::record_headers::utf8_map(&crate::record_headers::read(
                        &message,
                    )),
                    raw_headers: crate::record_headers::read(&message),
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

/// The repository's root, for the scripts under `build-support/`.
pub fn repository_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Whether `build-support/test` runs the suite, in which case every external
/// tool it installs must be there (a test never skips itself in CI).
pub fn full_suite() -> bool {
    std::env::var_os("FOODORDER_FULL_SUITE").is_some()
}

/// The PostgreSQL server the tests use: `DATABASE_URL` (any database on it;
/// each test gets its own), default `postgres://postgres@127.0.0.1:5432/foodorder`.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/foodorder".to_owned())
}

/// Whether something accepts TCP connections at `host:port` within a second.
fn answers(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address.to_socket_addrs().is_ok_and(|mut addresses| {
        addresses.any(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        })
    })
}

/// Says on the real stderr (not the captured test output, so it shows in a
/// plain `cargo test`) that the running test is skipped, and why.
fn skip_notice(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {}: {why}",
        std::thread::current().name().unwrap_or("this test")
    );
}

/// A database of one test's own, dropped when the test passes (kept for a
/// failed test, to look at).
pub struct TestDatabase {
    name: String,
    server: sqlx::postgres::PgConnectOptions,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the test database {} is kept for the failed test",
                self.name
            );
            return;
        }
        let (name, server) = (self.name.clone(), self.server.clone());
        // Drop cannot await: a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                use sqlx::{ConnectOptions, Executor};
                if let Ok(mut connection) = server.connect().await {
                    let _ = connection
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// A fresh, migrated database for one test, and its guard (keep it alive to
/// the end of the test). `None`, with a message saying why, when PostgreSQL
/// or the broker does not answer: `cargo test` alone then skips what needs
/// them. Under `build-support/test` (`FOODORDER_FULL_SUITE`) it panics instead.
pub async fn database() -> Option<(sqlx::PgPool, TestDatabase)> {
    let (pool, database) = empty_database().await?;
    for schema in crate::db::ALL_SCHEMAS {
        schema
            .migrate(&pool.connect_options())
            .await
            .unwrap_or_else(|error| {
                panic!("migrate the test database {}: {error:#}", database.name)
            });
    }
    Some((pool, database))
}

/// Like [`database`], without the migrations: for tests of the migrations.
pub async fn empty_database() -> Option<(sqlx::PgPool, TestDatabase)> {
    use sqlx::{ConnectOptions, Executor};
    let url = database_url();
    let server: sqlx::postgres::PgConnectOptions = match url.parse() {
        Ok(options) => options,
        Err(error) => panic!("DATABASE_URL is not a PostgreSQL URL: {error}"),
    };
    let server = server.database("postgres");
    let database_address = format!("{}:{}", server.get_host(), server.get_port());
    let broker = bootstrap_servers();
    let broker_address = broker.split(',').next().unwrap_or_default().to_owned();
    let database_up = matches!(
        tokio::time::timeout(Duration::from_secs(2), server.connect()).await,
        Ok(Ok(_))
    );
    let broker_up = tokio::task::spawn_blocking({
        let broker_address = broker_address.clone();
        move || answers(&broker_address)
    })
    .await
    .unwrap_or(false);
    if !(database_up && broker_up) {
        let missing = match (database_up, broker_up) {
            (false, false) => format!(
                "PostgreSQL ({database_address}) and Kafka ({broker_address}) do not answer"
            ),
            (false, true) => format!("PostgreSQL ({database_address}) does not answer"),
            _ => format!("Kafka ({broker_address}) does not answer"),
        };
        assert!(
            !full_suite(),
            "{missing}: build-support/test provisions both before running the suite"
        );
        skip_notice(&format!(
            "{missing} (set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS, or run build-support/test)"
        ));
        return None;
    }
    let name = format!("foodorder_test_{}", Uuid::new_v4().simple());
    let mut admin = server
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect to PostgreSQL at {database_address}: {error}"));
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap_or_else(|error| panic!("create the test database {name}: {error}"));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(server.clone().database(&name))
        .await
        .unwrap_or_else(|error| panic!("connect to the test database {name}: {error}"));
    Some((pool, TestDatabase { name, server }))
}

/// A private Apache Kafka broker (single-node KRaft) for tests that stop, kill
/// and restart a broker. It runs `build-support/kafka/broker`, the same script
/// and jars as `build-support/run`, on its own ports and its own data
/// directory, which survives [`PrivateBroker::kill`] and
/// [`PrivateBroker::restart`] and is removed when the broker is dropped.
pub struct PrivateBroker {
    child: Option<Child>,
    port: u16,
    controller_port: u16,
    data_dir: std::path::PathBuf,
}

impl PrivateBroker {
    /// The broker's jars: `KAFKA_LIBS`, as exported by `build-support/test`.
    pub fn libs() -> String {
        std::env::var("KAFKA_LIBS").expect(
            "KAFKA_LIBS is not set: run the suite with build-support/test, which installs Apache Kafka and exports it",
        )
    }

    /// Whether the broker's jars are installed (`KAFKA_LIBS`). Without them a
    /// test that needs a private broker says so and is skipped, except under
    /// `build-support/test`, where it fails.
    pub fn available() -> bool {
        if std::env::var_os("KAFKA_LIBS").is_some() {
            return true;
        }
        assert!(
            !full_suite(),
            "KAFKA_LIBS is not set, yet build-support/test installs the broker and exports it"
        );
        skip_notice(
            "it starts a private Kafka broker, whose jars KAFKA_LIBS names (build-support/test sets it)",
        );
        false
    }

    /// Starts a broker on 127.0.0.1:`port` and waits until it answers Kafka requests.
    pub async fn start(port: u16) -> Self {
        let data_dir = std::env::temp_dir().join(format!("foodorder-broker-{}", Uuid::new_v4()));
        let mut broker = Self {
            child: None,
            port,
            controller_port: free_port(),
            data_dir,
        };
        broker.launch().await;
        broker
    }

    /// Starts the broker and waits until it answers. A broker that exits while
    /// starting (one of its ports taken by another socket in the meantime) has
    /// its output printed and is started again, with a new controller port, up
    /// to three times.
    async fn launch(&mut self) {
        let output = std::env::temp_dir().join(format!("foodorder-broker-{}.out", self.port));
        for attempt in 1..=3 {
            let log = std::fs::File::create(&output).expect("create the broker's output file");
            let child = Command::new(repository_root().join("build-support/kafka/broker"))
                .arg("--libs")
                .arg(Self::libs())
                .arg("--data")
                .arg(&self.data_dir)
                .args(["--port", &self.port.to_string()])
                .args(["--controller-port", &self.controller_port.to_string()])
                .env("KAFKA_HEAP", "256m")
                .stdout(Stdio::from(log.try_clone().expect("clone a file handle")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("failed to start build-support/kafka/broker");
            self.child = Some(child);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                let bootstrap = self.bootstrap();
                if tokio::task::spawn_blocking(move || broker_answers(&bootstrap))
                    .await
                    .unwrap_or(false)
                {
                    return;
                }
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let said = std::fs::read_to_string(&output).unwrap_or_default();
                    let tail: Vec<&str> = said.lines().rev().take(20).collect();
                    eprintln!(
                        "the private broker on port {} exited while starting ({status}, try {attempt} of 3):\n{}",
                        self.port,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after 90 s waiting for the private broker on port {} to answer; see {}",
                    self.port,
                    self.data_dir.join("logs/server.log").display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.child = None;
            self.controller_port = free_port();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        panic!(
            "the private broker on port {} would not start; see {}",
            self.port,
            self.data_dir.join("logs/server.log").display()
        );
    }

    /// Kills the broker with SIGKILL (no clean shutdown) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "the private broker's data and log are kept for the failed test: {}",
                self.data_dir.join("logs/server.log").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Whether a broker at `bootstrap` answers a metadata request within a second.
fn broker_answers(bootstrap: &str) -> bool {
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create::<BaseConsumer>()
    else {
        return false;
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(1))
        .is_ok_and(|metadata| !metadata.brokers().is_empty())
}

/// `GET path` on a service's HTTP endpoint: the status code and the body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| panic!("connect to the http endpoint {address}: {error}"));
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the http endpoint answers within 10 s")
    .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an http response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name with its labels exactly as
/// exposed, e.g. `foodorder_orders_placed_total` or
/// `foodorder_payment_outcomes_total{outcome="succeeded"}`) in a scrape, if present.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Scrapes `/metrics` until `series` satisfies `condition` (bounded wait); returns its value.
pub async fn wait_for_metric(
    address: std::net::SocketAddr,
    series: &str,
    condition: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, scrape) = http_get(address, "/metrics").await;
        if let Some(value) = metric_value(&scrape, series)
            && condition(value)
        {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 60 s waiting for {series} to reach the expected value; last scrape:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Puts `producer` in librdkafka's fatal-error state, as an idempotent
/// producer that lost its sequence state would be: every later send fails
/// with `Fatal`. librdkafka's own fault injection (`rd_kafka_test_fatal_error`).
#[allow(unsafe_code)]
pub fn inject_fatal_error(producer: &rdkafka::producer::FutureProducer, reason: &str) {
    use rdkafka::producer::Producer;
    let reason = std::ffi::CString::new(reason).expect("a reason without NUL bytes");
    // SAFETY: the client pointer belongs to `producer`, which is alive for the
    // call; `reason` is a valid NUL-terminated string that librdkafka copies.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        )
    };
    assert_eq!(
        error,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
        "librdkafka refused to inject a fatal error"
    );
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

/// How many members of consumer group `group` hold a partition assignment, as
/// the broker's group coordinator reports it (0 while the group is rebalancing).
pub fn assigned_group_members(bootstrap: &str, group: &str) -> usize {
    let Ok(client) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create::<BaseConsumer>()
    else {
        return 0;
    };
    let Ok(groups) = client.fetch_group_list(Some(group), Duration::from_secs(5)) else {
        return 0;
    };
    groups
        .groups()
        .iter()
        .filter(|info| info.name() == group && info.state() == "Stable")
        .flat_map(|info| info.members())
        .filter(|member| member.assignment().is_some_and(|bytes| !bytes.is_empty()))
        .count()
}

/// Waits until `members` members of `group` hold an assignment.
pub async fn wait_for_group_members(bootstrap: &str, group: &str, members: usize) {
    wait_for(
        &format!("{members} members of consumer group {group} to hold an assignment"),
        Duration::from_secs(60),
        || {
            let (bootstrap, group) = (bootstrap.to_owned(), group.to_owned());
            async move {
                let assigned =
                    tokio::task::spawn_blocking(move || assigned_group_members(&bootstrap, &group))
                        .await
                        .unwrap_or(0);
                (assigned == members).then_some(())
            }
        },
    )
    .await;
}

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

/// Produces one record straight over the Kafka protocol (Produce v3, one
/// record batch, no compression), with header names and values taken as raw
/// bytes: the Rust, Java and Python clients only write UTF-8 header names, but
/// the protocol (and the Go clients) allow any bytes, so hostile-record tests
/// need this. Returns the record's offset; panics with the broker's error code.
pub async fn produce_raw(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[crate::record_headers::RawHeader],
) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut record = Vec::new();
    record.push(0); // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varbytes(&mut record, key);
    put_varbytes(&mut record, value);
    put_varint(&mut record, headers.len() as i64);
    for (name, header_value) in headers {
        put_varbytes(&mut record, Some(name));
        put_varbytes(&mut record, header_value.as_deref());
    }
    let now = chrono::Utc::now().timestamp_millis();
    // The part of the batch the CRC covers: attributes to the end.
    let mut body = Vec::new();
    body.extend_from_slice(&0_i16.to_be_bytes()); // attributes: no compression
    body.extend_from_slice(&0_i32.to_be_bytes()); // last offset delta
    body.extend_from_slice(&now.to_be_bytes()); // first timestamp
    body.extend_from_slice(&now.to_be_bytes()); // max timestamp
    body.extend_from_slice(&(-1_i64).to_be_bytes()); // producer id
    body.extend_from_slice(&(-1_i16).to_be_bytes()); // producer epoch
    body.extend_from_slice(&(-1_i32).to_be_bytes()); // base sequence
    body.extend_from_slice(&1_i32.to_be_bytes()); // records
    put_varint(&mut body, record.len() as i64);
    body.extend_from_slice(&record);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0_i64.to_be_bytes()); // base offset
    batch.extend_from_slice(&((4 + 1 + 4 + body.len()) as i32).to_be_bytes()); // batch length
    batch.extend_from_slice(&(-1_i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&body).to_be_bytes());
    batch.extend_from_slice(&body);

    let mut request = Vec::new();
    request.extend_from_slice(&0_i16.to_be_bytes()); // api key: Produce
    request.extend_from_slice(&3_i16.to_be_bytes()); // api version
    request.extend_from_slice(&1_i32.to_be_bytes()); // correlation id
    put_string(&mut request, "foodorder-raw-producer");
    request.extend_from_slice(&(-1_i16).to_be_bytes()); // transactional id: null
    request.extend_from_slice(&(-1_i16).to_be_bytes()); // acks: all
    request.extend_from_slice(&10_000_i32.to_be_bytes()); // timeout
    request.extend_from_slice(&1_i32.to_be_bytes()); // topics
    put_string(&mut request, topic);
    request.extend_from_slice(&1_i32.to_be_bytes()); // partitions
    request.extend_from_slice(&partition.to_be_bytes());
    request.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    request.extend_from_slice(&batch);

    let mut stream = tokio::net::TcpStream::connect(bootstrap)
        .await
        .expect("connect to the broker");
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&request).await.unwrap();
    let size = stream.read_i32().await.expect("produce response") as usize;
    let mut response = vec![0; size];
    stream.read_exact(&mut response).await.unwrap();
    // correlation id, topics (1), topic name, partitions (1), partition, error code, base offset
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    let error_code = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(
        error_code, 0,
        "the broker refused the raw record (Kafka error code {error_code})"
    );
    i64::from_be_bytes(response[at + 2..at + 10].try_into().unwrap())
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_varbytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
        None => put_varint(out, -1),
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// CRC-32C (Castagnoli), the checksum of Kafka record batches.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// For each partition of `topic`: consumer group `group`'s committed offset
/// (-1 when it has none) and the partition's high watermark.
pub fn group_offsets(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("create the offsets reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = metadata
        .topics()
        .first()
        .map(|topic| topic.partitions().len())
        .unwrap_or(0) as i32;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|element| {
            let committed = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => -1,
            };
            let (_, high) = consumer
                .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
                .expect("watermarks");
            (element.partition(), (committed, high))
        })
        .collect()
}
