//! A consumed record's value, decoded as every event type and checked as the
//! consumers check it. Body: `foodorder_testkit::fuzzing::event_decoding`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| foodorder_testkit::fuzzing::event_decoding(data));
