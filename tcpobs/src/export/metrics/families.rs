//! The families' shapes: bucket layouts, the table of per-connection histograms (name, help,
//! buckets) indexed by [`Hist`], and the bounded label values whose series exist from the
//! start.

use prometheus_client::metrics::{
    counter::Counter,
    family::{Family, MetricConstructor},
    histogram::exponential_buckets_range,
};

use super::{histogram::Histogram, labels::ConnLabels};
use crate::model::{CloseKind, CloseOriginator, ExchangeClass, Role};

/// Bucket layouts chosen for the quantity.
#[derive(Clone, Copy, Debug)]
pub(super) enum Buckets {
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

/// Nanoseconds observed, seconds exported.
pub(super) const NS: f64 = 1e-9;

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        match self {
            Self::Latency => Histogram::new(exponential_buckets_range(0.000_05, 60.0, 22), NS),
            Self::Idle => Histogram::new(exponential_buckets_range(0.001, 3600.0, 23), NS),
            Self::Lifetime => Histogram::new(exponential_buckets_range(0.001, 86_400.0, 25), NS),
            Self::Count => Histogram::new(
                [
                    1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                    5000.0, 10_000.0,
                ],
                1.0,
            ),
            Self::Stuck => Histogram::new(exponential_buckets_range(1.0, 86_400.0, 18), NS),
        }
    }
}

/// The per-connection histograms, labelled by role (and the optional dimensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hist {
    Handshake,
    Duration,
    ExchangesPerConnection,
    Request,
    FirstByte,
    Response,
    IdleBefore,
    IdleAfter,
    Transfer,
    Session,
    Teardown,
    CloseWait,
    Rtt,
    RwndLimited,
    SndbufLimited,
}

/// (histogram, name, help, buckets), in `Hist` order.
pub(super) const HISTOGRAMS: [(Hist, &str, &str, Buckets); 15] = [
    (
        Hist::Handshake,
        "tcpobs_handshake_duration_seconds",
        "TCP handshake: SYN_SENT (client) or SYN_RECV (server) to ESTABLISHED",
        Buckets::Latency,
    ),
    (
        Hist::Duration,
        "tcpobs_connection_duration_seconds",
        "Connection lifetime, start to close, of connections seen from their start",
        Buckets::Lifetime,
    ),
    (
        Hist::ExchangesPerConnection,
        "tcpobs_exchanges_per_connection",
        "Request/response exchanges per closed connection (1 everywhere means churn)",
        Buckets::Count,
    ),
    (
        Hist::Request,
        "tcpobs_request_duration_seconds",
        "First to last byte of a request",
        Buckets::Latency,
    ),
    (
        Hist::FirstByte,
        "tcpobs_response_first_byte_seconds",
        "Last request byte to first response byte (time to first byte)",
        Buckets::Latency,
    ),
    (
        Hist::Response,
        "tcpobs_response_duration_seconds",
        "Last request byte to last response byte",
        Buckets::Latency,
    ),
    (
        Hist::IdleBefore,
        "tcpobs_idle_before_request_seconds",
        "ESTABLISHED to the first request byte (first exchange only)",
        Buckets::Idle,
    ),
    (
        Hist::IdleAfter,
        "tcpobs_idle_after_response_seconds",
        "Last response byte to the next request, or to the first FIN/RST",
        Buckets::Idle,
    ),
    (
        Hist::Transfer,
        "tcpobs_response_transfer_seconds",
        "First to last response byte",
        Buckets::Latency,
    ),
    (
        Hist::Session,
        "tcpobs_session_duration_seconds",
        "Connection start to the end of each exchange (to the close for the last)",
        Buckets::Lifetime,
    ),
    (
        Hist::Teardown,
        "tcpobs_teardown_duration_seconds",
        "First FIN or RST to CLOSE",
        Buckets::Latency,
    ),
    (
        Hist::CloseWait,
        "tcpobs_close_wait_duration_seconds",
        "Peer's FIN to the application's close, for connections the peer closed first",
        Buckets::Idle,
    ),
    (
        Hist::Rtt,
        "tcpobs_rtt_seconds",
        "The kernel's smoothed round-trip time (srtt) of each connection at close",
        Buckets::Latency,
    ),
    (
        Hist::RwndLimited,
        "tcpobs_rwnd_limited_seconds",
        "Time a connection's sending was limited by the peer's receive window (tcp_info \
         rwnd_limited: the peer application not reading), per connection that sent data",
        Buckets::Idle,
    ),
    (
        Hist::SndbufLimited,
        "tcpobs_sndbuf_limited_seconds",
        "Time a connection's sending was limited by its own send buffer (tcp_info \
         sndbuf_limited: the application writing faster than the path carries), per \
         connection that sent data",
        Buckets::Idle,
    ),
];

pub(super) type Histograms = Family<ConnLabels<1>, Histogram, Buckets>;
pub(super) type Counters<const N: usize> = Family<ConnLabels<N>, Counter>;

pub(super) const ROLES: [Role; 2] = [Role::Client, Role::Server];
pub(super) const CLASSES: [ExchangeClass; 4] = [
    ExchangeClass::Unique,
    ExchangeClass::Start,
    ExchangeClass::Continue,
    ExchangeClass::Last,
];
pub(super) const ORIGINATORS: [CloseOriginator; 4] = [
    CloseOriginator::Client,
    CloseOriginator::Server,
    CloseOriginator::Timeout,
    CloseOriginator::Unknown,
];
pub(super) const KINDS: [CloseKind; 4] = [
    CloseKind::Fin,
    CloseKind::Rst,
    CloseKind::Timeout,
    CloseKind::Error,
];

pub(super) fn index_of<T: PartialEq>(all: &[T], value: T) -> usize {
    all.iter().position(|v| *v == value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel folds the per-exchange histograms in `tcpobs_common::folds::hist` order, with
    /// the layouts of `folds::LAYOUT`: the same histograms, in the same order, with the same
    /// buckets as here.
    #[test]
    fn the_kernels_histograms_are_these() {
        use tcpobs_common::folds::{LAYOUT, hist, layout};
        let names = [
            (hist::REQUEST, Hist::Request),
            (hist::FIRST_BYTE, Hist::FirstByte),
            (hist::RESPONSE, Hist::Response),
            (hist::IDLE_BEFORE, Hist::IdleBefore),
            (hist::IDLE_AFTER, Hist::IdleAfter),
            (hist::TRANSFER, Hist::Transfer),
            (hist::SESSION, Hist::Session),
        ];
        for (kernel, daemon) in names {
            assert_eq!(Hist::Request as usize + kernel, daemon as usize);
            let expected = match HISTOGRAMS[daemon as usize].3 {
                Buckets::Latency => layout::LATENCY,
                Buckets::Idle => layout::IDLE,
                Buckets::Lifetime => layout::LIFETIME,
                other => panic!("{daemon:?} has {other:?} buckets, which the kernel lacks"),
            };
            assert_eq!(LAYOUT[kernel], expected, "{daemon:?}");
        }
        assert_eq!(names.len(), hist::COUNT);
    }

    /// Families are indexed by `Hist as usize`: the table must follow the enum's order.
    #[test]
    fn histogram_table_follows_the_enum() {
        for (index, (hist, ..)) in HISTOGRAMS.iter().enumerate() {
            assert_eq!(*hist as usize, index, "{hist:?}");
        }
    }
}
