#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| okome::fuzzing::tap_reformat(data));
