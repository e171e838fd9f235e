#![no_main]
//! libFuzzer entry for `nodelet::fuzz::image_archive` (see src/fuzz.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodelet::fuzz::image_archive(data));
