#![no_main]
//! libFuzzer entry for `nodelet::fuzz::registry_credentials` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::registry_credentials(data));
