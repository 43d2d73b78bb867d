//! `cargo xtask fuzz flags`: see `tcpobs::fuzzing::flags`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::flags(data));
