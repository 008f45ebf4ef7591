//! Typed configuration read from environment variables, shared by every
//! service: the database URL (kept secret in logs) and its deadlines, and the
//! Kafka settings (brokers, topic prefix, partition counts, timeouts).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;

/// Reads `name` from the environment and parses it, or returns `default` when unset or empty.
pub fn env_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    parse_or(name, std::env::var(name).ok().as_deref(), default)
}

/// Like [`env_or`], for a count that must be at least 1: a zero batch size,
/// concurrency limit or partition count would stall the service instead of
/// failing it, so it is refused at start.
pub fn env_count<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr + PartialOrd + From<u8> + fmt::Display,
    T::Err: fmt::Display,
{
    parse_count(name, std::env::var(name).ok().as_deref(), default)
}

fn parse_or<T>(name: &str, raw: Option<&str>, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match raw.map(str::trim) {
        Some(value) if !value.is_empty() => value
            .parse()
            .map_err(|error| anyhow::anyhow!("invalid value {value:?} for {name}: {error}")),
        _ => Ok(default),
    }
}

fn parse_count<T>(name: &str, raw: Option<&str>, default: T) -> anyhow::Result<T>
where
    T: FromStr + PartialOrd + From<u8> + fmt::Display,
    T::Err: fmt::Display,
{
    let value = parse_or(name, raw, default)?;
    if value < T::from(1) {
        anyhow::bail!("{name} must be at least 1, got {value}");
    }
    Ok(value)
}

/// Reads a duration given in (possibly fractional) seconds, e.g. `PAYMENT_TIMEOUT=4.0`.
pub fn env_seconds(name: &str, default_seconds: f64) -> anyhow::Result<Duration> {
    let seconds: f64 = env_or(name, default_seconds)?;
    Duration::try_from_secs_f64(seconds)
        .with_context(|| format!("{name} must be a non-negative number of seconds, got {seconds}"))
}

/// A value that must never be printed, such as a connection string with a password.
#[derive(Clone)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Gives access to the secret; call sites are easy to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret([redacted])")
    }
}

/// PostgreSQL settings.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`.
    pub url: Secret<String>,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub max_connections: u32,
    /// How long statements, lock waits, idle transactions and waits for a
    /// pooled connection may take (see [`DatabaseTimeouts`]).
    pub timeouts: DatabaseTimeouts,
}

/// The deadlines of every database connection a service opens. PostgreSQL
/// enforces the first three on each session (they are sent as startup
/// options, so they cost no round trip); the pool enforces the others.
/// A zero duration turns a server-side bound off, as in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseTimeouts {
    /// `DATABASE_STATEMENT_TIMEOUT_MS` (default 5000): PostgreSQL cancels a
    /// statement running longer (SQLSTATE 57014), lock waits included.
    pub statement: Duration,
    /// `DATABASE_LOCK_TIMEOUT_MS` (default 2000): PostgreSQL gives up a wait
    /// for a lock (a table locked by a migration or `VACUUM FULL`, a row
    /// another transaction holds, an advisory lock) after this long (55P03).
    pub lock: Duration,
    /// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS` (default 60000): PostgreSQL
    /// ends a session that sits idle inside a transaction this long (its
    /// client vanished or hangs), releasing its locks. Must exceed the
    /// longest pause a service makes inside a transaction (the outbox relay
    /// waits for the broker's acks, up to `KAFKA_MESSAGE_TIMEOUT_MS`; a
    /// notification is sent inside its transaction).
    pub idle_in_transaction: Duration,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS` (default 5000): the longest wait for a
    /// pooled connection, opening a new one included (a server that does not
    /// answer a connection attempt is given up on after this long).
    pub acquire: Duration,
    /// `DATABASE_MIGRATION_LOCK_TIMEOUT_MS` (default 10000): the lock wait of
    /// a schema migration at start. Migrations have no statement timeout (they
    /// may legitimately run long), but a migration that waits for a table lock
    /// makes every later query of that table queue behind it, so the wait is
    /// bounded; the start is then retried.
    pub migration_lock: Duration,
}

impl Default for DatabaseTimeouts {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(5),
            lock: Duration::from_secs(2),
            idle_in_transaction: Duration::from_secs(60),
            acquire: Duration::from_secs(5),
            migration_lock: Duration::from_secs(10),
        }
    }
}

impl DatabaseTimeouts {
    /// Reads the `DATABASE_*_TIMEOUT_MS` settings (see the fields).
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Self::default();
        let millis = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(env_or(
                name,
                default.as_millis() as u64,
            )?))
        };
        let timeouts = Self {
            statement: millis("DATABASE_STATEMENT_TIMEOUT_MS", defaults.statement)?,
            lock: millis("DATABASE_LOCK_TIMEOUT_MS", defaults.lock)?,
            idle_in_transaction: millis(
                "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                defaults.idle_in_transaction,
            )?,
            acquire: millis("DATABASE_ACQUIRE_TIMEOUT_MS", defaults.acquire)?,
            migration_lock: millis(
                "DATABASE_MIGRATION_LOCK_TIMEOUT_MS",
                defaults.migration_lock,
            )?,
        };
        anyhow::ensure!(
            !timeouts.acquire.is_zero(),
            "DATABASE_ACQUIRE_TIMEOUT_MS must be at least 1"
        );
        Ok(timeouts)
    }
}

impl DatabaseConfig {
    /// Settings for a test that hands the service a pool of its own (the URL is not used).
    pub fn for_tests() -> Self {
        Self {
            url: Secret::new(String::new()),
            max_connections: 5,
            timeouts: DatabaseTimeouts::default(),
        }
    }

    /// Reads `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/foodorder`).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            url: Secret::new(env_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/foodorder".to_owned(),
            )?),
            max_connections: env_count("DATABASE_MAX_CONNECTIONS", 10)?,
            timeouts: DatabaseTimeouts::from_env()?,
        })
    }
}

/// Kafka settings shared by producers, consumers and the topic admin.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`).
    pub bootstrap_servers: String,
    /// `KAFKA_TOPIC_PREFIX` (default empty): put in front of every topic
    /// name, so that test runs sharing a broker do not meet.
    pub topic_prefix: String,
    /// `KAFKA_EVENT_PARTITIONS` (default 6) for `order.placed` and `payment.completed`.
    pub event_partitions: i32,
    /// `KAFKA_DLQ_PARTITIONS` (default 1) for the dead-letter topics.
    pub dlq_partitions: i32,
    /// `KAFKA_REPLICATION_FACTOR` (default 1).
    pub replication_factor: i32,
    /// `KAFKA_MIN_INSYNC_REPLICAS` (default unset: the broker's
    /// `min.insync.replicas`): set on the topics the services create, so that
    /// an `acks=all` write is acknowledged only once this many replicas have
    /// it. At most `KAFKA_REPLICATION_FACTOR`, or no write would succeed.
    pub min_insync_replicas: Option<i32>,
    /// `KAFKA_MESSAGE_TIMEOUT_MS` (default 10000): how long a produce may wait for an ack.
    pub message_timeout: Duration,
    /// `KAFKA_SESSION_TIMEOUT_MS` (default 10000): how long the group waits for
    /// a member that stopped heartbeating (a crashed process) before its
    /// partitions move to the others. Kafka accepts 6000 to 1800000 by default.
    pub session_timeout: Duration,
    /// `KAFKA_MAX_POLL_INTERVAL_MS` (default 600000): a consumer whose handlers
    /// are all blocked (a long database outage) for longer leaves the group and
    /// rejoins when they move again; redelivered records are deduplicated.
    pub max_poll_interval: Duration,
    /// `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD` and `KAFKA_SASL_MECHANISM`
    /// (default `SCRAM-SHA-512`): every client authenticates as this
    /// principal over SASL (`security.protocol=SASL_PLAINTEXT`); unset, it
    /// connects without authentication.
    pub sasl: Option<SaslLogin>,
}

/// A principal's SASL login.
#[derive(Clone, Debug)]
pub struct SaslLogin {
    /// The principal's name.
    pub username: String,
    /// Its password.
    pub password: Secret<String>,
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    pub mechanism: String,
}

impl SaslLogin {
    /// The mechanisms a client may use.
    pub const MECHANISMS: [&'static str; 3] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

    /// From the three settings' values: none set, no login; a username
    /// without a password (or the other way round), or a mechanism that is
    /// not one of [`SaslLogin::MECHANISMS`], is an error.
    pub fn from_values(
        username: Option<&str>,
        password: Option<&str>,
        mechanism: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        fn set(value: Option<&str>) -> Option<&str> {
            value.map(str::trim).filter(|value| !value.is_empty())
        }
        match (set(username), password.filter(|value| !value.is_empty())) {
            (None, None) => {
                anyhow::ensure!(
                    set(mechanism).is_none(),
                    "KAFKA_SASL_MECHANISM is set but KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are not"
                );
                Ok(None)
            }
            (Some(_), None) => {
                anyhow::bail!("KAFKA_SASL_USERNAME is set but KAFKA_SASL_PASSWORD is not")
            }
            (None, Some(_)) => {
                anyhow::bail!("KAFKA_SASL_PASSWORD is set but KAFKA_SASL_USERNAME is not")
            }
            (Some(username), Some(password)) => {
                let mechanism = set(mechanism)
                    .unwrap_or("SCRAM-SHA-512")
                    .to_ascii_uppercase();
                anyhow::ensure!(
                    Self::MECHANISMS.contains(&mechanism.as_str()),
                    "KAFKA_SASL_MECHANISM {mechanism:?} is not one of {}",
                    Self::MECHANISMS.join(", ")
                );
                Ok(Some(Self {
                    username: username.to_owned(),
                    password: Secret::new(password.to_owned()),
                    mechanism,
                }))
            }
        }
    }

    /// Reads `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `KAFKA_SASL_MECHANISM`.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let read = |name: &str| std::env::var(name).ok();
        Self::from_values(
            read("KAFKA_SASL_USERNAME").as_deref(),
            read("KAFKA_SASL_PASSWORD").as_deref(),
            read("KAFKA_SASL_MECHANISM").as_deref(),
        )
    }
}

impl KafkaConfig {
    /// Reads the Kafka settings from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let replication_factor = env_count("KAFKA_REPLICATION_FACTOR", 1)?;
        let min_insync_replicas = min_insync_replicas(
            std::env::var("KAFKA_MIN_INSYNC_REPLICAS").ok().as_deref(),
            replication_factor,
        )?;
        Ok(Self {
            bootstrap_servers: env_or("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092".to_owned())?,
            topic_prefix: env_or("KAFKA_TOPIC_PREFIX", String::new())?,
            event_partitions: env_count("KAFKA_EVENT_PARTITIONS", 6)?,
            dlq_partitions: env_count("KAFKA_DLQ_PARTITIONS", 1)?,
            replication_factor,
            min_insync_replicas,
            message_timeout: Duration::from_millis(env_count("KAFKA_MESSAGE_TIMEOUT_MS", 10_000)?),
            session_timeout: Duration::from_millis(env_count("KAFKA_SESSION_TIMEOUT_MS", 10_000)?),
            max_poll_interval: Duration::from_millis(env_or(
                "KAFKA_MAX_POLL_INTERVAL_MS",
                600_000,
            )?),
            sasl: SaslLogin::from_env()?,
        })
    }

    /// The full name of topic `name` (`order.placed`, `payment.dlq`, …) with the prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// Settings for the test broker (`KAFKA_BOOTSTRAP_SERVERS`, default
    /// `127.0.0.1:9092`) with a topic prefix of this test's own.
    pub fn for_tests() -> Self {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Self::local(&bootstrap, &format!("t{}-", &unique[..12]))
    }

    /// Settings for a local single broker at `bootstrap_servers` with topic-name `prefix`.
    pub fn local(bootstrap_servers: &str, prefix: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            topic_prefix: prefix.to_owned(),
            event_partitions: 6,
            dlq_partitions: 1,
            replication_factor: 1,
            min_insync_replicas: None,
            message_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(6),
            max_poll_interval: Duration::from_secs(600),
            sasl: None,
        }
    }
}

/// Parses `KAFKA_MIN_INSYNC_REPLICAS` (unset or empty: the broker's default),
/// refusing a value above the replication factor: such a topic would accept
/// no `acks=all` write at all.
fn min_insync_replicas(raw: Option<&str>, replication_factor: i32) -> anyhow::Result<Option<i32>> {
    const NAME: &str = "KAFKA_MIN_INSYNC_REPLICAS";
    if raw.is_none_or(|value| value.trim().is_empty()) {
        return Ok(None);
    }
    let value = parse_count(NAME, raw, 1)?;
    anyhow::ensure!(
        value <= replication_factor,
        "{NAME} ({value}) must not exceed KAFKA_REPLICATION_FACTOR ({replication_factor}): no write could be acknowledged"
    );
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_refuse_zero_and_negative_values() {
        let zero = parse_count::<usize>("OUTBOX_BATCH_SIZE", Some("0"), 256).unwrap_err();
        assert_eq!(
            zero.to_string(),
            "OUTBOX_BATCH_SIZE must be at least 1, got 0"
        );
        assert!(parse_count::<i32>("KAFKA_EVENT_PARTITIONS", Some("-2"), 6).is_err());
        assert!(parse_count::<usize>("PAYMENT_MAX_IN_FLIGHT", Some("x"), 6).is_err());
        assert_eq!(
            parse_count::<usize>("PAYMENT_MAX_IN_FLIGHT", Some(" 4 "), 6).unwrap(),
            4
        );
        assert_eq!(
            parse_count::<usize>("PAYMENT_MAX_IN_FLIGHT", None, 6).unwrap(),
            6
        );
        assert_eq!(
            parse_count::<usize>("PAYMENT_MAX_IN_FLIGHT", Some(""), 6).unwrap(),
            6
        );
    }

    #[test]
    fn min_insync_replicas_is_optional_and_at_most_the_replication_factor() {
        assert_eq!(min_insync_replicas(None, 3).unwrap(), None);
        assert_eq!(min_insync_replicas(Some(" "), 3).unwrap(), None);
        assert_eq!(min_insync_replicas(Some("2"), 3).unwrap(), Some(2));
        assert_eq!(min_insync_replicas(Some("3"), 3).unwrap(), Some(3));
        assert_eq!(
            min_insync_replicas(Some("2"), 1).unwrap_err().to_string(),
            "KAFKA_MIN_INSYNC_REPLICAS (2) must not exceed KAFKA_REPLICATION_FACTOR (1): no write could be acknowledged"
        );
        assert!(min_insync_replicas(Some("0"), 3).is_err());
        assert!(min_insync_replicas(Some("two"), 3).is_err());
    }
}

#[cfg(test)]
mod sasl_tests {
    use super::SaslLogin;

    #[test]
    fn a_sasl_login_needs_a_name_and_a_password_and_a_known_mechanism() {
        assert!(SaslLogin::from_values(None, None, None).unwrap().is_none());
        let login = SaslLogin::from_values(Some("order-api"), Some("pw"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (login.username.as_str(), login.mechanism.as_str()),
            ("order-api", "SCRAM-SHA-512")
        );
        assert_eq!(login.password.expose(), "pw");
        assert!(
            !format!("{login:?}").contains("pw\""),
            "the password is not printed"
        );
        let plain = SaslLogin::from_values(Some("a"), Some("b"), Some("plain"))
            .unwrap()
            .unwrap();
        assert_eq!(plain.mechanism, "PLAIN");
        for (username, password, mechanism) in [
            (Some("a"), None, None),
            (None, Some("b"), None),
            (None, None, Some("SCRAM-SHA-512")),
            (Some("a"), Some("b"), Some("GSSAPI")),
        ] {
            assert!(
                SaslLogin::from_values(username, password, mechanism).is_err(),
                "{username:?} {password:?} {mechanism:?}"
            );
        }
    }
}
