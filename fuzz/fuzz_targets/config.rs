//! `config`: see `fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::config(data));
