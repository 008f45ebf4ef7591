//! Reads a consumed record's headers as bytes.
//!
//! rdkafka's own accessor turns every header name into `&str` and panics when
//! a producer wrote a name that is not UTF-8 (the Java and Go clients allow
//! it), which would crash a consumer on one hostile record, and again on every
//! restart. This module is the workspace's only unsafe code: the two
//! librdkafka calls rdkafka itself makes, with the name copied as bytes.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CStr;

use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedMessage;

/// A header: name and value, byte-exact (the value may be absent).
pub type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// Every header of `message`, in order, names and values as bytes.
pub fn read(message: &BorrowedMessage<'_>) -> Vec<RawHeader> {
    let no_error = rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    let mut headers = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live rd_kafka_message_t that `message`
    // wraps; librdkafka stores into `headers` a list the message owns (valid
    // while `message` lives, which outlasts this function) or returns an error.
    let error = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if error != no_error || headers.is_null() {
        return Vec::new();
    }
    // SAFETY: `headers` is the valid list obtained above.
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0_usize);
        // SAFETY: `index` < count; librdkafka stores pointers into the list's
        // own memory (a NUL-terminated name, a value of `size` bytes or null).
        let error = unsafe {
            rdsys::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size)
        };
        if error != no_error || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka guarantees the name is NUL-terminated and the
        // value, when not null, is `size` readable bytes; both are copied
        // before the list can go away.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        out.push((name, value));
    }
    out
}

/// The headers whose name and value are both UTF-8, as name → value (the last
/// one wins when a name repeats); the others cannot be meant for this platform.
pub fn utf8_map(headers: &[RawHeader]) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let name = std::str::from_utf8(name).ok()?;
            let value = std::str::from_utf8(value.as_deref()?).ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_are_not_utf8_are_left_out_of_the_map() {
        let headers = vec![
            (b"x-request-id".to_vec(), Some(b"req-1".to_vec())),
            (b"\xff\xfename".to_vec(), Some(b"value".to_vec())),
            (b"binary".to_vec(), Some(vec![0xc3, 0x28])),
            (b"empty".to_vec(), None),
        ];
        let map = utf8_map(&headers);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["x-request-id"], "req-1");
    }
}
