#![no_main]
//! See `fuzz/src/chunked_cost.rs` for what this target does and how its input is laid out.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::chunked_cost::run(data));
