//! `cargo xtask fuzz btf`: see `tcpobs::fuzzing::btf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcpobs::fuzzing::btf(data));
