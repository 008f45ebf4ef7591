//! Telemetry for every service: `tracing` spans exported as OpenTelemetry
//! traces over OTLP/gRPC (to `OTEL_EXPORTER_OTLP_ENDPOINT`; off when unset),
//! W3C trace-context propagation, and logs as JSON lines (`LOG_FORMAT=pretty`
//! for humans) that carry `trace_id`, `span_id` and the fields of the spans
//! they happen in — so the correlation id (`request_id`) set on a span appears
//! on every log line inside it. Level from `RUST_LOG` or `LOG_LEVEL`.
//!
//! Spans are recorded (and trace ids assigned) even without an exporter, so
//! trace context always propagates through gRPC and Kafka.

use std::collections::BTreeMap;
use std::fmt;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::{OpenTelemetrySpanExt, OtelData};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps telemetry alive; call [`TelemetryGuard::shutdown`] at exit to flush spans.
#[must_use = "spans are flushed by TelemetryGuard::shutdown"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes buffered spans to the collector and stops exporting.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = result {
                eprintln!("failed to flush traces: {error}");
            }
        }
    }
}

fn env_filter() -> EnvFilter {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .or_else(|| {
            std::env::var("LOG_LEVEL")
                .ok()
                .map(|level| level.to_lowercase())
        })
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn tracer_provider(service_name: &str) -> (SdkTracerProvider, bool) {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let Some(endpoint) = endpoint else {
        return (builder.build(), false);
    };
    match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
    {
        Ok(exporter) => {
            // The async-runtime batch processor exports on the service's own
            // Tokio runtime, which the tonic exporter needs.
            let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            (builder.with_span_processor(processor).build(), true)
        }
        Err(error) => {
            eprintln!(
                "failed to create the OTLP exporter for {endpoint}: {error}; traces are not exported"
            );
            (builder.build(), false)
        }
    }
}

/// Installs the global subscriber and propagator for a service. Call once,
/// inside the Tokio runtime. `OTEL_SERVICE_NAME` overrides `default_service_name`.
pub fn init(default_service_name: &'static str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| default_service_name.to_owned());
    let (provider, exporting) = tracer_provider(&service_name);
    let tracer = provider.tracer(service_name.clone());
    opentelemetry::global::set_tracer_provider(provider.clone());

    // One global filter (LOG_LEVEL / RUST_LOG) for spans and logs alike:
    // per-layer filters were seen to drop spans now and then under concurrency.
    let otel_layer = tracing_opentelemetry::layer().with_tracer(tracer);
    let pretty =
        std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("pretty"));
    let log_layer = if pretty {
        tracing_subscriber::fmt::layer().boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLogFormat {
                service: service_name.clone(),
            })
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(env_filter())
        .with(otel_layer)
        .with(log_layer)
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(
            service = service_name,
            otlp_export = exporting,
            "telemetry initialised"
        );
    }
    TelemetryGuard {
        provider: Some(provider),
    }
}

/// Installs a subscriber for tests: spans get OpenTelemetry contexts (so trace
/// context propagates as in production, without exporting), logs are silent
/// unless `TEST_LOG` is set.
pub fn init_for_tests() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let log_layer =
        std::env::var_os("TEST_LOG").map(|_| tracing_subscriber::fmt::layer().with_test_writer());
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(otel_layer)
        .with(log_layer)
        .try_init();
}

/// One JSON object per line: timestamp, level, target, service, message, the
/// event's fields, the fields of every span in scope (outermost first, inner
/// spans win), and the current span's `trace_id` / `span_id`.
struct JsonLogFormat {
    service: String,
}

impl<S, N> FormatEvent<S, N> for JsonLogFormat
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.insert("service".into(), self.service.clone().into());
        if let Some(scope) = context.event_scope() {
            let mut innermost_ids = None;
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(serde_json::Value::Object(map)) =
                        serde_json::from_str::<serde_json::Value>(fields)
                {
                    line.extend(map);
                }
                if let Some(otel) = extensions.get::<OtelData>()
                    && let (Some(trace_id), Some(span_id)) = (otel.trace_id(), otel.span_id())
                {
                    innermost_ids = Some((trace_id, span_id));
                }
            }
            if let Some((trace_id, span_id)) = innermost_ids {
                line.insert("trace_id".into(), trace_id.to_string().into());
                line.insert("span_id".into(), span_id.to_string().into());
            }
        }
        let mut visitor = JsonVisitor(&mut line);
        event.record(&mut visitor);
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Longest request id recorded on a span or a log line.
pub const MAX_LOGGED_REQUEST_ID_LEN: usize = 128;

/// A request id as it may be recorded on a span or a log line: 1 to
/// [`MAX_LOGGED_REQUEST_ID_LEN`] printable ASCII characters without spaces, or
/// nothing. Whatever a caller or a record sends, only a value that passes
/// this reaches a span, a log or a trace backend.
pub fn loggable_request_id(value: &str) -> Option<&str> {
    (!value.is_empty()
        && value.len() <= MAX_LOGGED_REQUEST_ID_LEN
        && value.bytes().all(|byte| byte.is_ascii_graphic()))
    .then_some(value)
}

/// The W3C trace context (`traceparent`, `tracestate`) of `span`.
pub fn inject_span(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut MapInjector(&mut carrier));
    carrier
}

/// The trace context carried in headers (empty context when there is none).
pub fn extract(headers: &BTreeMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&MapExtractor(headers))
}

/// Makes `span` a child of the trace context in `headers` (if any) and links it to it.
pub fn continue_trace(span: &tracing::Span, headers: &BTreeMap<String, String>, link: bool) {
    use opentelemetry::trace::TraceContextExt;
    let parent = extract(headers);
    let parent_span = parent.span().span_context().clone();
    if parent_span.is_valid() {
        let _ = span.set_parent(parent);
        if link {
            span.add_link(parent_span);
        }
    }
}

/// The trace id of `span` as 32 hex characters, if it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bounded_printable_request_id_is_recorded() {
        assert_eq!(loggable_request_id("req-42"), Some("req-42"));
        assert_eq!(
            loggable_request_id(&"a".repeat(128)).map(str::len),
            Some(128)
        );
        assert_eq!(loggable_request_id(&"a".repeat(129)), None, "too long");
        assert_eq!(loggable_request_id(""), None);
        assert_eq!(loggable_request_id("two words"), None);
        assert_eq!(
            loggable_request_id("line\nbreak"),
            None,
            "a forged log line"
        );
        assert_eq!(
            loggable_request_id("\u{1b}[31mred"),
            None,
            "a terminal escape"
        );
        assert_eq!(loggable_request_id("café"), None);
    }
}
