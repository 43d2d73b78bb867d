//! Metrics over OTLP: the `/metrics` exposition, read the way a scrape reads it and sent as
//! OTLP metrics. Nothing is recorded twice: the histograms are tcpobs's own buckets (turned
//! from Prometheus's cumulative `le` counts into OTLP's per-bucket counts), counters are
//! cumulative monotonic sums from the daemon's start, gauges and info metrics are gauges.
//!
//! Names: where OpenTelemetry has or proposes one (semantic-conventions issue 3682 for TCP,
//! all at `development` stability; `dns.lookup.duration`), the family is sent under it, with
//! the conventions' attributes: `role` becomes `network.tcp.handshake.role`, a connect
//! failure's `reason` and a resolution's `result` become `error.type` (unset on success).
//! `tcpobs_connections_opened_total` and `tcpobs_connect_failures_total` are one metric there,
//! `system.network.tcp.connections`. Every other family is `tcpobs.<name>` without the
//! `tcpobs_` prefix and the unit suffix (`_seconds`: unit `s`), labels unchanged.
//! [`MAPPING`] is the table the README shows.

use std::{sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use super::{
    attributes::{kv, string},
    exposition::{Family, parse},
    lanes::{Sender, scope},
    proto::{
        AggregationTemporality, Data, ExportMetricsServiceRequest, Gauge, Histogram,
        HistogramDataPoint, KeyValue, Metric, Number, NumberDataPoint, Resource, ResourceMetrics,
        ScopeMetrics, Sum,
    },
    transport::framed,
};

/// Families sent under an OpenTelemetry name: (Prometheus family, OTLP name, unit, what
/// differs from the convention's definition).
pub(crate) const MAPPING: [(&str, &str, &str, &str); 6] = [
    (
        "tcpobs_handshake_duration_seconds",
        "system.network.tcp.handshake.duration",
        "s",
        "same definition: SYN sent or received to ESTABLISHED",
    ),
    (
        "tcpobs_connection_duration_seconds",
        "system.network.tcp.connection.duration",
        "s",
        "tcpobs measures from the SYN (the handshake included), the proposal from \
         ESTABLISHED; connections first seen mid-life are left out",
    ),
    (
        "tcpobs_rtt_seconds",
        "system.network.tcp.rtt",
        "s",
        "same definition: the smoothed RTT at close",
    ),
    (
        "tcpobs_connections_opened_total",
        "system.network.tcp.connections",
        "{connection}",
        "the established connections: no `error.type`",
    ),
    (
        "tcpobs_connect_failures_total",
        "system.network.tcp.connections",
        "{connection}",
        "the failed ones: `error.type` `refused`, `timed_out`, `host_unreachable` (tcpobs's \
         `unreachable`, host or network), `_OTHER`; no `network.tcp.handshake.role` (the \
         family has no role label)",
    ),
    (
        "tcpobs_dns_duration_seconds",
        "dns.lookup.duration",
        "s",
        "`error.type` is tcpobs's failure kind (`transient`, `permanent`, `error`), unset \
         when the resolution succeeded",
    ),
];

/// Describes the merged `system.network.tcp.connections`.
const CONNECTIONS_HELP: &str =
    "TCP connection establishment outcomes: established, or failed (error.type)";

/// How a family is sent: its name, unit, and what each label becomes (`None`: left out).
struct Naming {
    name: String,
    unit: &'static str,
    semconv: bool,
}

fn naming(family: &str, kind: &str) -> Naming {
    let exposed = match kind {
        "counter" => format!("{family}_total"),
        _ => family.to_owned(),
    };
    if let Some((_, name, unit, _)) = MAPPING.iter().find(|(prom, ..)| *prom == exposed) {
        return Naming {
            name: (*name).to_owned(),
            unit,
            semconv: true,
        };
    }
    let rest = family.strip_prefix("tcpobs_").unwrap_or(family);
    let (rest, unit) = match rest.strip_suffix("_seconds") {
        Some(rest) => (rest, "s"),
        None if rest == "bytes" => (rest, "By"),
        None => (rest, ""),
    };
    let name = match kind {
        "info" => format!("tcpobs.{rest}_info"),
        _ => format!("tcpobs.{rest}"),
    };
    Naming {
        name,
        unit,
        semconv: false,
    }
}

/// A label as an attribute of a semantic-conventions metric (`None`: left out).
fn semconv_attribute(label: &str, value: &str) -> Option<KeyValue> {
    Some(match label {
        "role" => kv("network.tcp.handshake.role", string(value)),
        "reason" => kv(
            "error.type",
            string(match value {
                "refused" => "refused",
                "timeout" => "timed_out",
                "unreachable" => "host_unreachable",
                _ => "_OTHER",
            }),
        ),
        "result" if value == "ok" => return None,
        "result" => kv("error.type", string(value)),
        other => kv(other, string(value)),
    })
}

fn attributes(labels: &[(&str, String)], semconv: bool) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(label, _)| *label != "le")
        .filter_map(|(label, value)| match semconv {
            true => semconv_attribute(label, value),
            false => Some(kv(*label, string(value.as_str()))),
        })
        .collect()
}

fn number(value: f64, integers: bool) -> Number {
    if integers {
        Number::Int(value as i64)
    } else {
        Number::Double(value)
    }
}

fn integral(value: f64) -> bool {
    value.fract() == 0.0 && value.abs() < 9.0e15
}

/// The exposition as OTLP metrics, cumulative from `start_ns`, read at `now_ns`. Returns the
/// metrics and how many data points they hold.
pub(crate) fn convert(text: &str, start_ns: u64, now_ns: u64) -> (Vec<Metric>, u64) {
    let mut metrics: Vec<Metric> = Vec::new();
    let mut points = 0;
    for family in parse(text) {
        let naming = naming(family.name, family.kind);
        let point = |labels: &[(&str, String)], value: Number| NumberDataPoint {
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            value: Some(value),
            attributes: attributes(labels, naming.semconv),
        };
        let integers = family.samples.iter().all(|s| integral(s.value));
        let data = match family.kind {
            "counter" => {
                let total = format!("{}_total", family.name);
                Data::Sum(Sum {
                    data_points: family
                        .samples
                        .iter()
                        .filter(|s| s.name == total)
                        .map(|s| point(&s.labels, number(s.value, integers)))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            }
            "gauge" => Data::Gauge(Gauge {
                data_points: family
                    .samples
                    .iter()
                    .filter(|s| s.name == family.name)
                    .map(|s| point(&s.labels, number(s.value, integers)))
                    .collect(),
            }),
            "info" => Data::Gauge(Gauge {
                data_points: family
                    .samples
                    .iter()
                    .map(|s| point(&s.labels, Number::Int(1)))
                    .collect(),
            }),
            "histogram" => Data::Histogram(Histogram {
                data_points: histogram_points(&family, naming.semconv, start_ns, now_ns),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            _ => continue,
        };
        points += match &data {
            Data::Sum(sum) => sum.data_points.len(),
            Data::Gauge(gauge) => gauge.data_points.len(),
            Data::Histogram(histogram) => histogram.data_points.len(),
        } as u64;
        // Two families under one name (the connection outcomes): their points join.
        match metrics.iter_mut().find(|m| m.name == naming.name) {
            Some(Metric {
                data: Some(Data::Sum(existing)),
                description,
                ..
            }) if matches!(data, Data::Sum(_)) => {
                if let Data::Sum(sum) = data {
                    existing.data_points.extend(sum.data_points);
                }
                CONNECTIONS_HELP.clone_into(description);
            }
            _ => metrics.push(Metric {
                name: naming.name,
                description: family.help,
                unit: naming.unit.to_owned(),
                data: Some(data),
            }),
        }
    }
    (metrics, points)
}

/// A histogram family's points, one per label set: Prometheus's cumulative buckets become
/// per-bucket counts, the last one `+Inf`'s.
fn histogram_points(
    family: &Family<'_>,
    semconv: bool,
    start_ns: u64,
    now_ns: u64,
) -> Vec<HistogramDataPoint> {
    let bucket = format!("{}_bucket", family.name);
    let sum = format!("{}_sum", family.name);
    let count = format!("{}_count", family.name);
    // One per label set other than `le`, in the order they first appear.
    struct Pending<'a> {
        labels: Vec<(&'a str, String)>,
        point: HistogramDataPoint,
        /// (`le`, cumulative count)
        buckets: Vec<(f64, f64)>,
    }
    let mut points: Vec<Pending<'_>> = Vec::new();
    for sample in &family.samples {
        let labels: Vec<(&str, String)> = sample
            .labels
            .iter()
            .filter(|(label, _)| *label != "le")
            .cloned()
            .collect();
        let at = match points.iter().position(|p| p.labels == labels) {
            Some(at) => at,
            None => {
                points.push(Pending {
                    point: HistogramDataPoint {
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        count: 0,
                        sum: None,
                        bucket_counts: Vec::new(),
                        explicit_bounds: Vec::new(),
                        attributes: attributes(&labels, semconv),
                    },
                    labels,
                    buckets: Vec::new(),
                });
                points.len() - 1
            }
        };
        let pending = &mut points[at];
        if sample.name == bucket {
            let le = sample
                .labels
                .iter()
                .find(|(label, _)| *label == "le")
                .and_then(|(_, value)| match value.as_str() {
                    "+Inf" => Some(f64::INFINITY),
                    other => other.parse().ok(),
                });
            if let Some(le) = le {
                pending.buckets.push((le, sample.value));
            }
        } else if sample.name == sum {
            pending.point.sum = Some(sample.value);
        } else if sample.name == count {
            pending.point.count = sample.value as u64;
        }
    }
    points
        .into_iter()
        .map(|mut pending| {
            pending.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let point = &mut pending.point;
            let mut below = 0.0;
            for (le, cumulative) in pending.buckets {
                if le.is_finite() {
                    point.explicit_bounds.push(le);
                }
                point
                    .bucket_counts
                    .push((cumulative - below).max(0.0) as u64);
                below = cumulative;
            }
            pending.point
        })
        .collect()
}

/// What the metrics task needs.
pub(crate) struct MetricsTask {
    pub registry: Arc<Registry>,
    pub resource: Resource,
    pub interval: Duration,
    /// When the daemon started (Unix ns): the start of every cumulative point.
    pub start_ns: u64,
}

impl MetricsTask {
    /// Sends a snapshot every interval, and a last one when `stop` fires.
    pub(crate) async fn run(self, mut sender: Sender, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and nothing has been counted yet.
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = &mut stop => true,
            };
            self.export(&mut sender).await;
            if last {
                return;
            }
        }
    }

    async fn export(&self, sender: &mut Sender) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return;
        }
        let (metrics, points) = convert(&text, self.start_ns, super::unix_now_ns());
        let message = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                }],
            }],
        };
        sender.offered(points);
        sender.send(framed(&message), points).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::Metrics;

    const EXPOSITION: &str = r#"# HELP tcpobs_handshake_duration_seconds TCP handshake.
# TYPE tcpobs_handshake_duration_seconds histogram
tcpobs_handshake_duration_seconds_sum{role="client"} 0.003
tcpobs_handshake_duration_seconds_count{role="client"} 3
tcpobs_handshake_duration_seconds_bucket{le="0.001",role="client"} 1
tcpobs_handshake_duration_seconds_bucket{le="0.01",role="client"} 3
tcpobs_handshake_duration_seconds_bucket{le="+Inf",role="client"} 3
# HELP tcpobs_connections_opened Connections established.
# TYPE tcpobs_connections_opened counter
tcpobs_connections_opened_total{role="client"} 3
tcpobs_connections_opened_total{role="server"} 2
# HELP tcpobs_connect_failures Connections that never got past the handshake.
# TYPE tcpobs_connect_failures counter
tcpobs_connect_failures_total{reason="refused"} 1
tcpobs_connect_failures_total{reason="timeout"} 0
# HELP tcpobs_open_connections Live connections.
# TYPE tcpobs_open_connections gauge
tcpobs_open_connections{role="client",state="ESTABLISHED"} 4
# HELP tcpobs_sweep_duration_seconds Last sweep.
# TYPE tcpobs_sweep_duration_seconds gauge
tcpobs_sweep_duration_seconds 0.0025
# HELP tcpobs_probe Attach strategy.
# TYPE tcpobs_probe info
tcpobs_probe_info{family="state",strategy="tracepoint",programs="tp_btf"} 1
# HELP tcpobs_events Events from the kernel, by \"kind\".
# TYPE tcpobs_events counter
tcpobs_events_total{kind="a \"quoted\" one, and a \\"} 7
# EOF
"#;

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {metrics:#?}"))
    }

    fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
        attributes.iter().find(|kv| kv.key == key).map(|kv| {
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(super::super::proto::Value::String(s)) => s.clone(),
                other => format!("{other:?}"),
            }
        })
    }

    #[test]
    fn histograms_become_per_bucket_counts_under_the_conventions_names() {
        let (metrics, points) = convert(EXPOSITION, 10, 20);
        let handshake = find(&metrics, "system.network.tcp.handshake.duration");
        assert_eq!(handshake.unit, "s");
        assert_eq!(handshake.description, "TCP handshake.");
        let Some(Data::Histogram(histogram)) = &handshake.data else {
            panic!("{handshake:?}");
        };
        assert_eq!(
            histogram.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, [0.001, 0.01]);
        assert_eq!(point.bucket_counts, [1, 2, 0]);
        assert_eq!((point.count, point.sum), (3, Some(0.003)));
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (10, 20));
        assert_eq!(
            attribute(&point.attributes, "network.tcp.handshake.role").as_deref(),
            Some("client")
        );
        assert_eq!(points, 1 + 4 + 1 + 1 + 1 + 1);
    }

    #[test]
    fn connection_outcomes_are_one_metric() {
        let (metrics, _) = convert(EXPOSITION, 10, 20);
        let outcomes = find(&metrics, "system.network.tcp.connections");
        assert_eq!(outcomes.unit, "{connection}");
        assert_eq!(outcomes.description, CONNECTIONS_HELP);
        let Some(Data::Sum(sum)) = &outcomes.data else {
            panic!("{outcomes:?}");
        };
        assert!(sum.is_monotonic);
        let seen: Vec<(Option<String>, Option<String>, Option<Number>)> = sum
            .data_points
            .iter()
            .map(|p| {
                (
                    attribute(&p.attributes, "network.tcp.handshake.role"),
                    attribute(&p.attributes, "error.type"),
                    p.value,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some("client".into()), None, Some(Number::Int(3))),
                (Some("server".into()), None, Some(Number::Int(2))),
                (None, Some("refused".into()), Some(Number::Int(1))),
                (None, Some("timed_out".into()), Some(Number::Int(0))),
            ]
        );
        assert!(metrics.iter().all(|m| !m.name.contains("opened")));
    }

    #[test]
    fn other_families_keep_their_labels_under_tcpobs_names() {
        let (metrics, _) = convert(EXPOSITION, 10, 20);
        let open = find(&metrics, "tcpobs.open_connections");
        let Some(Data::Gauge(gauge)) = &open.data else {
            panic!("{open:?}");
        };
        assert_eq!(gauge.data_points[0].value, Some(Number::Int(4)));
        assert_eq!(
            attribute(&gauge.data_points[0].attributes, "state").as_deref(),
            Some("ESTABLISHED")
        );
        let sweep = find(&metrics, "tcpobs.sweep_duration");
        assert_eq!(sweep.unit, "s");
        let Some(Data::Gauge(gauge)) = &sweep.data else {
            panic!("{sweep:?}");
        };
        assert_eq!(gauge.data_points[0].value, Some(Number::Double(0.0025)));
        let probe = find(&metrics, "tcpobs.probe_info");
        let Some(Data::Gauge(gauge)) = &probe.data else {
            panic!("{probe:?}");
        };
        assert_eq!(
            attribute(&gauge.data_points[0].attributes, "programs").as_deref(),
            Some("tp_btf")
        );
        let events = find(&metrics, "tcpobs.events");
        assert_eq!(events.description, "Events from the kernel, by \"kind\".");
        let Some(Data::Sum(sum)) = &events.data else {
            panic!("{events:?}");
        };
        assert_eq!(
            attribute(&sum.data_points[0].attributes, "kind").as_deref(),
            Some("a \"quoted\" one, and a \\")
        );
    }

    /// The README's table is this module's.
    #[test]
    fn the_readme_shows_the_mapping() {
        let readme = include_str!("../../../../README.md");
        for (prom, otel, unit, difference) in MAPPING {
            let row = format!("| `{prom}` | `{otel}` | `{unit}` | {difference} |");
            assert!(readme.contains(&row), "README.md lacks the row\n{row}");
        }
    }

    /// Every family the daemon registers gets a name OpenTelemetry accepts, and no two
    /// families of different kinds share one.
    #[test]
    fn every_family_has_a_conventional_name() {
        let mut registry = Registry::default();
        let _metrics = Metrics::new(&mut registry, &[], 10);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let (metrics, points) = convert(&text, 1, 2);
        assert!(metrics.len() >= 20 && points > 0, "{metrics:#?}");
        let mut seen = std::collections::HashSet::new();
        for metric in &metrics {
            assert!(
                metric
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
                    && metric.name.contains('.'),
                "{}",
                metric.name
            );
            assert!(seen.insert(metric.name.clone()), "{} twice", metric.name);
        }
        for name in [
            "system.network.tcp.handshake.duration",
            "system.network.tcp.connection.duration",
            "system.network.tcp.rtt",
            "system.network.tcp.connections",
            "dns.lookup.duration",
            "tcpobs.response_first_byte",
            "tcpobs.exchanges",
        ] {
            assert!(seen.contains(name), "{name} in {seen:?}");
        }
    }
}
