#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| okome::fuzzing::wire_types(data));
