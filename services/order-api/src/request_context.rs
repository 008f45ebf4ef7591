//! The correlation id of a call, checked once for every OrderService method by
//! the telemetry layer ([`crate::grpc_telemetry`]) and handed to the handler
//! in the request's extensions: the `x-request-id` metadata, set by the
//! request-id layer when the caller sent none, 1 to 128 printable ASCII
//! characters. A call with another value is refused with INVALID_ARGUMENT
//! before it reaches a handler.

use foodorder_contract::events::HEADER_REQUEST_ID;
use http::HeaderMap;
use uuid::Uuid;

use crate::error::ApiError;

/// Longest accepted `x-request-id`.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A call's correlation id (`x-request-id`), once checked.
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// The checked id of a request, from its extensions; a fresh one for a
    /// request that did not pass through the layer (a handler called directly).
    pub fn of<T>(request: &tonic::Request<T>) -> String {
        request
            .extensions()
            .get::<CorrelationId>()
            .map_or_else(|| Uuid::new_v4().to_string(), |id| id.0.clone())
    }
}

/// Checks the `x-request-id` of a call's headers (a fresh id when absent).
pub fn correlation_id(headers: &HeaderMap) -> Result<CorrelationId, ApiError> {
    let value = match headers.get(HEADER_REQUEST_ID) {
        None => return Ok(CorrelationId(Uuid::new_v4().to_string())),
        Some(value) => value.to_str().map_err(|_| {
            ApiError::invalid_field(HEADER_REQUEST_ID, "x-request-id must be printable ASCII")
        })?,
    };
    if value.is_empty()
        || value.len() > MAX_REQUEST_ID_LEN
        || !value.bytes().all(|byte| byte.is_ascii_graphic())
    {
        return Err(ApiError::invalid_field(
            HEADER_REQUEST_ID,
            format!(
                "x-request-id must be 1 to {MAX_REQUEST_ID_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(CorrelationId(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_REQUEST_ID,
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        headers
    }

    #[test]
    fn printable_ids_pass_and_others_are_refused() {
        assert_eq!(correlation_id(&headers(b"req-1")).unwrap().0, "req-1");
        assert!(!correlation_id(&HeaderMap::new()).unwrap().0.is_empty());
        assert!(correlation_id(&headers(b"two words")).is_err());
        assert!(correlation_id(&headers("é".as_bytes())).is_err());
        assert!(correlation_id(&headers("x".repeat(129).as_bytes())).is_err());
    }
}
