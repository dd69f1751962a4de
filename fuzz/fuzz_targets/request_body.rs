//! `request_body`: see `fuzzing::request_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::request_body(data));
