#![no_main]
//! See `fuzz/src/cluster_packet.rs` for what this target does and how its input is laid out.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::cluster_packet::run(data));
