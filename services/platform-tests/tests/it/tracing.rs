//! One trace per order: a test-local OTLP/gRPC collector receives the spans
//! of a full flow through the three real processes, and the test checks that
//! they form one trace rooted at the caller's `traceparent`, with the expected
//! span names, kinds, parent/child chain through both Kafka hops, semantic
//! convention attributes and the correlation id — also on every log line of
//! the order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::Platform;
use foodorder_contract::v1::{OrderItemInput, PlaceOrderRequest};
use foodorder_testkit as testing;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const REQUEST_ID: &str = "trace-test-request-1";

/// Every span received, with the service that sent it.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| string_value(attribute.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                spans.extend(
                    scope_spans
                        .spans
                        .into_iter()
                        .map(|span| (service.clone(), span)),
                );
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string_value(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        Value::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| string_value(attribute.value.as_ref()?.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn kind_name(span: &Span) -> &'static str {
    match SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
        SpanKind::Internal => "INTERNAL",
        SpanKind::Unspecified => "UNSPECIFIED",
    }
}

/// The span tree as indented lines, for the assertion messages and the logs.
fn render_tree(spans: &[(String, Span)]) -> String {
    fn walk(spans: &[(String, Span)], parent: &[u8], depth: usize, out: &mut String) {
        let mut children: Vec<&(String, Span)> = spans
            .iter()
            .filter(|(_, span)| span.parent_span_id == parent)
            .collect();
        children.sort_by_key(|(_, span)| span.start_time_unix_nano);
        for (service, span) in children {
            out.push_str(&format!(
                "{}{} [{}] {}\n",
                "  ".repeat(depth),
                span.name,
                kind_name(span),
                service
            ));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let mut out = String::new();
    let ids: Vec<Vec<u8>> = spans.iter().map(|(_, span)| span.span_id.clone()).collect();
    let mut roots: Vec<Vec<u8>> = spans
        .iter()
        .filter(|(_, span)| !ids.contains(&span.parent_span_id))
        .map(|(_, span)| span.parent_span_id.clone())
        .collect();
    roots.dedup();
    for root in roots {
        out.push_str(&format!("(parent {})\n", hex(&root)));
        walk(spans, &root, 1, &mut out);
    }
    out
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn one_trace_from_the_api_call_to_the_notification() {
    let (pool, _database) = foodorder_testkit::database(crate::support::SCHEMAS).await;
    // The collector gets its own runtime thread: the test thread blocks while
    // it waits for the services to exit, and they flush their spans meanwhile.
    let collector = Collector::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let server_collector = collector.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(server_collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        })
    });

    let platform = Platform::start(
        &pool,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector_addr}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ],
        &[
            ("PAYMENT_MIN_LATENCY", "0.01".into()),
            ("PAYMENT_MAX_LATENCY", "0.05".into()),
            ("PAYMENT_DECLINE_RATE", "0".into()),
        ],
    );
    let prefix = platform.prefix.clone();
    let log_dir = platform.log_dir.clone();
    let mut client = platform.client().await;
    let mut request = tonic::Request::new(PlaceOrderRequest {
        customer_name: "Trace Tester".into(),
        customer_email: "trace@example.com".into(),
        items: vec![OrderItemInput {
            menu_item_id: 3,
            quantity: 1,
        }],
        idempotency_key: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    request
        .metadata_mut()
        .insert("x-request-id", REQUEST_ID.parse().unwrap());
    let response = client.place_order(request).await.expect("place order");
    assert_eq!(
        response.metadata().get("x-trace-id").unwrap(),
        TRACE_ID,
        "the response names the trace"
    );
    let order_id = response.into_inner().order.unwrap().id;

    testing::wait_for("the notification", Duration::from_secs(60), || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications.notifications")
            .fetch_one(&pool)
            .await
            .unwrap();
        (count == 1).then_some(())
    })
    .await;
    // SIGTERM flushes every service's spans.
    let log_paths = platform.terminate();

    let spans: Vec<(String, Span)> = collector.0.lock().unwrap().clone();
    let order_spans: Vec<(String, Span)> = spans
        .iter()
        .filter(|(_, span)| hex(&span.trace_id) == TRACE_ID)
        .cloned()
        .collect();
    let tree = render_tree(&order_spans);
    println!("span tree of order {order_id}:\n{tree}");
    if std::env::var_os("TRACE_TEST_DEBUG").is_some() {
        for (service, span) in &spans {
            println!(
                "{service} {} {} trace={} parent={}",
                span.name,
                kind_name(span),
                hex(&span.trace_id),
                hex(&span.parent_span_id)
            );
        }
    }

    // Every span that is about this order belongs to the one trace.
    for (service, span) in &spans {
        let about_order = attribute(span, "order_id").as_deref() == Some(order_id.as_str())
            || attribute(span, "messaging.kafka.message.key").as_deref() == Some(order_id.as_str());
        assert!(
            !about_order || hex(&span.trace_id) == TRACE_ID,
            "{service} span {} is in another trace",
            span.name
        );
    }

    let find = |service: &str, name: &str, kind: &str| -> &Span {
        order_spans
            .iter()
            .find(|(span_service, span)| {
                span_service == service && span.name == name && kind_name(span) == kind
            })
            .map(|(_, span)| span)
            .unwrap_or_else(|| {
                panic!("no {kind} span {name:?} from {service} in the trace:\n{tree}")
            })
    };
    let order_placed = format!("{prefix}order.placed");
    let payment_completed = format!("{prefix}payment.completed");
    let server = find(
        "order-api",
        "foodorder.v1.OrderService/PlaceOrder",
        "SERVER",
    );
    let handler = find("order-api", "PlaceOrder", "INTERNAL");
    let publish_placed = find("order-api", &format!("{order_placed} publish"), "PRODUCER");
    let process_placed = find(
        "payment-service",
        &format!("{order_placed} process"),
        "CONSUMER",
    );
    let attempt = find("payment-service", "payment gateway attempt", "INTERNAL");
    let record = find("payment-service", "payment.record transaction", "INTERNAL");
    let publish_completed = find(
        "payment-service",
        &format!("{payment_completed} publish"),
        "PRODUCER",
    );
    let process_completed = find(
        "notification-service",
        &format!("{payment_completed} process"),
        "CONSUMER",
    );
    let send = find("notification-service", "notification send", "INTERNAL");

    let chain = [
        (
            server,
            CALLER_SPAN_ID.to_owned(),
            "the caller's span is the root",
        ),
        (
            handler,
            hex(&server.span_id),
            "handler under the server span",
        ),
        (
            publish_placed,
            hex(&handler.span_id),
            "order.placed publish under the handler",
        ),
        (
            process_placed,
            hex(&publish_placed.span_id),
            "order.placed process under its publish",
        ),
        (
            attempt,
            hex(&process_placed.span_id),
            "gateway attempt under order.placed process",
        ),
        (
            record,
            hex(&process_placed.span_id),
            "db transaction under order.placed process",
        ),
        (
            publish_completed,
            hex(&record.span_id),
            "payment.completed publish under the db transaction",
        ),
        (
            process_completed,
            hex(&publish_completed.span_id),
            "payment.completed process under its publish",
        ),
        (
            send,
            hex(&process_completed.span_id),
            "notification send under payment.completed process",
        ),
    ];
    for (span, parent, what) in chain {
        assert_eq!(
            hex(&span.parent_span_id),
            parent,
            "{what}: {}\n{tree}",
            span.name
        );
    }
    for (consumer, producer) in [
        (process_placed, publish_placed),
        (process_completed, publish_completed),
    ] {
        assert!(
            consumer
                .links
                .iter()
                .any(|link| link.span_id == producer.span_id && hex(&link.trace_id) == TRACE_ID),
            "{} links to {}",
            consumer.name,
            producer.name
        );
    }

    let expect = |span: &Span, key: &str, value: &str| {
        assert_eq!(
            attribute(span, key).as_deref(),
            Some(value),
            "{} attribute {key}",
            span.name
        );
    };
    expect(server, "rpc.system", "grpc");
    expect(server, "rpc.service", "foodorder.v1.OrderService");
    expect(server, "rpc.method", "PlaceOrder");
    expect(server, "rpc.grpc.status_code", "0");
    for (span, topic) in [
        (publish_placed, &order_placed),
        (process_placed, &order_placed),
        (publish_completed, &payment_completed),
        (process_completed, &payment_completed),
    ] {
        expect(span, "messaging.system", "kafka");
        expect(span, "messaging.destination.name", topic);
        expect(span, "messaging.kafka.message.key", &order_id);
        expect(span, "request_id", REQUEST_ID);
        assert!(
            attribute(span, "messaging.kafka.destination.partition").is_some(),
            "{} has a partition",
            span.name
        );
        assert!(
            attribute(span, "messaging.kafka.message.offset").is_some(),
            "{} has an offset",
            span.name
        );
    }
    expect(server, "request_id", REQUEST_ID);
    expect(attempt, "payment.attempt", "1");
    expect(attempt, "payment.outcome", "approved");
    assert!(attribute(attempt, "payment.latency_ms").is_some());

    // Every log line about the order carries the correlation id and the trace id.
    let mut lines_seen: HashMap<&str, usize> = HashMap::new();
    for (service, path) in &log_paths {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if json["order_id"].as_str() != Some(order_id.as_str()) {
                continue;
            }
            *lines_seen.entry(service).or_default() += 1;
            assert_eq!(
                json["request_id"], REQUEST_ID,
                "{service} log line without the correlation id: {line}"
            );
            assert_eq!(
                json["trace_id"], TRACE_ID,
                "{service} log line without the trace id: {line}"
            );
            assert!(
                json["span_id"].as_str().is_some_and(|id| id.len() == 16),
                "{service}: {line}"
            );
        }
    }
    for service in ["order-api", "payment-service", "notification-service"] {
        assert!(
            lines_seen.get(service).copied().unwrap_or(0) > 0,
            "{service} logged nothing about the order: {lines_seen:?}"
        );
    }
    Platform::remove_logs(&log_dir);
}
