#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| okome::fuzzing::stream_tap(data));
