//! `cargo xtask fuzz ring_buffer`: see `tcpobs::fuzzing::ring_buffer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::ring_buffer(data));
