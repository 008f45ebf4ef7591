//! The order API's configuration, read from environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use foodorder_runtime::config::{DatabaseConfig, KafkaConfig, env_count, env_or, env_seconds};
use foodorder_runtime::health::ProbeSettings;
use foodorder_runtime::outbox::RelayConfig;

use crate::backpressure::BackpressureConfig;
use crate::group_commit::GroupCommitConfig;
use crate::rate_limit::RateLimitConfig;

/// The server's deadline of a call when `ORDER_API_REQUEST_TIMEOUT_MS` is unset.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the order API needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `ORDER_API_ADDR` (default `0.0.0.0:50051`); port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// `ORDER_API_HTTP_ADDR` (default `0.0.0.0:9101`): `GET /healthz`
    /// (liveness, with the broker's and the outbox's state), `GET /readyz`
    /// (an order could commit now: the write probe passes) and `GET /metrics`.
    pub http_addr: SocketAddr,
    /// `ORDER_API_TLS_CERT` and `ORDER_API_TLS_KEY`: TLS on the gRPC
    /// listener (rustls) when set; plaintext otherwise.
    pub tls: Option<crate::tls::TlsFiles>,
    /// PostgreSQL settings.
    pub database: DatabaseConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Outbox relay settings.
    pub relay: RelayConfig,
    /// `SHUTDOWN_GRACE_SECONDS` (default 10): how long calls in flight (and
    /// open streams) may run after a shutdown signal before they are cut.
    pub shutdown_grace: Duration,
    /// `WATCH_MAX_STREAMS` (default 1000): WatchOrder streams open at once;
    /// one more is refused with RESOURCE_EXHAUSTED.
    pub watch_max_streams: usize,
    /// `WATCH_MAX_DB_READS` (default: half of `ORDER_API_READ_DB_CONNECTIONS`,
    /// at least 1): read connections WatchOrder streams may use at once, so
    /// GetOrder always has the rest.
    pub watch_max_db_reads: usize,
    /// `ORDER_API_READ_DB_CONNECTIONS` (default 4): the readers' own pool
    /// (GetOrder, ListMenuItems, WatchOrder), beside `DATABASE_MAX_CONNECTIONS`
    /// (PlaceOrder's writers, the outbox relay, the listeners): readers held
    /// up by a locked or slow table can never take the writers' connections.
    pub read_db_connections: u32,
    /// `ORDER_API_REQUEST_TIMEOUT_MS` (default 5000, at most 10000 advised):
    /// the server's deadline of PlaceOrder, GetOrder, ListMenuItems and the
    /// opening of a WatchOrder stream, applied when the caller sends no
    /// deadline or a later one; also the bound of each database step of the
    /// group-commit writers and of each re-read of a WatchOrder stream.
    pub request_timeout: Duration,
    /// `ORDER_API_MAX_CONCURRENT_CALLS` (default 1000): OrderService calls
    /// handled at once, over all connections; one more is refused at once
    /// with RESOURCE_EXHAUSTED (health checks and reflection are not counted).
    pub max_concurrent_calls: usize,
    /// `GRPC_MAX_CONCURRENT_STREAMS` (default 1000): HTTP/2 streams (calls,
    /// open WatchOrder streams) one connection may have at once.
    pub max_concurrent_streams: u32,
    /// `GRPC_KEEPALIVE_SECONDS` (default 30): HTTP/2 ping interval; a client
    /// that does not answer within 10 s more is disconnected and its streams closed.
    pub keepalive_interval: Duration,
    /// `ORDER_API_CONSUMER_GROUP` (default `order-api`): the group that
    /// consumes `payment.completed` to record payment outcomes; the group
    /// `<ORDER_API_CONSUMER_GROUP>.unprocessable` consumes `order.unprocessable`
    /// (see [`Config::unprocessable_group`]).
    pub consumer_group: String,
    /// `ORDER_API_MAX_IN_FLIGHT` (default 64): `payment.completed` records handled at once.
    pub max_in_flight: usize,
    /// `ORDER_API_CONSUMER_DB_CONNECTIONS` (default 4): the consumer's own
    /// connections (beside `DATABASE_MAX_CONNECTIONS`), so that a backlog of
    /// payment outcomes never takes PlaceOrder's.
    pub consumer_db_connections: u32,
    /// `ORDER_API_HANDLER_TIMEOUT_MS` (default 60000): one try of recording a
    /// payment outcome that takes longer is abandoned and retried.
    pub handler_timeout: Duration,
    /// How PlaceOrder calls are committed together:
    /// `ORDER_API_WRITERS` (default 4) transactions at once, at most
    /// `ORDER_API_BATCH_MAX` (default 128) calls each, and a writer waits up
    /// to `ORDER_API_BATCH_WINDOW_MICROS` (default 200) for more calls, only
    /// while another writer is committing; at most `ORDER_API_QUEUE_MAX`
    /// (default `ORDER_API_WRITERS` × `ORDER_API_BATCH_MAX`) calls wait for a
    /// writer, one more is refused at once with RESOURCE_EXHAUSTED; a writer
    /// gives a batch up 1 s after `ORDER_API_REQUEST_TIMEOUT_MS` (its callers
    /// have had their answer by then).
    pub group_commit: GroupCommitConfig,
    /// `READINESS_PROBE_INTERVAL_MS` (default 1000) and
    /// `READINESS_PROBE_TIMEOUT_MS` (default 1500): how often the write probe
    /// (and the other readiness probes) run, and how long one may take.
    pub readiness_probes: ProbeSettings,
    /// Backpressure: `ORDER_API_MAX_PENDING_ORDERS` (default 20000; 0 = off)
    /// orders awaiting their payment outcome, past which PlaceOrder answers
    /// RESOURCE_EXHAUSTED with a RetryInfo until fewer than 90 % of it are
    /// left; counted every `ORDER_API_BACKLOG_CHECK_INTERVAL_MS` (default 250,
    /// 10 to 10000).
    pub backpressure: BackpressureConfig,
    /// Per-client rate limit: `ORDER_API_RATE_LIMIT_PER_SECOND` (default 0 =
    /// off) calls a second per client (`x-api-key`, else the peer address),
    /// bursts of `ORDER_API_RATE_LIMIT_BURST` (default: the rate), at most
    /// `ORDER_API_RATE_LIMIT_MAX_CLIENTS` (default 100000) clients tracked.
    pub rate_limit: RateLimitConfig,
}

impl Config {
    /// The group that consumes `order.unprocessable`: the consumer group's
    /// name with `.unprocessable` after it.
    pub fn unprocessable_group(&self) -> String {
        format!("{}.unprocessable", self.consumer_group)
    }

    /// Settings for a test: ephemeral ports, a small pool, the test broker
    /// with topics of its own, a fresh consumer group, short back-offs and
    /// grace periods.
    pub fn for_tests() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: DatabaseConfig::for_tests(),
            kafka: KafkaConfig::for_tests(),
            relay: RelayConfig {
                max_backoff: Duration::from_secs(2),
                ..RelayConfig::default()
            },
            shutdown_grace: Duration::from_secs(1),
            watch_max_streams: 1000,
            watch_max_db_reads: 2,
            read_db_connections: 3,
            // Generous: tests share a loaded machine, where a commit can take
            // seconds; the tests of the deadlines set short ones of their own.
            request_timeout: Duration::from_secs(30),
            max_concurrent_calls: 1000,
            max_concurrent_streams: 1000,
            keepalive_interval: Duration::from_secs(30),
            consumer_group: format!("order-api-test-{}", uuid::Uuid::new_v4()),
            max_in_flight: 16,
            consumer_db_connections: 2,
            handler_timeout: foodorder_runtime::consumer::DEFAULT_HANDLER_TIMEOUT,
            group_commit: GroupCommitConfig {
                writers: 2,
                max_batch: 64,
                window: Duration::from_micros(200),
                queue_max: 128,
                batch_timeout: DEFAULT_REQUEST_TIMEOUT,
                stalled_after: crate::group_commit::STALLED_AFTER,
            },
            readiness_probes: ProbeSettings::default(),
            backpressure: BackpressureConfig {
                max_pending: 0,
                check_interval: Duration::from_millis(50),
            },
            rate_limit: RateLimitConfig {
                per_second: 0,
                burst: 0,
                max_clients: DEFAULT_RATE_LIMIT_MAX_CLIENTS,
            },
        }
    }

    /// Reads the configuration from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let database = DatabaseConfig::from_env()?;
        let read_db_connections = env_count("ORDER_API_READ_DB_CONNECTIONS", 4)?;
        let request_timeout = Duration::from_millis(env_count(
            "ORDER_API_REQUEST_TIMEOUT_MS",
            DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        )?);
        let writers = env_count("ORDER_API_WRITERS", 4)?;
        let max_batch = env_count("ORDER_API_BATCH_MAX", 128)?;
        Ok(Self {
            listen_addr: env_or("ORDER_API_ADDR", SocketAddr::from(([0, 0, 0, 0], 50051)))?,
            tls: crate::tls::TlsFiles::from_env()?,
            http_addr: env_or(
                "ORDER_API_HTTP_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 9101)),
            )?,
            kafka: KafkaConfig::from_env()?,
            relay: RelayConfig::from_env()?,
            shutdown_grace: env_seconds("SHUTDOWN_GRACE_SECONDS", 10.0)?,
            watch_max_streams: env_count("WATCH_MAX_STREAMS", 1000)?,
            watch_max_db_reads: env_count(
                "WATCH_MAX_DB_READS",
                (read_db_connections as usize / 2).max(1),
            )?,
            read_db_connections,
            request_timeout,
            max_concurrent_calls: env_count("ORDER_API_MAX_CONCURRENT_CALLS", 1000)?,
            max_concurrent_streams: env_count("GRPC_MAX_CONCURRENT_STREAMS", 1000)?,
            keepalive_interval: env_seconds("GRPC_KEEPALIVE_SECONDS", 30.0)?,
            consumer_group: env_or("ORDER_API_CONSUMER_GROUP", "order-api".to_owned())?,
            max_in_flight: env_count("ORDER_API_MAX_IN_FLIGHT", 64)?,
            consumer_db_connections: env_count("ORDER_API_CONSUMER_DB_CONNECTIONS", 4)?,
            handler_timeout: Duration::from_millis(env_count(
                "ORDER_API_HANDLER_TIMEOUT_MS",
                foodorder_runtime::consumer::DEFAULT_HANDLER_TIMEOUT.as_millis() as u64,
            )?),
            group_commit: GroupCommitConfig {
                writers,
                max_batch,
                window: Duration::from_micros(env_or("ORDER_API_BATCH_WINDOW_MICROS", 200)?),
                queue_max: env_count("ORDER_API_QUEUE_MAX", writers * max_batch)?,
                batch_timeout: request_timeout,
                stalled_after: crate::group_commit::STALLED_AFTER,
            },
            readiness_probes: ProbeSettings::from_env()?,
            backpressure: backpressure_from(
                std::env::var("ORDER_API_MAX_PENDING_ORDERS")
                    .ok()
                    .as_deref(),
                std::env::var("ORDER_API_BACKLOG_CHECK_INTERVAL_MS")
                    .ok()
                    .as_deref(),
            )?,
            rate_limit: rate_limit_from(
                std::env::var("ORDER_API_RATE_LIMIT_PER_SECOND")
                    .ok()
                    .as_deref(),
                std::env::var("ORDER_API_RATE_LIMIT_BURST").ok().as_deref(),
                std::env::var("ORDER_API_RATE_LIMIT_MAX_CLIENTS")
                    .ok()
                    .as_deref(),
            )?,
            database,
        })
    }
}

/// `ORDER_API_MAX_PENDING_ORDERS` when unset.
pub const DEFAULT_MAX_PENDING_ORDERS: u64 = 20_000;
/// `ORDER_API_BACKLOG_CHECK_INTERVAL_MS` when unset.
pub const DEFAULT_BACKLOG_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// `ORDER_API_RATE_LIMIT_MAX_CLIENTS` when unset.
pub const DEFAULT_RATE_LIMIT_MAX_CLIENTS: usize = 100_000;

/// An unsigned integer setting: `default` when unset or empty.
fn parse_setting<T: std::str::FromStr>(
    name: &str,
    raw: Option<&str>,
    default: T,
) -> anyhow::Result<T> {
    match raw.map(str::trim) {
        Some(value) if !value.is_empty() => value.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid value {value:?} for {name}: expected a whole number of at least 0"
            )
        }),
        _ => Ok(default),
    }
}

/// The backpressure settings from their raw values.
fn backpressure_from(
    max_pending: Option<&str>,
    interval_ms: Option<&str>,
) -> anyhow::Result<BackpressureConfig> {
    let max_pending = parse_setting(
        "ORDER_API_MAX_PENDING_ORDERS",
        max_pending,
        DEFAULT_MAX_PENDING_ORDERS,
    )?;
    anyhow::ensure!(
        max_pending < i64::MAX as u64,
        "ORDER_API_MAX_PENDING_ORDERS is too large ({max_pending}); 0 turns backpressure off"
    );
    let interval_ms: u64 = parse_setting(
        "ORDER_API_BACKLOG_CHECK_INTERVAL_MS",
        interval_ms,
        DEFAULT_BACKLOG_CHECK_INTERVAL.as_millis() as u64,
    )?;
    anyhow::ensure!(
        (10..=10_000).contains(&interval_ms),
        "ORDER_API_BACKLOG_CHECK_INTERVAL_MS must be between 10 and 10000, got {interval_ms}"
    );
    Ok(BackpressureConfig {
        max_pending,
        check_interval: Duration::from_millis(interval_ms),
    })
}

/// The rate-limit settings from their raw values.
fn rate_limit_from(
    per_second: Option<&str>,
    burst: Option<&str>,
    max_clients: Option<&str>,
) -> anyhow::Result<RateLimitConfig> {
    let per_second: u32 = parse_setting("ORDER_API_RATE_LIMIT_PER_SECOND", per_second, 0)?;
    let burst_set = burst.is_some_and(|value| !value.trim().is_empty());
    let burst: u32 = parse_setting("ORDER_API_RATE_LIMIT_BURST", burst, per_second)?;
    let max_clients: usize = parse_setting(
        "ORDER_API_RATE_LIMIT_MAX_CLIENTS",
        max_clients,
        DEFAULT_RATE_LIMIT_MAX_CLIENTS,
    )?;
    if per_second == 0 {
        anyhow::ensure!(
            !burst_set,
            "ORDER_API_RATE_LIMIT_BURST is set but ORDER_API_RATE_LIMIT_PER_SECOND is 0 (no rate limit): \
             set the rate too, or unset the burst"
        );
    } else {
        anyhow::ensure!(
            burst >= 1,
            "ORDER_API_RATE_LIMIT_BURST must be at least 1 when ORDER_API_RATE_LIMIT_PER_SECOND is set, got {burst}"
        );
    }
    anyhow::ensure!(
        max_clients >= 1,
        "ORDER_API_RATE_LIMIT_MAX_CLIENTS must be at least 1, got {max_clients}"
    );
    Ok(RateLimitConfig {
        per_second,
        burst,
        max_clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backpressure_settings() {
        let config = backpressure_from(None, None).unwrap();
        assert_eq!(config.max_pending, 20_000);
        assert_eq!(config.check_interval, Duration::from_millis(250));
        assert_eq!(
            backpressure_from(Some("0"), Some("1000"))
                .unwrap()
                .max_pending,
            0
        );
        for (max, interval) in [
            (Some("-1"), None),
            (Some("lots"), None),
            (None, Some("5")),
            (None, Some("60000")),
        ] {
            let error = backpressure_from(max, interval).unwrap_err().to_string();
            assert!(error.contains("ORDER_API_"), "{error}");
        }
    }

    #[test]
    fn rate_limit_settings() {
        let off = rate_limit_from(None, None, None).unwrap();
        assert_eq!(
            (off.per_second, off.burst, off.max_clients),
            (0, 0, 100_000)
        );
        let on = rate_limit_from(Some("50"), None, None).unwrap();
        assert_eq!((on.per_second, on.burst), (50, 50));
        let on = rate_limit_from(Some("50"), Some("200"), Some("10")).unwrap();
        assert_eq!((on.burst, on.max_clients), (200, 10));
        for (rate, burst, clients) in [
            (Some("-5"), None, None),
            (Some("5"), Some("0"), None),
            (None, Some("10"), None),
            (Some("5"), None, Some("0")),
            (Some("2.5"), None, None),
        ] {
            assert!(
                rate_limit_from(rate, burst, clients).is_err(),
                "{rate:?} {burst:?} {clients:?}"
            );
        }
    }
}
