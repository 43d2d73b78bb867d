//! `cargo xtask fuzz config_file`: see `tcpobs::fuzzing::config_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::config_file(data));
