//! Helpers for the Kafka events: the metadata envelope, timestamps, and the
//! standard record headers (`content-type`, `event-type`, `x-request-id` and
//! the W3C trace context).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foodorder_proto::EventType;
use foodorder_proto::v1::{
    EventMetadata, OrderPlaced, OrderStatus, OrderUnprocessable, PaymentCompleted,
};
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

/// When the fact an event reports happened (its metadata's `occurred_at`),
/// or now when the event does not say (or says something out of range).
pub fn occurred_at(metadata: Option<&EventMetadata>) -> DateTime<Utc> {
    metadata
        .and_then(|metadata| metadata.occurred_at)
        .and_then(|at| {
            DateTime::<Utc>::from_timestamp(at.seconds, at.nanos.clamp(0, 999_999_999) as u32)
        })
        .unwrap_or_else(Utc::now)
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
/// poison. The payment service only reports orders it had a valid request
/// for, but the notification service still checks the recipient.
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

/// The longest reason an `OrderUnprocessable` carries, in characters.
pub const UNPROCESSABLE_REASON_MAX_CHARS: usize = 256;

/// `reason` cut to [`UNPROCESSABLE_REASON_MAX_CHARS`] characters (a refused
/// record's reason may quote parts of it), with every control character
/// replaced, so that it can be stored, sent and logged as it is.
pub fn bounded_reason(reason: &str) -> String {
    let mut bounded: String = reason
        .chars()
        .take(UNPROCESSABLE_REASON_MAX_CHARS)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if reason.chars().nth(UNPROCESSABLE_REASON_MAX_CHARS).is_some() {
        bounded.pop();
        bounded.push('…');
    }
    bounded
}

/// Decodes and checks an `order.unprocessable` record (its key and value) as
/// the order API reads it: a UUID order id equal to the key, a bounded
/// reason; the error says why the record is poison.
pub fn decode_order_unprocessable(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(Uuid, OrderUnprocessable), String> {
    let value = value.ok_or("record has no value")?;
    let event = OrderUnprocessable::decode(value)
        .map_err(|error| format!("value is not a valid OrderUnprocessable: {error}"))?;
    check_metadata(event.metadata.as_ref(), "OrderUnprocessable")?;
    let order_id = order_id(&event.order_id)?;
    if key != Some(event.order_id.as_bytes()) {
        return Err("record key does not match the order id".to_owned());
    }
    if event.reason.chars().count() > UNPROCESSABLE_REASON_MAX_CHARS {
        return Err(format!(
            "OrderUnprocessable reason longer than {UNPROCESSABLE_REASON_MAX_CHARS} characters"
        ));
    }
    Ok((order_id, event))
}

#[cfg(test)]
mod unprocessable_tests {
    use super::*;

    fn declaration(order_id: &str, reason: &str) -> OrderUnprocessable {
        OrderUnprocessable {
            metadata: Some(metadata("", "payment-service", Utc::now())),
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
            first_seen_at: Some(timestamp(Utc::now())),
        }
    }

    #[test]
    fn an_unprocessable_event_decodes_only_when_its_key_is_its_order_id() {
        let id = Uuid::new_v4().to_string();
        let value = declaration(&id, "value is not a valid OrderPlaced").encode_to_vec();
        let (decoded, event) =
            decode_order_unprocessable(Some(id.as_bytes()), Some(&value)).expect("decodes");
        assert_eq!(decoded.to_string(), id);
        assert_eq!(event.reason, "value is not a valid OrderPlaced");
        let other = Uuid::new_v4().to_string();
        assert!(decode_order_unprocessable(Some(other.as_bytes()), Some(&value)).is_err());
        assert!(decode_order_unprocessable(None, Some(&value)).is_err());
        assert!(decode_order_unprocessable(Some(id.as_bytes()), None).is_err());
        let not_a_uuid = declaration("x", "r").encode_to_vec();
        assert!(decode_order_unprocessable(Some(b"x"), Some(&not_a_uuid)).is_err());
        let long =
            declaration(&id, &"r".repeat(UNPROCESSABLE_REASON_MAX_CHARS + 1)).encode_to_vec();
        assert!(decode_order_unprocessable(Some(id.as_bytes()), Some(&long)).is_err());
    }

    #[test]
    fn a_reason_is_bounded_and_has_no_control_characters() {
        assert_eq!(bounded_reason("short"), "short");
        assert_eq!(bounded_reason("a\nb\u{1b}[31m"), "a\u{fffd}b\u{fffd}[31m");
        let long = "é".repeat(1000);
        let bounded = bounded_reason(&long);
        assert_eq!(bounded.chars().count(), UNPROCESSABLE_REASON_MAX_CHARS);
        assert!(bounded.ends_with('…'));
        let exact = "x".repeat(UNPROCESSABLE_REASON_MAX_CHARS);
        assert_eq!(bounded_reason(&exact), exact);
    }
}
