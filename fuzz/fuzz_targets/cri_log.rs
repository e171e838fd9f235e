#![no_main]
//! libFuzzer entry for `nodelet::fuzz::cri_log` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::cri_log(data));
