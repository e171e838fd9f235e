#![no_main]
//! libFuzzer entry for `nodelet::fuzz::quantity_duration` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::quantity_duration(data));
