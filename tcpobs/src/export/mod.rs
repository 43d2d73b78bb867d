//! Where records go: events (JSON or justniffer lines, [`output`]), Prometheus metrics
//! ([`metrics`]), and the HTTP API that serves the metrics, the live table and the settings
//! ([`http`]).

pub(crate) mod http;
pub(crate) mod metrics;
pub mod output;
#[cfg(test)]
mod proptests;
