#![no_main]
//! libFuzzer entry for `nodelet::fuzz::node_api_paths` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::node_api_paths(data));
