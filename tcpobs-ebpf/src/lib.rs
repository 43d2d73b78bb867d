#![no_std]
// This file exists so that the daemon can depend on this crate for rebuild tracking; the
// programs live in the `tcpobs` binary target (src/main.rs).
