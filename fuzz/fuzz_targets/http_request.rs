#![no_main]
//! See `fuzz/src/http_request.rs` for what this target does and how its input is laid out.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::http_request::run(data));
