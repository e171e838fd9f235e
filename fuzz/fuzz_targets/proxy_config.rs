#![no_main]
//! libFuzzer entry for `nodelet::fuzz::proxy_config` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::proxy_config(data));
