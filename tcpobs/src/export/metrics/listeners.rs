//! Listener health (issue 15 §1): the families labelled by listening port, and how that label
//! stays bounded.
//!
//! `port` is the listening (local) port. Like the optional dimensions in `labels`, it cannot
//! grow without bound: with `--label local_port=80,443` only those ports are kept, with
//! `--label local_port=top:N` the first N listening ports seen, and otherwise the first
//! `--label-series-cap` (100) ports seen; every other port is `other`. The `other` series exist
//! from the first scrape.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{
    families::Buckets,
    histogram::Histogram,
    labels::{Dim, Keep, LabelSpec},
};
use crate::{sync::lock, tracker::ListenDrop};

/// Which listening ports get their own `port` label.
#[derive(Debug)]
pub(crate) struct PortLabels {
    allow: Option<HashSet<u16>>,
    cap: usize,
    kept: HashSet<u16>,
}

impl PortLabels {
    pub(crate) fn new(specs: &[LabelSpec], series_cap: usize) -> Self {
        let spec = specs.iter().find(|spec| spec.dim == Dim::LocalPort);
        let (allow, cap) = match spec.map(|spec| &spec.keep) {
            Some(Keep::Allow(values)) => (
                Some(values.iter().filter_map(|v| v.parse().ok()).collect()),
                usize::MAX,
            ),
            Some(Keep::Top(n)) => (None, *n),
            None => (None, series_cap),
        };
        Self {
            allow,
            cap,
            kept: HashSet::new(),
        }
    }

    /// The `port` label value for a listening port.
    pub(crate) fn label(&mut self, port: u16) -> String {
        let kept = match &self.allow {
            Some(allow) => allow.contains(&port),
            None => {
                self.kept.contains(&port) || (self.kept.len() < self.cap && self.kept.insert(port))
            }
        };
        if kept {
            port.to_string()
        } else {
            "other".to_owned()
        }
    }
}

type PortLabel = [(&'static str, String); 1];
type PortReason = [(&'static str, String); 2];

/// The per-port families updated from records and sweeps (the queue gauges are read at scrape
/// time from the last sweep, in `collect`).
#[derive(Clone, Debug)]
pub(crate) struct ListenerMetrics {
    pub(crate) ports: Arc<Mutex<PortLabels>>,
    drops: Family<PortReason, Counter>,
    accept_wait: Family<PortLabel, Histogram, Buckets>,
}

impl ListenerMetrics {
    pub(crate) fn new(registry: &mut Registry, specs: &[LabelSpec], series_cap: usize) -> Self {
        let metrics = Self {
            ports: Arc::new(Mutex::new(PortLabels::new(specs, series_cap))),
            drops: Family::default(),
            accept_wait: Family::new_with_constructor(Buckets::Latency),
        };
        registry.register(
            "tcpobs_listen_drops",
            "Connections and SYNs the kernel dropped at a listener (its sk_drops), by listening \
             port and by which queue was full",
            metrics.drops.clone(),
        );
        registry.register(
            "tcpobs_accept_wait_seconds",
            "How long an accepted connection waited in the listener's queue: ESTABLISHED to the \
             application's accept(), by listening port",
            metrics.accept_wait.clone(),
        );
        for reason in ListenDrop::ALL {
            let _ = metrics.drops.get_or_create(&[
                ("port", "other".to_owned()),
                ("reason", reason.as_str().to_owned()),
            ]);
        }
        let _ = metrics
            .accept_wait
            .get_or_create(&[("port", "other".to_owned())]);
        metrics
    }

    /// Counts the drops of one sweep.
    pub(crate) fn observe_drops(&self, drops: &[(u16, ListenDrop, u64)]) {
        for &(port, reason, count) in drops {
            let port = lock(&self.ports).label(port);
            self.drops
                .get_or_create(&[("port", port), ("reason", reason.as_str().to_owned())])
                .inc_by(count);
        }
    }

    /// Observes an accepted connection's wait on its listening port.
    pub(crate) fn observe_accept_wait(&self, port: u16, wait_ns: u64) {
        let port = lock(&self.ports).label(port);
        self.accept_wait
            .get_or_create(&[("port", port)])
            .observe(wait_ns);
    }

    /// The queue gauges' series for one sweep: (port label, length, limit), summed per label,
    /// `other` always present.
    pub(crate) fn queues(&self, queues: &[(u16, u32, u32)]) -> Vec<(String, u64, u64)> {
        let mut ports = lock(&self.ports);
        let mut series: Vec<(String, u64, u64)> = vec![("other".to_owned(), 0, 0)];
        for &(port, length, limit) in queues {
            let label = ports.label(port);
            match series.iter_mut().find(|(existing, ..)| *existing == label) {
                Some(entry) => {
                    entry.1 += u64::from(length);
                    entry.2 += u64::from(limit);
                }
                None => series.push((label, u64::from(length), u64::from(limit))),
            }
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bounded() {
        let mut ports = PortLabels::new(&[], 2);
        assert_eq!(ports.label(80), "80");
        assert_eq!(ports.label(443), "443");
        assert_eq!(ports.label(8080), "other", "past the cap");
        assert_eq!(ports.label(80), "80", "kept ports stay");
        let mut ports = PortLabels::new(&["local_port=443".parse().unwrap()], 100);
        assert_eq!(ports.label(443), "443");
        assert_eq!(ports.label(80), "other", "not in the allowlist");
    }

    #[test]
    fn queues_sum_per_label_and_other_is_always_there() {
        let mut registry = Registry::default();
        let metrics = ListenerMetrics::new(&mut registry, &[], 1);
        let series = metrics.queues(&[(80, 2, 1), (80, 1, 128), (443, 5, 10), (22, 1, 4)]);
        assert_eq!(
            series,
            [("other".to_owned(), 6, 14), ("80".to_owned(), 3, 129)]
        );
    }
}
