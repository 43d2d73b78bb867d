//! Metrics of the library calls around connections: name resolution and TLS handshake durations,
//! and resolution failures by kind. Every label value is known in advance, so every series
//! exists from the first scrape and updates go through handles resolved once.

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{Buckets, histogram::Histogram, labels::Fixed};
use crate::model::{DnsFailure, DnsRecord, TlsRecord};

/// `result` of a resolution: `ok`, then the failure kinds in [`DnsFailure::ALL`] order.
const DNS_RESULTS: [&str; 4] = ["ok", "transient", "permanent", "error"];
const TLS_RESULTS: [&str; 2] = ["ok", "failed"];

#[derive(Clone, Debug)]
pub(super) struct LibcallMetrics {
    dns_duration: [Histogram; 4],
    dns_failures: [Counter; 3],
    tls_duration: [Histogram; 2],
}

impl LibcallMetrics {
    pub(super) fn new(registry: &mut Registry) -> Self {
        let dns_duration: Family<Fixed<1>, Histogram, Buckets> =
            Family::new_with_constructor(Buckets::Latency);
        let dns_failures: Family<Fixed<1>, Counter> = Family::default();
        let tls_duration: Family<Fixed<1>, Histogram, Buckets> =
            Family::new_with_constructor(Buckets::Latency);
        registry.register(
            "tcpobs_dns_duration_seconds",
            "Name resolutions (getaddrinfo calls), by result: ok, transient (EAI_AGAIN), \
             permanent (EAI_NONAME, EAI_NODATA, EAI_FAIL) or error",
            dns_duration.clone(),
        );
        registry.register(
            "tcpobs_dns_failures",
            "Failed name resolutions, by kind: transient, permanent or error",
            dns_failures.clone(),
        );
        registry.register(
            "tcpobs_tls_handshake_duration_seconds",
            "TLS handshakes (OpenSSL), first handshake call to completion or failure, by result",
            tls_duration.clone(),
        );
        Self {
            dns_duration: DNS_RESULTS
                .map(|result| dns_duration.get_or_create(&[("result", result)]).clone()),
            dns_failures: DnsFailure::ALL.map(|kind| {
                dns_failures
                    .get_or_create(&[("kind", kind.as_str())])
                    .clone()
            }),
            tls_duration: TLS_RESULTS
                .map(|result| tls_duration.get_or_create(&[("result", result)]).clone()),
        }
    }

    pub(super) fn observe_dns(&self, record: &DnsRecord) {
        let failure = record.failure();
        let index = failure.map_or(0, |kind| {
            1 + DnsFailure::ALL.iter().position(|k| *k == kind).unwrap_or(2)
        });
        self.dns_duration[index].observe(record.duration_ns);
        if index > 0 {
            self.dns_failures[index - 1].inc();
        }
    }

    pub(super) fn observe_tls(&self, record: &TlsRecord) {
        self.tls_duration[usize::from(!record.ok)].observe(record.duration_ns);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::model::{Process, Resolved, Role};

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn every_series_exists_from_the_start_and_counts_by_result() {
        let mut registry = Registry::default();
        let metrics = LibcallMetrics::new(&mut registry);
        let text = exposition(&registry);
        for sample in [
            "tcpobs_dns_duration_seconds_count{result=\"ok\"} 0",
            "tcpobs_dns_duration_seconds_count{result=\"transient\"} 0",
            "tcpobs_dns_duration_seconds_count{result=\"permanent\"} 0",
            "tcpobs_dns_duration_seconds_count{result=\"error\"} 0",
            "tcpobs_dns_failures_total{kind=\"transient\"} 0",
            "tcpobs_dns_failures_total{kind=\"permanent\"} 0",
            "tcpobs_dns_failures_total{kind=\"error\"} 0",
            "tcpobs_tls_handshake_duration_seconds_count{result=\"ok\"} 0",
            "tcpobs_tls_handshake_duration_seconds_count{result=\"failed\"} 0",
        ] {
            assert!(text.contains(sample), "missing `{sample}` in:\n{text}");
        }
        let dns = |code| DnsRecord {
            process: Process::default(),
            host: Arc::from("a.test"),
            host_truncated: false,
            start_ns: 0,
            duration_ns: 2_000_000,
            code,
            addrs: Resolved::default(),
        };
        metrics.observe_dns(&dns(0));
        metrics.observe_dns(&dns(-3));
        metrics.observe_dns(&dns(-3));
        metrics.observe_dns(&dns(-2));
        metrics.observe_tls(&TlsRecord {
            conn_id: None,
            role: Role::Client,
            addrs: None,
            process: None,
            start_ns: 0,
            duration_ns: 5_000_000,
            ok: false,
            calls: 1,
            after_close: false,
        });
        let text = exposition(&registry);
        for sample in [
            "tcpobs_dns_duration_seconds_count{result=\"ok\"} 1",
            "tcpobs_dns_duration_seconds_count{result=\"transient\"} 2",
            "tcpobs_dns_duration_seconds_sum{result=\"permanent\"} 0.002",
            "tcpobs_dns_failures_total{kind=\"transient\"} 2",
            "tcpobs_dns_failures_total{kind=\"permanent\"} 1",
            "tcpobs_dns_failures_total{kind=\"error\"} 0",
            "tcpobs_tls_handshake_duration_seconds_count{result=\"failed\"} 1",
            "tcpobs_tls_handshake_duration_seconds_count{result=\"ok\"} 0",
        ] {
            assert!(text.contains(sample), "missing `{sample}` in:\n{text}");
        }
    }
}
