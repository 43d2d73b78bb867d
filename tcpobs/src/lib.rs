//! tcpobs: an eBPF TCP connection lifecycle tracer.
//!
//! The kernel programs (`tcpobs-ebpf`) keep one record per socket and send lifecycle
//! transitions and burst ends through a ring buffer. This library loads them ([`loader`]),
//! reads the ring buffer ([`reader`]), turns events into connection and exchange records
//! ([`tracker`], a pure state machine) and writes them out ([`output`]). [`daemon`] ties it
//! together; `main.rs` only parses flags and maps errors to exit codes.

pub mod btf;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod loader;
pub mod model;
pub mod output;
pub mod reader;
pub mod tracefs;
pub mod tracker;
