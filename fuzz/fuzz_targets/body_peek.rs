#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| okome::fuzzing::body_peek(data));
