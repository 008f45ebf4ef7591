//! A tower layer that gives every OrderService call a SERVER span following the
//! OpenTelemetry RPC conventions (`rpc.system=grpc`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), continuing the caller's trace when
//! the request carries `traceparent`, and returning the trace id in the
//! `x-trace-id` response metadata so a caller can jump to Jaeger.
//! Reflection and health calls are not traced. Every call is counted in
//! `foodorder_grpc_server_requests_total{method,code}` and timed in
//! `foodorder_grpc_server_request_duration_seconds{method}` (to the response
//! headers: for WatchOrder, the time to open the stream). It also checks each
//! OrderService call's correlation id once, for every handler (see
//! [`crate::request_context`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use foodorder_contract::events::{HEADER_TRACEPARENT, HEADER_TRACESTATE};
use foodorder_runtime::metrics::{LatencyFamily, Metrics};
use foodorder_runtime::telemetry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{Layer, Service};
use tracing::Instrument;

/// Response metadata with the trace id.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The methods counted under their own name; any other path counts as `other`,
/// so that a caller cannot grow the label set.
const METHODS: [&str; 4] = ["PlaceOrder", "GetOrder", "ListMenuItems", "WatchOrder"];
const SERVICE: &str = "foodorder.v1.OrderService";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// The server's request metrics.
#[derive(Clone)]
pub struct GrpcMetrics {
    requests: Family<MethodCode, Counter>,
    duration: LatencyFamily<MethodLabel>,
}

impl GrpcMetrics {
    /// Registers the gRPC server families in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let grpc = Self {
            requests: metrics.counter_family(
                "foodorder_grpc_server_requests",
                "gRPC calls handled, by method and status code",
            ),
            duration: metrics.latency_family(
                "foodorder_grpc_server_request_duration_seconds",
                "Time from a gRPC call's arrival to its response headers, by method",
            ),
        };
        // The order service's methods are exported from the start, at 0.
        for method in METHODS {
            drop(
                grpc.requests
                    .get_or_create(&MethodCode { method, code: "OK" }),
            );
            drop(grpc.duration.get_or_create(&MethodLabel { method }));
        }
        grpc
    }
}

/// Adds the SERVER span and counts the call.
#[derive(Clone)]
pub struct GrpcTelemetryLayer {
    metrics: GrpcMetrics,
}

impl GrpcTelemetryLayer {
    /// A layer reporting into `metrics`.
    pub fn new(metrics: GrpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service wrapper made by [`GrpcTelemetryLayer`].
#[derive(Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
    metrics: GrpcMetrics,
}

/// The `method` label of a request path (`/package.Service/Method`).
fn method_label(path: &str) -> &'static str {
    match path.split_once('/') {
        Some((SERVICE, method)) => METHODS
            .into_iter()
            .find(|known| *known == method)
            .unwrap_or("other"),
        Some(("grpc.health.v1.Health", _)) => "health",
        Some((service, _)) if service.starts_with("grpc.reflection.") => "reflection",
        _ => "other",
    }
}

/// The canonical name of a gRPC status code.
fn code_label(code: i64) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The status code of a response: `grpc-status` in the headers (errors come
/// as trailers-only responses); absent means OK (it follows in the trailers).
fn status_code<B>(response: &http::Response<B>) -> i64 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(0)
}

fn header(request: &http::request::Parts, name: &str) -> Option<String> {
    request.headers.get(name)?.to_str().ok().map(str::to_owned)
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for GrpcTelemetry<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Send
        + 'static,
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

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // Taken synchronously inside tonic's deadline layer, just as its timer starts.
        request
            .extensions_mut()
            .insert(crate::deadline::CallArrival::now());
        let path = request.uri().path().trim_start_matches('/').to_owned();
        let call = CallRecord {
            metrics: self.metrics.clone(),
            method: method_label(&path),
            started: std::time::Instant::now(),
            deadline: request
                .headers()
                .get("grpc-timeout")
                .and_then(|value| crate::deadline::parse_grpc_timeout(value.to_str().ok()?)),
            recorded: false,
        };
        if path.starts_with("grpc.") {
            let future = self.inner.call(request);
            return Box::pin(async move {
                let mut call = call;
                let response = future.await?;
                call.finish(status_code(&response));
                Ok(response)
            });
        }
        let (mut parts, body) = request.into_parts();
        let (service, _) = path.split_once('/').unwrap_or((path.as_str(), ""));
        // Only the order service's calls: another path gets its own status (UNIMPLEMENTED).
        let checked = if service == SERVICE {
            crate::request_context::correlation_id(&parts.headers).map(Some)
        } else {
            Ok(None)
        };
        // Span names and attributes come from the matched method, never the
        // raw path; the request id only once it passed its check.
        let known = method_label(&path);
        let (rpc_service, otel_name) = if service == SERVICE && known != "other" {
            (SERVICE, format!("{SERVICE}/{known}"))
        } else {
            ("unknown", "grpc unknown method".to_owned())
        };
        let request_id = match &checked {
            Ok(Some(id)) => telemetry::loggable_request_id(&id.0).map(str::to_owned),
            _ => None,
        };
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = otel_name.as_str(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = rpc_service,
            rpc.method = known,
            rpc.grpc.status_code = tracing::field::Empty,
            request_id = request_id.as_deref(),
        );
        let carrier: BTreeMap<String, String> = [HEADER_TRACEPARENT, HEADER_TRACESTATE]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), header(&parts, name)?)))
            .collect();
        telemetry::continue_trace(&span, &carrier, false);
        let trace_id = telemetry::trace_id(&span);
        let future: Self::Future = match checked {
            Ok(correlation_id) => {
                if let Some(correlation_id) = correlation_id {
                    parts.extensions.insert(correlation_id);
                }
                let _entered = span.enter();
                Box::pin(
                    self.inner
                        .call(http::Request::from_parts(parts, body))
                        .instrument(span.clone()),
                )
            }
            Err(error) => {
                let refused = tonic::Status::from(error).into_http::<ResponseBody>();
                Box::pin(std::future::ready(Ok(refused)))
            }
        };
        Box::pin(async move {
            let mut call = call;
            let mut response = future.await?;
            let status = status_code(&response);
            call.finish(status);
            span.record("rpc.grpc.status_code", status);
            if status != 0 {
                span.record("otel.status_code", "ERROR");
            }
            if let Some(trace_id) = trace_id
                && let Ok(value) = http::HeaderValue::from_str(&trace_id)
            {
                response.headers_mut().insert(TRACE_ID_HEADER, value);
            }
            Ok(response)
        })
    }
}

/// One call's metrics, recorded exactly once: with the response's status, or
/// — when the call's future is dropped first (tonic's deadline layer or a
/// client reset cancels it outside this layer) — as DEADLINE_EXCEEDED if the
/// caller's `grpc-timeout` has passed, CANCELLED otherwise.
struct CallRecord {
    metrics: GrpcMetrics,
    method: &'static str,
    started: std::time::Instant,
    deadline: Option<std::time::Duration>,
    recorded: bool,
}

impl CallRecord {
    fn finish(&mut self, status: i64) {
        if !self.recorded {
            self.recorded = true;
            self.metrics.observe(self.method, status, self.started);
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let expired = self
            .deadline
            .is_some_and(|deadline| self.started.elapsed() >= deadline);
        // 4 DEADLINE_EXCEEDED, 1 CANCELLED.
        self.finish(if expired { 4 } else { 1 });
    }
}

impl GrpcMetrics {
    fn observe(&self, method: &'static str, status: i64, started: std::time::Instant) {
        self.requests
            .get_or_create(&MethodCode {
                method,
                code: code_label(status),
            })
            .inc();
        self.duration
            .get_or_create(&MethodLabel { method })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("foodorder.v1.OrderService/PlaceOrder"),
            "PlaceOrder"
        );
        assert_eq!(method_label("foodorder.v1.OrderService/Nope"), "other");
        assert_eq!(method_label("grpc.health.v1.Health/Check"), "health");
        assert_eq!(
            method_label("grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "reflection"
        );
        assert_eq!(method_label("x".repeat(5000).as_str()), "other");
        assert_eq!(code_label(3), "INVALID_ARGUMENT");
        assert_eq!(code_label(99), "UNKNOWN");
    }
}
