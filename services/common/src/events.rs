//! Helpers for the Kafka events: the metadata envelope, timestamps, and the
//! standard record headers (`content-type`, `event-type`, `x-request-id` and
//! the W3C trace context).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foodorder_proto::EventType;
use foodorder_proto::v1::EventMetadata;
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
