#![no_main]
//! libFuzzer entry for `nodelet::fuzz::proxy_rules` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::proxy_rules(data));
