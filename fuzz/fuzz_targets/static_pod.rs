#![no_main]
//! libFuzzer entry for `nodelet::fuzz::static_pod` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::static_pod(data));
