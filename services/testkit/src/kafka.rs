//! Kafka for tests: unique topic prefixes, the shared test broker, reading
//! every record of a topic back, consumer-group state, and librdkafka's fault
//! injection.

use std::collections::BTreeMap;
use std::time::Duration;

use foodorder_runtime::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::wait_for;

/// A topic prefix unique to this test run, e.g. `t3f2a…-`.
pub fn unique_prefix() -> String {
    format!("t{}-", &Uuid::new_v4().simple().to_string()[..12])
}

/// The broker the test suite runs against (`KAFKA_BOOTSTRAP_SERVERS`, default 127.0.0.1:9092).
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The SASL/SCRAM-SHA-512 login of the test kit's own Kafka clients, once set.
static LOGIN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// Makes every Kafka client of the test kit (readers, offset, group and
/// metadata lookups, [`crate::produce_raw`]) log in as `username` over
/// SASL/SCRAM-SHA-512 from now on, as a tool whose brokers take SASL only
/// must (the chaos run, as the admin principal). Once per process: a second
/// login is refused.
pub fn log_in_as(username: &str, password: &str) -> anyhow::Result<()> {
    LOGIN
        .set((username.to_owned(), password.to_owned()))
        .map_err(|_| anyhow::anyhow!("the test kit's Kafka clients already have a login"))
}

/// The login set with [`log_in_as`], if any: (username, password).
pub fn login() -> Option<&'static (String, String)> {
    LOGIN.get()
}

/// A client configuration for `bootstrap` with the test kit's login, if any.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    if let Some((username, password)) = login() {
        crate::broker::scram_login(&mut config, username, password);
    }
    config
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
    pub raw_headers: Vec<foodorder_runtime::record_headers::RawHeader>,
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
    let consumer: BaseConsumer = client(bootstrap)
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
                    headers: foodorder_runtime::record_headers::utf8_map(
                        &foodorder_runtime::record_headers::read(&message),
                    ),
                    raw_headers: foodorder_runtime::record_headers::read(&message),
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

/// How many members of consumer group `group` hold a partition assignment, as
/// the broker's group coordinator reports it (0 while the group is rebalancing).
pub fn assigned_group_members(bootstrap: &str, group: &str) -> usize {
    let Ok(client) = client(bootstrap)
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

/// For each partition of `topic`: consumer group `group`'s committed offset
/// (-1 when it has none) and the partition's high watermark.
pub fn group_offsets(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("create the offsets reader");
    // Right after a broker restart leadership and the group coordinator may
    // still be moving (NotLeaderForPartition, NotCoordinator,
    // CoordinatorLoadInProgress): every question is asked again, for a
    // bounded time.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let metadata = ask_until(deadline, &format!("metadata of {topic}"), || {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    });
    let partitions = metadata
        .topics()
        .first()
        .map(|topic| topic.partitions().len())
        .unwrap_or(0) as i32;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = ask_until(deadline, &format!("committed offsets of {group}"), || {
        consumer.committed_offsets(list.clone(), Duration::from_secs(10))
    });
    committed
        .elements()
        .iter()
        .map(|element| {
            let committed = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => -1,
            };
            let partition = element.partition();
            let (_, high) = ask_until(
                deadline,
                &format!("high watermark of {topic}[{partition}]"),
                || consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)),
            );
            (partition, (committed, high))
        })
        .collect()
}

/// Runs `ask` until it answers or `deadline` passes, saying on stderr what is
/// asked again and why; past the deadline the last error is returned. For
/// questions a broker may refuse for a moment while leadership or a group
/// coordinator moves.
pub fn ask_again_until<T, E: std::fmt::Display>(
    deadline: std::time::Instant,
    what: &str,
    mut ask: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    loop {
        match ask() {
            Ok(answer) => return Ok(answer),
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("{what} not available yet ({error}), asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => return Err(error),
        }
    }
}

/// [`ask_again_until`] for a check: past the deadline the last error fails it.
fn ask_until<T, E: std::fmt::Display>(
    deadline: std::time::Instant,
    what: &str,
    ask: impl FnMut() -> Result<T, E>,
) -> T {
    ask_again_until(deadline, what, ask).unwrap_or_else(|error| panic!("{what}: {error}"))
}

/// Creates the contract's event topics (`order.placed`, `payment.completed`,
/// `order.unprocessable`) with `config`'s prefix; each service creates its own
/// dead-letter topic.
pub async fn create_event_topics(config: &KafkaConfig) -> anyhow::Result<()> {
    use foodorder_contract::topics::{ORDER_PLACED, ORDER_UNPROCESSABLE, PAYMENT_COMPLETED};
    use foodorder_runtime::kafka::{TopicSpec, ensure_topics};
    let specs = [ORDER_PLACED, PAYMENT_COMPLETED, ORDER_UNPROCESSABLE]
        .map(|name| TopicSpec::event(config, &config.topic(name)));
    ensure_topics(config, &specs).await
}
