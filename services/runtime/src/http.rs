//! Each service's HTTP endpoint (order-api 9101, payment 9102, notification
//! 9103), an axum router behind tower limits:
//!
//! * `GET /healthz` (liveness): 200 while the process serves, whatever its
//!   dependencies do; the body is a detail page: readiness, then every
//!   condition, those that only inform included (the broker, the outbox);
//! * `GET /readyz` (readiness): 200 while [`Readiness`] is met, 503 otherwise
//!   with the unmet conditions on the first line; then every gating condition.
//!
//! Both are read from the conditions as the probes last left them: neither
//! ever waits on a dependency.
//! * `GET /metrics`: the service's metrics, OpenMetrics for clients that ask
//!   for it (Prometheus does), the classic text format for the others.
//! * `POST /drain`: the service is about to be stopped (a Kubernetes `preStop`
//!   hook calls it): `/readyz` answers 503 `draining` from then on and the
//!   order API's gRPC health says NOT_SERVING, so that new work goes to other
//!   instances, while everything keeps working until SIGTERM stops the intake.
//!   Only a client on the same host (loopback) may ask: anyone else who can
//!   reach the port (a scraper) gets 403.
//! * a service's own routes ([`ServiceRoutes`], added with
//!   `ServiceHost::routes`), served after the built-in ones and behind the
//!   same limits; a route that only the same host may call takes
//!   [`SameHost`], as `/drain` does.
//!
//! Every request is bounded in time and size, only so many are served at
//! once, and connections are bounded in number and lifetime (a client that
//! holds one open, or sends its request a byte at a time, loses it), so slow
//! or hostile clients cannot pile up.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::health::{ConditionReport, Readiness, Role, seconds};
use crate::metrics::{CONTENT_TYPE, Metrics, TEXT_CONTENT_TYPE};

/// Requests served at once, over every route; more wait for a slot.
const MAX_CONCURRENT_REQUESTS: usize = 64;
/// The largest request body accepted (the routes take none).
const MAX_BODY_BYTES: usize = 8 * 1024;
/// The longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// The longest a connection may stay open (scrapers simply connect again).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// How long open requests may finish after shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Endpoint {
    readiness: Readiness,
    metrics: Metrics,
    routes: ServiceRoutes,
}

/// A service's own routes on its endpoint, which may be added while it
/// already serves (the endpoint starts before the service is built). Clones
/// share them.
#[derive(Clone, Default)]
pub struct ServiceRoutes(Arc<RwLock<Option<Router>>>);

impl ServiceRoutes {
    /// Adds `routes` to those served (axum's rules for merging apply: a path
    /// served twice panics).
    pub fn add(&self, routes: Router) {
        let mut served = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *served = Some(match served.take() {
            Some(earlier) => earlier.merge(routes),
            None => routes,
        });
    }

    fn current(&self) -> Option<Router> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The endpoint's routes and limits.
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    router_with(readiness, metrics, ServiceRoutes::default())
}

/// The endpoint's routes and limits, with the service's own `routes` after the built-in ones.
pub fn router_with(readiness: Readiness, metrics: Metrics, routes: ServiceRoutes) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .route("/drain", post(drain))
        .fallback(service_route)
        .with_state(Endpoint {
            readiness,
            metrics,
            routes,
        })
        .layer(
            ServiceBuilder::new()
                .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    REQUEST_TIMEOUT,
                ))
                .layer(GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS)),
        )
}

/// The service's own routes; `not found` when none matches.
async fn service_route(State(endpoint): State<Endpoint>, request: Request) -> Response {
    match endpoint.routes.current() {
        Some(routes) => match routes.fallback(not_found).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => not_found().await.into_response(),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// An extractor that admits a request from the same host (loopback) only and
/// answers anyone else 403: what `/drain` and a service's control routes
/// take (a scraper that can reach the port must not change anything).
#[derive(Clone, Copy, Debug)]
pub struct SameHost;

impl<S: Send + Sync> FromRequestParts<S> for SameHost {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:127.0.0.1.
        let same_host = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .is_some_and(|ConnectInfo(Peer(peer))| peer.ip().to_canonical().is_loopback());
        if same_host {
            Ok(Self)
        } else {
            Err((
                StatusCode::FORBIDDEN,
                format!("{} is accepted from the same host only\n", parts.uri.path()),
            )
                .into_response())
        }
    }
}

/// Marks the service as about to stop (see the module docs); loopback only.
async fn drain(State(endpoint): State<Endpoint>, _: SameHost) -> Response {
    endpoint.readiness.set_draining();
    tracing::info!("draining: not ready from now on; intake stops at SIGTERM");
    (StatusCode::OK, "draining\n").into_response()
}

/// `ready`, or `not ready: <why>; <why>`, then a line per gating condition.
async fn ready(State(endpoint): State<Endpoint>) -> Response {
    let unmet = endpoint.readiness.unmet();
    let mut body = readiness_line(&unmet);
    for condition in endpoint.readiness.report() {
        if condition.role == Role::Gates {
            body.push_str(&condition_line(&condition));
        }
    }
    let status = if unmet.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Always 200: `alive`, the readiness line, then a line per condition.
async fn health(State(endpoint): State<Endpoint>) -> String {
    let mut body = format!("alive\n{}", readiness_line(&endpoint.readiness.unmet()));
    for condition in endpoint.readiness.report() {
        body.push_str(&condition_line(&condition));
    }
    body
}

fn readiness_line(unmet: &[String]) -> String {
    if unmet.is_empty() {
        "ready\n".to_owned()
    } else {
        format!("not ready: {}\n", unmet.join("; "))
    }
}

/// `database: met for 12.0 s, checked 0.3 s ago: write probe answered in 2 ms`.
fn condition_line(condition: &ConditionReport) -> String {
    format!(
        "{}: {} for {}, checked {} ago{}: {}\n",
        condition.name,
        if condition.met { "met" } else { "UNMET" },
        seconds(condition.for_),
        seconds(condition.checked_ago),
        match condition.role {
            Role::Gates => "",
            Role::Informs => " (does not gate readiness)",
        },
        condition.detail
    )
}

async fn scrape(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            endpoint.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            endpoint.metrics.encode_text(),
        )
            .into_response()
    }
}

/// Binds `address` for the endpoint (early, so a busy port fails the start).
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to bind the http endpoint (health, metrics) on {address}"))
}

/// Serves the endpoint on `listener` until `shutdown` (open requests get
/// [`SHUTDOWN_DRAIN`] to finish).
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(
        listener,
        readiness,
        metrics,
        ServiceRoutes::default(),
        shutdown,
    )
    .await
}

/// [`serve`], with the service's own `routes` (which may be added later).
pub async fn serve_with(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    routes: ServiceRoutes,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = BoundedListener {
        inner: listener,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let server = axum::serve(
        listener,
        router_with(readiness, metrics, routes).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served,
        () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_DRAIN).await } => Ok(()),
    }
}

/// The address a request came from (what [`SameHost`] checks); tests of a
/// service's routes insert it as `ConnectInfo(Peer(address))`.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, BoundedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, BoundedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A listener that holds one of [`MAX_CONNECTIONS`] slots per open connection.
struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the connection slots are never closed");
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        let connection = BoundedConnection {
            stream,
            expires: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
            _slot: slot,
        };
        (connection, address)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its slot back when closed and fails its reads and
/// writes once [`CONNECTION_LIFETIME`] has passed, which closes it.
struct BoundedConnection {
    stream: TcpStream,
    expires: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl BoundedConnection {
    fn expired(&mut self, context: &mut Context<'_>) -> bool {
        self.expires.as_mut().poll(context).is_ready()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection lifetime over")
}

impl AsyncRead for BoundedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(context) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for BoundedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(context) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_write(context, data)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(
        router: &Router,
        method: &str,
        path: &str,
        accept: &str,
    ) -> (u16, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_request_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::time::pause();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Readiness::new(),
            Metrics::new(),
            shutdown.clone(),
        ));
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /healthz HT").await.unwrap();
        tokio::time::advance(CONNECTION_LIFETIME + Duration::from_secs(1)).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "the server closed the half-sent request"
        );
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn routes_answer_with_the_right_status_and_format() {
        let readiness = Readiness::new();
        let metrics = Metrics::new();
        readiness.register(&metrics);
        let database = readiness.gate("database", "not checked yet");
        let broker = readiness.inform("kafka", "not checked yet");
        database.met("ping answered in 1 ms");
        broker.met("metadata answered in 2 ms, 1 broker listed");
        let router = router(readiness.clone(), metrics);
        assert_eq!(call(&router, "GET", "/healthz", "*/*").await.0, 200);
        let (status, _, body) = call(&router, "GET", "/readyz", "*/*").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("ready\ndatabase: met for "), "{body}");
        assert!(body.ends_with(": ping answered in 1 ms\n"), "{body}");
        assert!(!body.contains("kafka"), "only gating conditions: {body}");
        let (status, content_type, text) = call(&router, "GET", "/metrics?x=1", "*/*").await;
        assert_eq!(status, 200);
        assert!(text.contains("foodorder_ready 1"), "{text}");
        assert!(content_type.contains("version=0.0.4"), "{content_type}");
        let (_, content_type, openmetrics) = call(
            &router,
            "GET",
            "/metrics",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .await;
        assert!(content_type.contains("openmetrics"), "{content_type}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        broker.unmet("no metadata answer");
        assert_eq!(call(&router, "GET", "/readyz", "*/*").await.0, 200);
        let (status, _, body) = call(&router, "GET", "/healthz", "*/*").await;
        assert_eq!(status, 200, "alive, whatever its dependencies do");
        assert!(body.starts_with("alive\nready\n"), "{body}");
        assert!(
            body.contains("(does not gate readiness): no metadata answer\n"),
            "{body}"
        );
        database.unmet("ping timed out after 1.5 s");
        let (status, _, body) = call(&router, "GET", "/readyz", "*/*").await;
        assert_eq!(status, 503);
        assert!(
            body.starts_with(
                "not ready: database: ping timed out after 1.5 s\ndatabase: UNMET for "
            ),
            "{body}"
        );
        assert!(
            call(&router, "GET", "/metrics", "*/*")
                .await
                .2
                .contains("foodorder_ready 0")
        );
        assert_eq!(call(&router, "GET", "/nope", "*/*").await.0, 404);
        assert_eq!(call(&router, "POST", "/readyz", "*/*").await.0, 405);
    }

    async fn post_drain(router: &Router, peer: &str) -> (u16, String) {
        let mut request = Request::builder()
            .method("POST")
            .uri("/drain")
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(Peer(peer.parse::<SocketAddr>().unwrap())));
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn drain_from_the_same_host_only_turns_readiness_off() {
        let readiness = Readiness::new();
        let database = readiness.gate("database", "not checked yet");
        database.met("ping answered in 1 ms");
        let router = router(readiness.clone(), Metrics::new());
        assert_eq!(
            post_drain(&router, "10.1.2.3:40000").await.0,
            403,
            "another host may not drain the service"
        );
        assert_eq!(call(&router, "GET", "/readyz", "*/*").await.0, 200);
        assert_eq!(call(&router, "GET", "/drain", "*/*").await.0, 405);
        assert_eq!(
            post_drain(&router, "127.0.0.1:40000").await,
            (200, "draining\n".to_owned())
        );
        let (status, _, body) = call(&router, "GET", "/readyz", "*/*").await;
        assert_eq!(status, 503);
        assert!(
            body.starts_with("not ready: draining: about to stop\n"),
            "{body}"
        );
        assert!(!*readiness.changes().borrow(), "readiness followers see it");
        assert_eq!(
            call(&router, "GET", "/healthz", "*/*").await.0,
            200,
            "still alive"
        );
        assert_eq!(
            post_drain(&router, "[::1]:40000").await.0,
            200,
            "idempotent"
        );
        assert_eq!(
            post_drain(&router, "[::ffff:127.0.0.1]:40000").await.0,
            200,
            "IPv4 loopback through a dual-stack listener"
        );
        assert_eq!(post_drain(&router, "[::ffff:10.1.2.3]:40000").await.0, 403);
    }

    #[tokio::test]
    async fn a_service_adds_routes_while_serving_and_same_host_guards_them() {
        use axum::routing::put;
        let routes = ServiceRoutes::default();
        let router = router_with(Readiness::new(), Metrics::new(), routes.clone());
        assert_eq!(call(&router, "GET", "/knob", "*/*").await.0, 404);
        routes.add(
            Router::new()
                .route("/knob", get(|| async { "open\n" }))
                .route("/knob", put(|_: SameHost| async { "set\n" })),
        );
        let (status, _, body) = call(&router, "GET", "/knob", "*/*").await;
        assert_eq!((status, body.as_str()), (200, "open\n"));
        assert_eq!(
            call(&router, "GET", "/healthz", "*/*").await.0,
            200,
            "built-in routes first"
        );
        assert_eq!(call(&router, "GET", "/nope", "*/*").await.0, 404);
        assert_eq!(call(&router, "DELETE", "/knob", "*/*").await.0, 405);
        let put_from = |peer: &str| {
            let mut request = Request::builder()
                .method("PUT")
                .uri("/knob")
                .body(Body::empty())
                .unwrap();
            request
                .extensions_mut()
                .insert(ConnectInfo(Peer(peer.parse::<SocketAddr>().unwrap())));
            router.clone().oneshot(request)
        };
        assert_eq!(put_from("127.0.0.1:1").await.unwrap().status(), 200);
        let refused = put_from("192.0.2.1:1").await.unwrap();
        assert_eq!(refused.status(), 403);
        let body = axum::body::to_bytes(refused.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], b"/knob is accepted from the same host only\n");
        // Without the peer's address (not served through `serve`), nobody is the same host.
        assert_eq!(call(&router, "PUT", "/knob", "*/*").await.0, 403);
        routes.add(Router::new().route("/other", get(|| async { "other\n" })));
        assert_eq!(call(&router, "GET", "/other", "*/*").await.0, 200);
        assert_eq!(call(&router, "GET", "/knob", "*/*").await.0, 200, "merged");
    }

    #[tokio::test]
    async fn the_served_endpoint_accepts_drain_over_loopback() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            readiness.clone(),
            Metrics::new(),
            shutdown.clone(),
        ));
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(!readiness.is_ready());
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
