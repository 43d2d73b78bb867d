//! Where records go: events (JSON or justniffer lines, [`output`]), Prometheus metrics
//! ([`metrics`]), the HTTP API that serves the metrics, the live table and the settings
//! ([`http`]), and OpenTelemetry export ([`otlp`]: traces, logs and metrics by OTLP).

pub(crate) mod http;
pub(crate) mod metrics;
pub mod otlp;
pub mod output;
#[cfg(test)]
mod proptests;
