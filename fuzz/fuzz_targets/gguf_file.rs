//! `gguf_file`: see `fuzzing::gguf_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::gguf_file(data));
