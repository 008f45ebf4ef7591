//! Helpers for the Kafka events: the metadata envelope, timestamps, and the
//! standard record headers (`content-type`, `event-type`, `x-request-id` and
//! the W3C trace context).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foodorder_proto::EventType;
use foodorder_proto::v1::{EventMetadata, OrderPlaced, OrderStatus, PaymentCompleted};
use prost::Message;
use uuid::Uuid;

/// Version of the event schemas in `events.proto`.
pub const SCHEMA_VERSION: u32 = 1;
/// Header with the protobuf content type.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Value of the `content-type` header.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// Header with the full protobuf message name of the value.
pub const HEADER_EVENT_TYPE: &str = "event-type";
/// Header with the correlation id.
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// W3C trace-context header.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C trace-context vendor header.
pub const HEADER_TRACESTATE: &str = "tracestate";

/// Converts a chrono time to a protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A new metadata envelope for an event about something that happened at `occurred_at`.
pub fn metadata(correlation_id: &str, producer: &str, occurred_at: DateTime<Utc>) -> EventMetadata {
    EventMetadata {
        event_id: Uuid::now_v7().to_string(),
        correlation_id: correlation_id.to_owned(),
        occurred_at: Some(timestamp(occurred_at)),
        schema_version: SCHEMA_VERSION,
        producer: producer.to_owned(),
    }
}

/// The standard headers for an event of type `E` with the given correlation id
/// and trace context (`traceparent`/`tracestate` pairs, possibly empty).
pub fn standard_headers<E: EventType>(
    correlation_id: &str,
    trace_context: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    headers.insert(
        HEADER_CONTENT_TYPE.to_owned(),
        CONTENT_TYPE_PROTOBUF.to_owned(),
    );
    headers.insert(HEADER_EVENT_TYPE.to_owned(), E::EVENT_TYPE.to_owned());
    headers.insert(HEADER_REQUEST_ID.to_owned(), correlation_id.to_owned());
    for name in [HEADER_TRACEPARENT, HEADER_TRACESTATE] {
        if let Some(value) = trace_context.get(name) {
            headers.insert(name.to_owned(), value.clone());
        }
    }
    headers
}

/// Checks an event's metadata envelope: present, of the schema version we read.
fn check_metadata(metadata: Option<&EventMetadata>, event: &str) -> Result<(), String> {
    let metadata = metadata.ok_or_else(|| format!("{event} without metadata"))?;
    if metadata.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "unsupported {event} schema version {}",
            metadata.schema_version
        ));
    }
    Ok(())
}

/// An event's amount: an exact decimal string, not negative, that fits the
/// database's NUMERIC(12, 2).
pub fn amount(text: &str) -> Result<rust_decimal::Decimal, String> {
    crate::money::parse_money(text)
        .filter(|amount| {
            !amount.is_sign_negative() && *amount < rust_decimal::Decimal::new(10_000_000_000, 0)
        })
        .ok_or_else(|| format!("amount {text:?} is not a valid amount"))
}

/// The order id of an event, which must be a UUID.
fn order_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|_| format!("order id {text:?} is not a UUID"))
}

/// Decodes and checks an `order.placed` record (its key and value) as
/// payment-service reads it; the error says why the record is poison.
pub fn decode_order_placed(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(Uuid, OrderPlaced), String> {
    let value = value.ok_or("record has no value")?;
    let event = OrderPlaced::decode(value)
        .map_err(|error| format!("value is not a valid OrderPlaced: {error}"))?;
    check_metadata(event.metadata.as_ref(), "OrderPlaced")?;
    let order_id = order_id(&event.order_id)?;
    if key != Some(event.order_id.as_bytes()) {
        return Err("record key does not match the order id".to_owned());
    }
    amount(&event.total_amount)?;
    if event.customer_email.is_empty() {
        return Err("OrderPlaced without customer email".to_owned());
    }
    Ok((order_id, event))
}

/// Decodes and checks a `payment.completed` record's value (a UUID order id,
/// the outcome consistent, a valid amount); the error says why the record is
/// poison. A failure the payment service settled without ever having a valid
/// request carries no customer: the notification service checks the recipient.
pub fn decode_payment_completed(value: Option<&[u8]>) -> Result<(Uuid, PaymentCompleted), String> {
    let value = value.ok_or("record has no value")?;
    let event = PaymentCompleted::decode(value)
        .map_err(|error| format!("value is not a valid PaymentCompleted: {error}"))?;
    check_metadata(event.metadata.as_ref(), "PaymentCompleted")?;
    let order_id = order_id(&event.order_id)?;
    match event.final_status() {
        OrderStatus::Completed if event.success => {}
        OrderStatus::Failed if !event.success => {}
        other => {
            return Err(format!(
                "inconsistent outcome: success={} final_status={other:?}",
                event.success
            ));
        }
    }
    amount(&event.amount)?;
    if !event.payment_id.is_empty() {
        Uuid::parse_str(&event.payment_id)
            .map_err(|_| format!("payment id {:?} is not a UUID", event.payment_id))?;
    }
    if event.attempt_count < 0 || event.processing_time_ms < 0 {
        return Err("PaymentCompleted with a negative count or duration".to_owned());
    }
    Ok((order_id, event))
}
