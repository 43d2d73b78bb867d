//! `cargo xtask fuzz put_config`: see `tcpobs::fuzzing::put_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::put_config(data));
