//! The integration tests: one test binary (it links the daemon once), one module per area.
//! They load the real kernel programs and drive real traffic; the shared harness is the
//! `tcpobs_tests` library (`tests/harness`).
//!
//! The tests share the kernel's hooks, so they run one at a time: `cargo xtask test` and the
//! kernel matrix pass `--test-threads=1`, and libtest then runs them in name order, module by
//! module. A module name is a test name filter (`cargo test -p tcpobs-tests -- lifecycle::`),
//! and the kernel matrix picks modules by name (`cargo xtask vm-test --tests lifecycle,netns`).

mod alerts;
mod api;
mod cli;
mod dns;
mod exporter;
mod faults;
mod flood;
mod http;
mod kubernetes;
mod lifecycle;
mod metadata;
mod netns;
mod otlp;
mod phases;
mod restart;
mod runtime;
mod systemd;
mod tls;
mod why;
