#![no_main]
//! See `fuzz/src/permessage_deflate.rs` for what this target does and how its input is laid out.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::permessage_deflate::run(data));
