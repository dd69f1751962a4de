//! `upstream_sse`: see `fuzzing::upstream_sse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::upstream_sse(data));
