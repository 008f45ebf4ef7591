//! One order's trace, read back from Jaeger's own HTTP query API: the three
//! real services export OTLP to a private Jaeger (the binary and configuration
//! `build-support/run` uses), and the trace the PlaceOrder response names in
//! `x-trace-id` holds spans from all three services, with each Kafka hop a
//! PRODUCER span whose CONSUMER span is its child and links to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::Platform;
use foodorder_contract::v1::{OrderItemInput, PlaceOrderRequest};
use foodorder_testkit::{self as testing, PrivateJaeger};
use serde_json::Value;

/// One span as Jaeger's API v3 returns it (OTLP JSON), with its service.
#[derive(Debug)]
struct JaegerSpan {
    service: String,
    name: String,
    kind: String,
    span_id: String,
    parent_span_id: String,
    links: Vec<String>,
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn jaeger_shows_one_order_across_three_services_and_every_kafka_hop() {
    let (pool, _database) = foodorder_testkit::database(crate::support::SCHEMAS).await;
    let binary = PrivateJaeger::binary().unwrap_or_else(|reason| panic!("{reason}"));
    let jaeger = PrivateJaeger::start(&binary).await;
    let platform = Platform::start(
        &pool,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_endpoint())],
        &[
            ("PAYMENT_MIN_LATENCY", "0".into()),
            ("PAYMENT_MAX_LATENCY", "0".into()),
            ("PAYMENT_DECLINE_RATE", "0".into()),
        ],
    );
    let mut client = platform.client().await;
    let response = client
        .place_order(PlaceOrderRequest {
            customer_name: "Grace Hopper".into(),
            customer_email: "grace@example.com".into(),
            items: vec![OrderItemInput {
                menu_item_id: 2,
                quantity: 1,
            }],
            idempotency_key: String::new(),
        })
        .await
        .expect("place order");
    let trace_id = response
        .metadata()
        .get("x-trace-id")
        .expect("the response names its trace")
        .to_str()
        .unwrap()
        .to_owned();

    let path = format!("/api/v3/traces/{trace_id}");
    let spans = testing::wait_for(
        "Jaeger to hold the order's spans from all three services, the three hops with their parents",
        Duration::from_secs(60),
        || async {
            let spans = spans_of(&jaeger.get(&path).await?);
            let consumers = spans.iter().filter(|span| span.kind == "CONSUMER").count();
            let services: BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
            // Each service exports in batches of its own: wait until every
            // CONSUMER span's parent has arrived too.
            let parents_arrived =
                spans
                    .iter()
                    .filter(|span| span.kind == "CONSUMER")
                    .all(|consumer| {
                        spans
                            .iter()
                            .any(|span| span.span_id == consumer.parent_span_id)
                    });
            (services.len() == 3
                && consumers == 3
                && parents_arrived
                && spans.iter().any(|span| span.name == "notification send"))
            .then_some(spans)
        },
    )
    .await;

    let services: BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["notification-service", "order-api", "payment-service"]),
        "{spans:#?}"
    );
    let by_id: BTreeMap<&str, &JaegerSpan> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let mut hops = Vec::new();
    for consumer in spans.iter().filter(|span| span.kind == "CONSUMER") {
        let producer = by_id
            .get(consumer.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("{} has no parent in the trace: {spans:#?}", consumer.name));
        assert_eq!(
            producer.kind, "PRODUCER",
            "{} follows a PRODUCER span",
            consumer.name
        );
        assert!(
            consumer.links.contains(&producer.span_id),
            "{} links to {}",
            consumer.name,
            producer.name
        );
        hops.push(format!(
            "{} ({}) -> {} ({})",
            producer.name, producer.service, consumer.name, consumer.service
        ));
    }
    hops.sort();
    assert_eq!(hops.len(), 3, "three Kafka hops: {hops:?}");
    assert!(
        hops[0].contains("order.placed publish (order-api)")
            && hops[0].contains("order.placed process (payment-service)"),
        "{hops:?}"
    );
    assert!(
        hops[1].contains("payment.completed publish (payment-service)")
            && hops[1].contains("payment.completed process (notification-service)"),
        "{hops:?}"
    );
    assert!(
        hops[2].contains("payment.completed publish (payment-service)")
            && hops[2].contains("payment.completed process (order-api)"),
        "{hops:?}"
    );
    eprintln!(
        "Jaeger trace {trace_id}: {} spans from {services:?}; hops: {hops:?}",
        spans.len()
    );
    let log_dir = platform.log_dir.clone();
    platform.terminate();
    Platform::remove_logs(&log_dir);
}

/// The spans of an API v3 answer (`{"result": {"resourceSpans": [...]}}`).
fn spans_of(answer: &Value) -> Vec<JaegerSpan> {
    let mut spans = Vec::new();
    let resource_spans = answer["result"]["resourceSpans"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for resource in resource_spans {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|attribute| attribute["key"] == "service.name")
            .and_then(|attribute| attribute["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(JaegerSpan {
                    service: service.clone(),
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    kind: kind_name(&span["kind"]),
                    span_id: span["spanId"].as_str().unwrap_or_default().to_owned(),
                    parent_span_id: span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|link| link["spanId"].as_str().map(str::to_owned))
                        .collect(),
                });
            }
        }
    }
    spans
}

/// OTLP span kinds come as numbers (4, 5) or names (`SPAN_KIND_PRODUCER`).
fn kind_name(kind: &Value) -> String {
    match (kind.as_i64(), kind.as_str()) {
        (Some(2), _) => "SERVER".into(),
        (Some(3), _) => "CLIENT".into(),
        (Some(4), _) => "PRODUCER".into(),
        (Some(5), _) => "CONSUMER".into(),
        (Some(_), _) => "INTERNAL".into(),
        (None, Some(name)) => name.trim_start_matches("SPAN_KIND_").to_owned(),
        (None, None) => "UNSPECIFIED".into(),
    }
}
