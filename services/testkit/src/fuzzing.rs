//! Bodies of the `cargo fuzz` targets in `fuzz/` (run for a bounded time by
//! `build-support/fuzz`, nightly only), kept here so that the stable unit test
//! below runs the very same code over seeded random and mutated inputs.
//!
//! * [`event_decoding`]: a record value, decoded as every event type the
//!   consumers read, then put through the checks that can run without a
//!   database (the consumers' poison checks, money parsing, re-encoding).
//! * [`record_headers`]: a record's header list (see [`headers_from_bytes`]
//!   for how bytes become one) → [`record_headers::utf8_map`] → the W3C trace
//!   context, continued into a consumer span and forwarded as the services do.
//!
//! Neither may panic on any input; the assertions state properties that
//! every input must have.

use std::collections::{BTreeMap, HashMap};
use std::sync::Once;

use foodorder_contract::v1::{
    EventMetadata, OrderPlaced, OrderPlacedItem, OrderStatus, PaymentCompleted,
};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message;
use uuid::Uuid;

use foodorder_contract::events;
use foodorder_contract::money::{format_money, parse_money};
use foodorder_runtime::record_headers::{self, RawHeader};
use foodorder_runtime::telemetry;

/// Fuzz body: `data` as the value of a consumed record.
pub fn event_decoding(data: &[u8]) {
    if let Ok(event) = OrderPlaced::decode(data) {
        let _ = order_placed_verdict(Some(&event.order_id), data);
        assert!(
            order_placed_verdict(None, data).is_err(),
            "a keyless record is poison"
        );
        for amount in std::iter::once(&event.total_amount).chain(
            event
                .items
                .iter()
                .flat_map(|item| [&item.unit_price, &item.subtotal]),
        ) {
            money_round_trip(amount);
        }
        re_encodes(&event);
    }
    if let Ok(event) = PaymentCompleted::decode(data) {
        let _ = payment_completed_verdict(data);
        money_round_trip(&event.amount);
        re_encodes(&event);
    }
    if let Ok(metadata) = EventMetadata::decode(data) {
        re_encodes(&metadata);
    }
    if let Ok(item) = OrderPlacedItem::decode(data) {
        re_encodes(&item);
    }
    // A leading length varint, possibly huge: must be refused, not allocated.
    let _ = OrderPlaced::decode_length_delimited(data);
    let _ = PaymentCompleted::decode_length_delimited(data);
    // Merging into an existing event, as prost does for repeated fields.
    let mut merged = seed_order_placed();
    let _ = merged.merge(data);
    // A value that is not UTF-8 text is still a string in error messages.
    let _ = money_round_trip(&String::from_utf8_lossy(data));
}

/// payment-service's poison checks (`events::decode_order_placed`), for a
/// record keyed by `key`: what passes has a UUID order id equal to the key.
pub fn order_placed_verdict(key: Option<&str>, data: &[u8]) -> Result<Uuid, String> {
    let (order_id, event) = events::decode_order_placed(key.map(str::as_bytes), Some(data))?;
    assert_eq!(key, Some(event.order_id.as_str()));
    assert_eq!(Uuid::parse_str(&event.order_id).ok(), Some(order_id));
    Ok(order_id)
}

/// The consumers' poison checks (`events::decode_payment_completed`): what
/// passes has a UUID order id, an outcome consistent with its final status and
/// a valid amount.
pub fn payment_completed_verdict(data: &[u8]) -> Result<Uuid, String> {
    let (order_id, event) = events::decode_payment_completed(Some(data))?;
    assert_eq!(Uuid::parse_str(&event.order_id).ok(), Some(order_id));
    assert!(events::amount(&event.amount).is_ok());
    let expected = if event.success {
        OrderStatus::Completed
    } else {
        OrderStatus::Failed
    };
    assert_eq!(event.final_status(), expected);
    let text = serde_json::to_string(&serde_json::json!({
        "recipient": event.customer_email,
        "customer_name": event.customer_name,
        "amount": event.amount,
        "error_message": event.error_message,
    }))
    .map_err(|error| error.to_string())?;
    serde_json::from_str::<serde_json::Value>(&text).expect("a stored payload reads back");
    Ok(order_id)
}

/// A wire amount that parses formats to text that parses to the same amount.
fn money_round_trip(text: &str) -> Option<()> {
    let amount = parse_money(text)?;
    let formatted = format_money(amount);
    assert_eq!(
        parse_money(&formatted),
        Some(amount),
        "{text:?} parsed as {amount}, formatted as {formatted:?}"
    );
    Some(())
}

/// What prost decoded encodes to bytes that decode to the same message.
fn re_encodes<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = message.encode_to_vec();
    assert_eq!(bytes.len(), message.encoded_len());
    let again = M::decode(bytes.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(&again, message);
    let _ = format!("{message:?}");
}

/// Fuzz body: `data` as a record's header list (see [`headers_from_bytes`]).
pub fn record_headers(data: &[u8]) {
    record_header_list(&headers_from_bytes(data));
}

/// A header list from bytes: one header per `\n`-separated line, the name up
/// to the line's first NUL and the value after it; a line without NUL is a
/// header without value. Names can hold any byte but NUL (librdkafka keeps
/// them as C strings) and `\n`; values any byte but `\n`.
pub fn headers_from_bytes(data: &[u8]) -> Vec<RawHeader> {
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&byte| byte == b'\n')
        .map(|line| match line.iter().position(|&byte| byte == 0) {
            Some(nul) => (line[..nul].to_vec(), Some(line[nul + 1..].to_vec())),
            None => (line.to_vec(), None),
        })
        .collect()
}

/// The inverse of [`headers_from_bytes`] for headers it can express.
pub fn headers_to_bytes(headers: &[RawHeader]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, (name, value)) in headers.iter().enumerate() {
        if index > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(name);
        if let Some(value) = value {
            out.push(0);
            out.extend_from_slice(value);
        }
    }
    out
}

static TRACING: Once = Once::new();

/// Fuzz body: a consumed record's headers, as a consumer reads them.
pub fn record_header_list(headers: &[RawHeader]) {
    // Spans with OpenTelemetry contexts, as in the services (logs stay off).
    TRACING.call_once(telemetry::init_for_tests);
    let map = record_headers::utf8_map(headers);
    assert!(map.len() <= headers.len());
    for (name, value) in &map {
        // The last header with this name whose value is UTF-8 wins.
        let last = headers.iter().rev().find_map(|(header, value)| {
            (header == name.as_bytes())
                .then_some(value.as_deref())
                .flatten()
                .filter(|value| std::str::from_utf8(value).is_ok())
        });
        assert_eq!(last, Some(value.as_bytes()), "header {name:?}");
    }

    let parent = telemetry::extract(&map);
    let parent_span = parent.span().span_context().clone();
    if parent_span.is_valid() {
        assert!(map.contains_key(events::HEADER_TRACEPARENT));
        // What is extracted injects to headers that extract to the same context.
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&parent, &mut carrier);
        let carrier: BTreeMap<String, String> = carrier.into_iter().collect();
        let again = telemetry::extract(&carrier);
        let again_span = again.span().span_context().clone();
        assert_eq!(again_span.trace_id(), parent_span.trace_id());
        assert_eq!(again_span.span_id(), parent_span.span_id());
        assert_eq!(again_span.trace_flags(), parent_span.trace_flags());
        assert_eq!(
            again_span.trace_state().header(),
            parent_span.trace_state().header()
        );
    }

    // The consumer's span continues the producer's trace, and what it
    // publishes carries that trace on.
    let span = tracing::info_span!("fuzz.consume");
    telemetry::continue_trace(&span, &map, true);
    let correlation_id = map
        .get(events::HEADER_REQUEST_ID)
        .cloned()
        .unwrap_or_default();
    let forwarded = events::standard_headers::<PaymentCompleted>(
        &correlation_id,
        &telemetry::inject_span(&span),
    );
    assert_eq!(forwarded[events::HEADER_REQUEST_ID], correlation_id);
    if let Some(trace_id) = telemetry::trace_id(&span) {
        if parent_span.is_valid() {
            assert_eq!(trace_id, parent_span.trace_id().to_string());
        }
        let child = telemetry::extract(&forwarded);
        assert_eq!(child.span().span_context().trace_id().to_string(), trace_id);
    }
}

/// A fixed, valid `OrderPlaced` (no clock, no random ids).
pub fn seed_order_placed() -> OrderPlaced {
    OrderPlaced {
        metadata: Some(seed_metadata("order-api")),
        order_id: "0190f5e8-7a4c-7b1e-9c2d-3e4f5a6b7c8d".to_owned(),
        customer_name: "Zoë Example".to_owned(),
        customer_email: "zoe@example.com".to_owned(),
        total_amount: "25.98".to_owned(),
        items: vec![
            OrderPlacedItem {
                menu_item_id: 1,
                menu_item_name: "Margherita".to_owned(),
                quantity: 2,
                unit_price: "9.99".to_owned(),
                subtotal: "19.98".to_owned(),
            },
            OrderPlacedItem {
                menu_item_id: 7,
                menu_item_name: "Tiramisù".to_owned(),
                quantity: 1,
                unit_price: "6.00".to_owned(),
                subtotal: "6.00".to_owned(),
            },
        ],
    }
}

/// A fixed, valid `PaymentCompleted`; `success` picks the outcome.
pub fn seed_payment_completed(success: bool) -> PaymentCompleted {
    PaymentCompleted {
        metadata: Some(seed_metadata("payment-service")),
        order_id: "0190f5e8-7a4c-7b1e-9c2d-3e4f5a6b7c8d".to_owned(),
        success,
        final_status: if success {
            OrderStatus::Completed
        } else {
            OrderStatus::Failed
        } as i32,
        attempt_count: if success { 1 } else { 3 },
        processing_time_ms: 412,
        error_message: if success {
            String::new()
        } else {
            "card declined".to_owned()
        },
        amount: "25.98".to_owned(),
        customer_email: "zoe@example.com".to_owned(),
        customer_name: "Zoë Example".to_owned(),
        payment_id: "0190f5e8-7b00-7c2e-8d3f-4a5b6c7d8e9f".to_owned(),
    }
}

fn seed_metadata(producer: &str) -> EventMetadata {
    EventMetadata {
        event_id: "0190f5e8-7a4d-7000-8000-000000000001".to_owned(),
        correlation_id: "req-seed-1".to_owned(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_720_000_000,
            nanos: 123_456_000,
        }),
        schema_version: events::SCHEMA_VERSION,
        producer: producer.to_owned(),
    }
}

/// A valid W3C `traceparent`.
pub const SEED_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A header list as the services send it, with a trace context.
pub fn seed_headers() -> Vec<RawHeader> {
    [
        (events::HEADER_CONTENT_TYPE, events::CONTENT_TYPE_PROTOBUF),
        (events::HEADER_EVENT_TYPE, "foodorder.v1.OrderPlaced"),
        (events::HEADER_REQUEST_ID, "req-seed-1"),
        (events::HEADER_TRACEPARENT, SEED_TRACEPARENT),
        (
            events::HEADER_TRACESTATE,
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.as_bytes().to_vec(), Some(value.as_bytes().to_vec())))
    .collect()
}

/// The seed corpus of each fuzz target: (target, file name, bytes). Written to
/// `fuzz/corpus/<target>/` by the ignored test `write_seed_corpus`.
pub fn seed_corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut odd = seed_headers();
    odd.push((
        b"\xff\xfe-not-utf8".to_vec(),
        Some(b"\xc3\x28\xa0\xa1".to_vec()),
    ));
    odd.push((b"caf\xe9-latin1".to_vec(), Some(b"\x00\xff".to_vec())));
    odd.push((b"x-null-value".to_vec(), None));
    odd.push((b"traceparent".to_vec(), Some(vec![0xff, b'0', b'0'])));
    vec![
        (
            "event_decoding",
            "seed-order-placed",
            seed_order_placed().encode_to_vec(),
        ),
        (
            "event_decoding",
            "seed-payment-completed",
            seed_payment_completed(true).encode_to_vec(),
        ),
        (
            "event_decoding",
            "seed-payment-failed",
            seed_payment_completed(false).encode_to_vec(),
        ),
        (
            "record_headers",
            "seed-standard",
            headers_to_bytes(&seed_headers()),
        ),
        ("record_headers", "seed-not-utf8", headers_to_bytes(&odd)),
    ]
}

#[cfg(test)]
mod tests;
