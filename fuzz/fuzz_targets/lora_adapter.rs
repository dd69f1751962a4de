//! `lora_adapter`: see `fuzzing::lora_adapter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::lora_adapter(data));
