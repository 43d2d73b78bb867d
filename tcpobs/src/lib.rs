//! tcpobs: an eBPF TCP connection lifecycle tracer.
//!
//! The kernel programs (`tcpobs-ebpf`) keep one record per socket and send lifecycle
//! transitions and burst ends through a ring buffer. This library loads them ([`kernel::loader`]),
//! reads the ring buffer ([`kernel::reader`]), turns events into connection and exchange records
//! ([`tracker`], a pure state machine), writes them out ([`export::output`]) and counts them
//! ([`export::metrics`]), served with the live table and runtime settings over HTTP
//! ([`export::http`]).
//! [`app::daemon`] runs the pipeline and [`app`] ties it to the HTTP server and signals; `main.rs`
//! only sets up logging and maps errors to exit codes. The phases around connections (name
//! resolution, TLS handshakes) come from uprobes on user-space libraries ([`kernel::libcalls`]).

pub mod app;
pub mod clock;
pub mod config;
pub mod export;
pub mod kernel;
pub mod metadata;
pub mod model;
mod sync;
pub(crate) mod tracker;
