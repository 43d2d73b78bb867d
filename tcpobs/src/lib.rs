//! tcpobs: an eBPF TCP connection lifecycle tracer.
//!
//! The kernel programs (`tcpobs-ebpf`) keep one record per socket and send lifecycle
//! transitions and burst ends through a ring buffer. The folders follow the data:
//!
//! ```text
//! config/    flags, environment, config file (sources), the live settings and their changes
//! kernel/    load and attach the programs (loader, btf, tracefs, filters, libcalls),
//!            then read what they send (reader, decode); report: what loading says
//! tracker/   kernel events -> connection, exchange and anomaly records (pure, no I/O)
//! model/     the records, and what they are made of
//! export/    where records go: output (JSON events, justniffer lines), metrics, http, otlp
//!            (OpenTelemetry: traces, logs and metrics to a collector)
//! metadata/  container and pod of a connection's process
//! app/       the daemon: the pipeline loop (daemon), HTTP server, signals, systemd
//! clock.rs   the kernel's clock and wall-clock time;  sync.rs  shared-state locks
//! ```
//!
//! Dependencies point one way: `app` uses everything; `export` and `kernel` read `config`'s
//! settings and `model`'s records; `tracker` knows only `model` and the decoded events;
//! `config`'s live settings import nothing of the outputs. `main.rs` only sets up logging and
//! maps errors to exit codes. The library calls around connections (name resolution, TLS
//! handshakes) come from uprobes on user-space libraries ([`kernel::libcalls`]).
#![allow(
    rustdoc::private_intra_doc_links,
    reason = "the internals are pub(crate) and their docs link to each other: read them with \
              `cargo doc --document-private-items`"
)]

pub mod app;
pub mod clock;
pub mod config;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod kernel;
pub mod metadata;
pub mod model;
mod sync;
pub(crate) mod tracker;
