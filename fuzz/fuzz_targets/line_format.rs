//! `cargo xtask fuzz line_format`: see `tcpobs::fuzzing::line_format`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::line_format(data));
