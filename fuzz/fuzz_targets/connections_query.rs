//! `cargo xtask fuzz connections_query`: see `tcpobs::fuzzing::connections_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::connections_query(data));
