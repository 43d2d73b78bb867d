//! Prometheus metrics: one [`Metrics`] of typed families, registered once, updated from the
//! tracker's records; counts that live in the tracker, the reader and the kernel are read at
//! scrape time by [`collect`]. Names are `tcpobs_*` in base units; counters end in `_total`
//! (prometheus-client adds the suffix).

pub mod collect;
pub mod labels;

use std::sync::{Arc, Mutex};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets_range},
    },
    registry::Registry,
};

use self::labels::{ConnLabels, Dims, Fixed, LabelPolicy, LabelSpec};
use crate::model::{Phase, Record};

/// Bucket layouts chosen for the quantity.
#[derive(Clone, Copy, Debug)]
enum Buckets {
    /// 50 µs to 60 s.
    Latency,
    /// 1 ms to 1 h.
    Idle,
    /// 1 ms to 1 day.
    Lifetime,
    /// 1 to 10,000.
    Count,
    /// 1 s to 1 day (stuck connections are stuck for at least their threshold).
    Stuck,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        match self {
            Self::Latency => Histogram::new(exponential_buckets_range(0.000_05, 60.0, 22)),
            Self::Idle => Histogram::new(exponential_buckets_range(0.001, 3600.0, 23)),
            Self::Lifetime => Histogram::new(exponential_buckets_range(0.001, 86_400.0, 25)),
            Self::Count => Histogram::new([
                1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                10_000.0,
            ]),
            Self::Stuck => Histogram::new(exponential_buckets_range(1.0, 86_400.0, 18)),
        }
    }
}

type Histograms<const N: usize> = Family<ConnLabels<N>, Histogram, Buckets>;
type Counters<const N: usize> = Family<ConnLabels<N>, Counter>;

/// Every family tcpobs updates on events. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    handshake: Histograms<1>,
    duration: Histograms<1>,
    exchanges_per_connection: Histograms<1>,
    request: Histograms<1>,
    first_byte: Histograms<1>,
    response: Histograms<1>,
    idle_before: Histograms<1>,
    idle_after: Histograms<1>,
    transfer: Histograms<1>,
    session: Histograms<1>,
    teardown: Histograms<1>,
    close_wait: Histograms<1>,
    opened: Counters<1>,
    closed: Counters<3>,
    exchanges: Counters<2>,
    connect_failures: Family<Fixed<1>, Counter>,
    anomalies: Family<Fixed<1>, Counter>,
    stuck: Family<Fixed<1>, Gauge>,
    stuck_duration: Family<Fixed<1>, Histogram, Buckets>,
    delay: Histogram,
    sweep_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    policy: Arc<Mutex<LabelPolicy>>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &mut Registry, labels: &[LabelSpec], series_cap: usize) -> Self {
        let histograms = |buckets| Histograms::<1>::new_with_constructor(buckets);
        let metrics = Self {
            handshake: histograms(Buckets::Latency),
            duration: histograms(Buckets::Lifetime),
            exchanges_per_connection: histograms(Buckets::Count),
            request: histograms(Buckets::Latency),
            first_byte: histograms(Buckets::Latency),
            response: histograms(Buckets::Latency),
            idle_before: histograms(Buckets::Idle),
            idle_after: histograms(Buckets::Idle),
            transfer: histograms(Buckets::Latency),
            session: histograms(Buckets::Lifetime),
            teardown: histograms(Buckets::Latency),
            close_wait: histograms(Buckets::Idle),
            opened: Counters::default(),
            closed: Counters::default(),
            exchanges: Counters::default(),
            connect_failures: Family::default(),
            anomalies: Family::default(),
            stuck: Family::default(),
            stuck_duration: Family::new_with_constructor(Buckets::Stuck),
            delay: Histogram::new(exponential_buckets_range(0.000_1, 10.0, 16)),
            sweep_duration: Gauge::default(),
            policy: Arc::new(Mutex::new(LabelPolicy::new(labels, series_cap))),
        };
        registry.register(
            "tcpobs_handshake_duration_seconds",
            "TCP handshake: SYN_SENT (client) or SYN_RECV (server) to ESTABLISHED",
            metrics.handshake.clone(),
        );
        registry.register(
            "tcpobs_connection_duration_seconds",
            "Connection lifetime, start to close, of connections seen from their start",
            metrics.duration.clone(),
        );
        registry.register(
            "tcpobs_exchanges_per_connection",
            "Request/response exchanges per closed connection (1 everywhere means churn)",
            metrics.exchanges_per_connection.clone(),
        );
        registry.register(
            "tcpobs_request_duration_seconds",
            "First to last byte of a request",
            metrics.request.clone(),
        );
        registry.register(
            "tcpobs_response_first_byte_seconds",
            "Last request byte to first response byte (time to first byte)",
            metrics.first_byte.clone(),
        );
        registry.register(
            "tcpobs_response_duration_seconds",
            "Last request byte to last response byte",
            metrics.response.clone(),
        );
        registry.register(
            "tcpobs_idle_before_request_seconds",
            "ESTABLISHED to the first request byte (first exchange only)",
            metrics.idle_before.clone(),
        );
        registry.register(
            "tcpobs_idle_after_response_seconds",
            "Last response byte to the next request, or to the first FIN/RST",
            metrics.idle_after.clone(),
        );
        registry.register(
            "tcpobs_response_transfer_seconds",
            "First to last response byte",
            metrics.transfer.clone(),
        );
        registry.register(
            "tcpobs_session_duration_seconds",
            "Connection start to the end of each exchange (to the close for the last)",
            metrics.session.clone(),
        );
        registry.register(
            "tcpobs_teardown_duration_seconds",
            "First FIN or RST to CLOSE",
            metrics.teardown.clone(),
        );
        registry.register(
            "tcpobs_close_wait_duration_seconds",
            "Peer's FIN to the application's close, for connections the peer closed first",
            metrics.close_wait.clone(),
        );
        registry.register(
            "tcpobs_connections_opened",
            "Connections established",
            metrics.opened.clone(),
        );
        registry.register(
            "tcpobs_connections_closed",
            "Connections closed (failed connects excluded), by who closed first and how",
            metrics.closed.clone(),
        );
        registry.register(
            "tcpobs_exchanges",
            "Request/response exchanges, by reuse class",
            metrics.exchanges.clone(),
        );
        registry.register(
            "tcpobs_connect_failures",
            "Connections that never got past the handshake, by reason",
            metrics.connect_failures.clone(),
        );
        registry.register(
            "tcpobs_anomalies",
            "Live connections flagged as stuck, by phase (each once per phase)",
            metrics.anomalies.clone(),
        );
        registry.register(
            "tcpobs_stuck_connections",
            "Live connections stuck right now, by phase (as of the last sweep)",
            metrics.stuck.clone(),
        );
        registry.register(
            "tcpobs_stuck_duration_seconds",
            "How long connections stayed stuck, observed when the episode ended, by phase",
            metrics.stuck_duration.clone(),
        );
        registry.register(
            "tcpobs_event_delay_seconds",
            "From a connection's close in the kernel to its record reaching the outputs",
            metrics.delay.clone(),
        );
        registry.register(
            "tcpobs_sweep_duration_seconds",
            "How long the last hang-detection sweep took",
            metrics.sweep_duration.clone(),
        );
        metrics.prefill();
        metrics
    }

    /// Records how late a closed connection's record is, `now_ns` being the kernel clock.
    pub fn observe_delay(&self, record: &Record, now_ns: u64) {
        if let Record::Connection(connection) = record
            && let Some(close) = &connection.close
        {
            self.delay.observe(secs(now_ns.saturating_sub(close.at_ns)));
        }
    }

    /// Records how long a sweep took.
    pub fn set_sweep_duration(&self, duration: std::time::Duration) {
        self.sweep_duration.set(duration.as_secs_f64());
    }

    /// Creates the bounded series up front, so that every name exists from the first scrape
    /// and rates and alerts see zeros rather than absent series.
    fn prefill(&self) {
        let other = self
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .other();
        for role in ["client", "server"] {
            let labels = ConnLabels {
                fixed: [("role", role)],
                dims: other.clone(),
            };
            let _ = self.opened.get_or_create(&labels);
            for family in [
                &self.handshake,
                &self.duration,
                &self.exchanges_per_connection,
                &self.request,
                &self.first_byte,
                &self.response,
                &self.idle_before,
                &self.idle_after,
                &self.transfer,
                &self.session,
                &self.teardown,
                &self.close_wait,
            ] {
                let _ = family.get_or_create(&labels);
            }
            for class in ["unique", "start", "continue", "last"] {
                let _ = self.exchanges.get_or_create(&ConnLabels {
                    fixed: [("role", role), ("class", class)],
                    dims: other.clone(),
                });
            }
            for (originator, kind) in [
                ("client", "fin"),
                ("server", "fin"),
                ("client", "rst"),
                ("server", "rst"),
                ("timeout", "timeout"),
            ] {
                let _ = self.closed.get_or_create(&ConnLabels {
                    fixed: [
                        ("role", role),
                        ("close_originator", originator),
                        ("close_kind", kind),
                    ],
                    dims: other.clone(),
                });
            }
        }
        for reason in ["refused", "timeout", "unreachable", "other"] {
            let _ = self.connect_failures.get_or_create(&[("reason", reason)]);
        }
        for phase in Phase::ALL {
            let labels = [("phase", phase.as_str())];
            self.stuck.get_or_create(&labels).set(0);
            let _ = self.anomalies.get_or_create(&labels);
            let _ = self.stuck_duration.get_or_create(&labels);
        }
    }

    fn dims(&self, addrs: &crate::model::Addrs, process: Option<&crate::model::Process>) -> Dims {
        self.policy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .dims(addrs, process)
    }

    /// Updates the families for one record.
    pub fn observe(&self, record: &Record) {
        match record {
            Record::Opened(opened) => {
                let labels = ConnLabels {
                    fixed: [("role", opened.role.as_str())],
                    dims: self.dims(&opened.addrs, opened.process.as_ref()),
                };
                self.opened.get_or_create(&labels).inc();
                self.handshake
                    .get_or_create(&labels)
                    .observe(secs(opened.connect_ns));
            }
            Record::Connection(connection) => {
                if let Some(failure) = connection.connect_failure {
                    self.connect_failures
                        .get_or_create(&[("reason", failure.as_str())])
                        .inc();
                } else if let Some(close) = &connection.close {
                    let dims = self.dims(&connection.addrs, connection.process.as_ref());
                    let role = connection.role.as_str();
                    self.closed
                        .get_or_create(&ConnLabels {
                            fixed: [
                                ("role", role),
                                ("close_originator", close.originator.as_str()),
                                ("close_kind", close.kind.as_str()),
                            ],
                            dims: dims.clone(),
                        })
                        .inc();
                    let labels = ConnLabels {
                        fixed: [("role", role)],
                        dims,
                    };
                    if connection.partial.is_none() {
                        self.duration
                            .get_or_create(&labels)
                            .observe(secs(connection.lifetime_ns));
                        self.exchanges_per_connection
                            .get_or_create(&labels)
                            .observe(f64::from(connection.exchanges));
                    }
                    for (family, value) in [
                        (&self.teardown, close.teardown_ns),
                        (&self.close_wait, close.close_wait_ns),
                    ] {
                        if let Some(ns) = value {
                            family.get_or_create(&labels).observe(secs(ns));
                        }
                    }
                }
                if let Some((phase, duration)) = connection.stuck_at_end {
                    self.unstuck(phase, duration);
                }
            }
            Record::Exchange(exchange) => {
                let dims = self.dims(&exchange.addrs, exchange.process.as_ref());
                let role = exchange.role.as_str();
                self.exchanges
                    .get_or_create(&ConnLabels {
                        fixed: [("role", role), ("class", exchange.class.as_str())],
                        dims: dims.clone(),
                    })
                    .inc();
                let labels = ConnLabels {
                    fixed: [("role", role)],
                    dims,
                };
                for (family, value) in [
                    (&self.request, exchange.request_ns),
                    (&self.first_byte, exchange.response_begin_ns),
                    (&self.response, exchange.response_ns),
                    (&self.idle_before, exchange.idle_before_ns),
                    (&self.idle_after, exchange.idle_after_ns),
                    (&self.transfer, exchange.response_end_ns),
                    (&self.session, Some(exchange.session_ns)),
                ] {
                    if let Some(ns) = value {
                        family.get_or_create(&labels).observe(secs(ns));
                    }
                }
            }
            Record::Anomaly(anomaly) => {
                self.anomalies
                    .get_or_create(&[("phase", anomaly.phase.as_str())])
                    .inc();
            }
            Record::Unstuck(phase, duration) => self.unstuck(*phase, *duration),
        }
    }

    fn unstuck(&self, phase: Phase, duration_ns: u64) {
        self.stuck_duration
            .get_or_create(&[("phase", phase.as_str())])
            .observe(secs(duration_ns));
    }

    /// Sets the stuck-connection gauge from a sweep (indexed like [`Phase::ALL`]).
    pub fn set_stuck(&self, stuck: &[u64; 5]) {
        for (phase, count) in Phase::ALL.iter().zip(stuck) {
            self.stuck
                .get_or_create(&[("phase", phase.as_str())])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }
}
