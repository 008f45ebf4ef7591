//! A consumed record's headers (one `name NUL value` per line) read as the
//! consumers read them, trace context included. Body:
//! `foodorder_testkit::fuzzing::record_headers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| foodorder_testkit::fuzzing::record_headers(data));
