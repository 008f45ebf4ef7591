//! Per-client rate limit of the order service, with the `governor` crate
//! (GCRA: a token bucket kept as one timestamp per client).
//!
//! A client is the `x-api-key` metadata entry when the call has one
//! (printable ASCII, 1 to [`MAX_API_KEY_BYTES`] bytes, else INVALID_ARGUMENT),
//! else the peer's IP address. Each may make `ORDER_API_RATE_LIMIT_PER_SECOND`
//! calls a second with bursts of `ORDER_API_RATE_LIMIT_BURST`; one more is
//! answered RESOURCE_EXHAUSTED at once with a google.rpc.RetryInfo saying when
//! the next call would be allowed. Every OrderService method counts (a
//! WatchOrder stream once, when it opens); health checks and reflection never do.
//!
//! Keys are kept as a keyed hash (a random key per process), never as text and
//! never logged. Memory stays bounded under a client spraying keys: at most
//! `ORDER_API_RATE_LIMIT_MAX_CLIENTS` keys are tracked, and a housekeeping
//! task forgets, every second, the clients whose bucket has refilled
//! (`retain_recent`: their state is the same as a new client's). Past the cap,
//! calls of clients not yet tracked share one overflow bucket (with the same
//! rate) until the housekeeping makes room: a flood of new keys is limited as
//! one client, while every client already tracked keeps its own bucket.
//!
//! The limit is per instance: behind a load balancer spreading a client over
//! N instances the client gets up to N times the rate. The API key is not
//! authenticated here; a client can evade its limit by changing keys (up to
//! the cap), so the peer-address limit and the concurrency and queue limits
//! remain the protection against a hostile client.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use foodorder_runtime::metrics::Metrics;
use governor::clock::{Clock, MonotonicClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::backpressure::ReasonLabel;
use crate::error::ApiError;

/// The metadata entry that names a client.
pub const API_KEY_METADATA: &str = "x-api-key";
/// The longest `x-api-key` accepted, in bytes.
pub const MAX_API_KEY_BYTES: usize = 128;
/// The path prefix of the calls that are limited.
const LIMITED_PREFIX: &str = "/foodorder.v1.OrderService/";
/// How often clients whose bucket refilled are forgotten.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// The rate-limit settings.
#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    /// `ORDER_API_RATE_LIMIT_PER_SECOND` (default 0: no limit).
    pub per_second: u32,
    /// `ORDER_API_RATE_LIMIT_BURST` (default: the rate per second).
    pub burst: u32,
    /// `ORDER_API_RATE_LIMIT_MAX_CLIENTS` (default 100000): clients tracked at once.
    pub max_clients: usize,
}

/// Who a call is counted against.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ClientKey {
    /// An `x-api-key`, as a keyed hash.
    ApiKey(u64),
    /// The peer's address (no `x-api-key`).
    Peer(IpAddr),
    /// Neither (a transport without addresses).
    Unknown,
    /// The shared bucket of clients not tracked because the table is full.
    Overflow,
}

/// A governor state store that tracks at most `cap` clients (plus the
/// overflow bucket): one timestamp (the theoretical arrival time) per client.
pub struct BoundedKeyStore {
    states: Mutex<HashMap<ClientKey, u64>>,
    cap: usize,
}

impl BoundedKeyStore {
    /// A store of at most `cap` clients (at least 1).
    pub fn new(cap: usize) -> Self {
        Self {
            states: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, u64>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StateStore for BoundedKeyStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut states = self.states();
        let key = if states.len() < self.cap || states.contains_key(key) {
            *key
        } else {
            ClientKey::Overflow
        };
        let previous = states
            .get(&key)
            .copied()
            .and_then(NonZeroU64::new)
            .map(|nanos| Nanos::new(nanos.get()));
        let (outcome, next) = f(previous)?;
        states.insert(key, next.as_u64());
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for BoundedKeyStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.states().retain(|_, state| *state > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.states().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.states().len()
    }

    fn is_empty(&self) -> bool {
        self.states().is_empty()
    }
}

type Limiter = RateLimiter<ClientKey, BoundedKeyStore, MonotonicClock>;

/// The rate limiter shared by every connection. Cheap to clone.
#[derive(Clone)]
pub struct ClientRateLimit {
    limiter: Arc<Limiter>,
    hasher: RandomState,
    per_second: u32,
    burst: u32,
    rejected: Counter,
}

impl ClientRateLimit {
    /// A limiter for `config`, or none when its rate is 0; counts refusals in `rejected`.
    pub fn new(config: &RateLimitConfig, rejected: &Family<ReasonLabel, Counter>) -> Option<Self> {
        let per_second = NonZeroU32::new(config.per_second)?;
        let burst = NonZeroU32::new(config.burst).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Some(Self {
            limiter: Arc::new(RateLimiter::new(
                quota,
                BoundedKeyStore::new(config.max_clients),
                MonotonicClock,
            )),
            hasher: RandomState::new(),
            per_second: per_second.get(),
            burst: burst.get(),
            rejected: rejected
                .get_or_create(&ReasonLabel {
                    reason: "rate_limit",
                })
                .clone(),
        })
    }

    /// Registers `foodorder_rate_limit_clients` (clients tracked now).
    pub fn register(&self, metrics: &Metrics) {
        let gauge = metrics.gauge(
            "foodorder_rate_limit_clients",
            "Clients (x-api-key or peer address) the rate limiter tracks now (at most ORDER_API_RATE_LIMIT_MAX_CLIENTS, plus one overflow bucket)",
        );
        let limiter = Arc::downgrade(&self.limiter);
        metrics.on_scrape(move || {
            if let Some(limiter) = limiter.upgrade() {
                gauge.set(limiter.len() as i64);
            }
        });
    }

    /// Clients tracked now.
    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets the clients whose bucket has refilled (every second until `stop`).
    pub async fn run_housekeeping(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.forget_idle();
            ticks += 1;
            if ticks.is_multiple_of(60) {
                self.limiter.shrink_to_fit();
            }
        }
    }

    /// Forgets the clients whose bucket has refilled.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }

    /// The client of a call with these headers and this peer.
    pub fn client_key(
        &self,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<ClientKey, ApiError> {
        let Some(value) = headers.get(API_KEY_METADATA) else {
            return Ok(peer.map_or(ClientKey::Unknown, ClientKey::Peer));
        };
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_API_KEY_BYTES
            || !bytes.iter().all(|byte| (0x20..=0x7e).contains(byte))
        {
            return Err(ApiError::invalid_field(
                API_KEY_METADATA,
                format!(
                    "x-api-key metadata must be 1 to {MAX_API_KEY_BYTES} printable ASCII characters \
                     (got {} bytes)",
                    bytes.len()
                ),
            ));
        }
        Ok(ClientKey::ApiKey(self.hasher.hash_one(bytes)))
    }

    /// Ok when `key` may make a call now; the error to answer otherwise.
    pub fn check(&self, key: &ClientKey) -> Result<(), ApiError> {
        match self.limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.rejected.inc();
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err(ApiError::RateLimited {
                    per_second: self.per_second,
                    burst: self.burst,
                    retry_after: wait.max(Duration::from_millis(1)),
                })
            }
        }
    }
}

/// The tower layer that applies [`ClientRateLimit`] to OrderService calls.
#[derive(Clone)]
pub struct RateLimitLayer {
    limit: Option<ClientRateLimit>,
}

impl RateLimitLayer {
    /// Limits with `limit`; passes everything when it is `None`.
    pub fn new(limit: Option<ClientRateLimit>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service wrapper made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limit: Option<ClientRateLimit>,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RateLimited<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let Some(limit) = &self.limit else {
            return Box::pin(self.inner.call(request));
        };
        if !request.uri().path().starts_with(LIMITED_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|address| address.ip());
        let verdict = limit
            .client_key(request.headers(), peer)
            .and_then(|key| limit.check(&key));
        match verdict {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(error) => {
                let refused = tonic::Status::from(error).into_http::<ResponseBody>();
                Box::pin(std::future::ready(Ok(refused)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32, max_clients: usize) -> ClientRateLimit {
        ClientRateLimit::new(
            &RateLimitConfig {
                per_second,
                burst,
                max_clients,
            },
            &Family::default(),
        )
        .expect("a limit")
    }

    #[test]
    fn zero_means_no_limit() {
        let config = RateLimitConfig {
            per_second: 0,
            burst: 0,
            max_clients: 10,
        };
        assert!(ClientRateLimit::new(&config, &Family::default()).is_none());
    }

    #[test]
    fn the_key_table_stays_bounded_under_a_spray_of_keys() {
        let limit = limit(1, 1, 100);
        for key in 0..10_000_u64 {
            let _ = limit.check(&ClientKey::ApiKey(key));
        }
        // The cap, plus the overflow bucket the rest shared.
        assert_eq!(limit.tracked_clients(), 101);
        // A client tracked before the table filled keeps its own bucket …
        assert!(limit.check(&ClientKey::ApiKey(0)).is_err());
        // … and untracked ones share the overflow bucket, already used up.
        let refused = limit.check(&ClientKey::ApiKey(20_000));
        assert!(matches!(refused, Err(ApiError::RateLimited { .. })));
    }

    #[test]
    fn refilled_clients_are_forgotten() {
        // 1000 a second, burst 1: a bucket refills within a millisecond.
        let limit = limit(1000, 1, 1000);
        for key in 0..500_u64 {
            limit.check(&ClientKey::ApiKey(key)).unwrap();
        }
        assert_eq!(limit.tracked_clients(), 500);
        std::thread::sleep(Duration::from_millis(20));
        limit.forget_idle();
        assert_eq!(limit.tracked_clients(), 0);
    }

    #[test]
    fn the_burst_then_a_retry_delay() {
        let limit = limit(2, 2, 10);
        let client = ClientKey::Peer(IpAddr::from([10, 0, 0, 1]));
        limit.check(&client).unwrap();
        limit.check(&client).unwrap();
        match limit.check(&client) {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another client is not affected.
        limit
            .check(&ClientKey::Peer(IpAddr::from([10, 0, 0, 2])))
            .unwrap();
    }

    #[test]
    fn api_keys_are_validated() {
        let limit = limit(1, 1, 10);
        let key = |value: &[u8]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                API_KEY_METADATA,
                http::HeaderValue::from_bytes(value).unwrap(),
            );
            limit.client_key(&headers, None)
        };
        assert!(matches!(key(b"team-a"), Ok(ClientKey::ApiKey(_))));
        assert_eq!(key(b"team-a").unwrap(), key(b"team-a").unwrap());
        assert!(key(&[b'k'; MAX_API_KEY_BYTES]).is_ok());
        assert!(key(&[b'k'; MAX_API_KEY_BYTES + 1]).is_err());
        assert!(key(b"").is_err());
        assert!(key(b"caf\xc3\xa9").is_err());
        assert_eq!(
            limit
                .client_key(&http::HeaderMap::new(), Some(IpAddr::from([127, 0, 0, 1])))
                .unwrap(),
            ClientKey::Peer(IpAddr::from([127, 0, 0, 1]))
        );
    }
}
