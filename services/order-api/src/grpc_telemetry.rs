//! A tower layer that gives every OrderService call a SERVER span following the
//! OpenTelemetry RPC conventions (`rpc.system=grpc`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), continuing the caller's trace when
//! the request carries `traceparent`, and returning the trace id in the
//! `x-trace-id` response metadata so a caller can jump to Jaeger.
//! Reflection and health calls are not traced.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use foodorder_common::events::{HEADER_REQUEST_ID, HEADER_TRACEPARENT, HEADER_TRACESTATE};
use foodorder_common::telemetry;
use tower::{Layer, Service};
use tracing::Instrument;

/// Response metadata with the trace id.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// Adds the SERVER span.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcTelemetryLayer;

impl<S> Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner }
    }
}

/// The service wrapper made by [`GrpcTelemetryLayer`].
#[derive(Clone, Debug)]
pub struct GrpcTelemetry<S> {
    inner: S,
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
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/').to_owned();
        if path.starts_with("grpc.") {
            return Box::pin(self.inner.call(request));
        }
        let (parts, body) = request.into_parts();
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = path.as_str(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            request_id = header(&parts, HEADER_REQUEST_ID),
        );
        let carrier: BTreeMap<String, String> = [HEADER_TRACEPARENT, HEADER_TRACESTATE]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), header(&parts, name)?)))
            .collect();
        telemetry::continue_trace(&span, &carrier, false);
        let trace_id = telemetry::trace_id(&span);
        let future = {
            let _entered = span.enter();
            self.inner.call(http::Request::from_parts(parts, body))
        }
        .instrument(span.clone());
        Box::pin(async move {
            let mut response = future.await?;
            // Errors come as trailers-only responses, with grpc-status in the headers.
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok()?.parse::<i64>().ok())
                .unwrap_or(0);
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
