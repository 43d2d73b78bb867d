//! Log-volume control (the seed's "why reduce logs"): which events to write, and sampling.
//!
//! - `--events connections`: one `connection` event per connection, plus `anomaly` events,
//!   failed name resolutions (`dns`) and failed TLS handshakes that no connection event shows
//!   (`tls`: not tied to one, or ended after it closed); `exchanges` adds one event per
//!   exchange, resolution and handshake; `anomalies` writes only anomaly events, failed
//!   resolutions and handshakes, and the connections that breached a threshold, reset, failed
//!   or got stuck; `none` writes nothing.
//! - `--sample first=N,thereafter=M`: per second, the first N events, then every Mth. What is
//!   left out is counted, never silently lost.

use std::sync::atomic::{AtomicU64, Ordering};

use super::writer::{DropReason, WriteFailure};
use crate::{
    config::live::{EventSelection, Sample, Thresholds, ns},
    model::{CloseKind, ConnectionRecord, Record},
};

/// The type of an event: where [`selected`] routes a record, the `type` of its JSON, and the
/// `type` label of the per-type output counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Connection,
    Exchange,
    Anomaly,
    Dns,
    Tls,
}

impl EventType {
    /// Every type, in [`EventType::index`] order.
    pub(crate) const ALL: [Self; 5] = [
        Self::Connection,
        Self::Exchange,
        Self::Anomaly,
        Self::Dns,
        Self::Tls,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Exchange => "exchange",
            Self::Anomaly => "anomaly",
            Self::Dns => "dns",
            Self::Tls => "tls",
        }
    }

    /// Its place in the per-type counters ([`OutputCounts`]).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Events written, left out by sampling and dropped, per [`EventType::index`]; failed
/// writes; bytes waiting for the writer. Every event selected and sampled in is, in the end,
/// either written or dropped for one reason.
#[derive(Debug, Default)]
pub(crate) struct OutputCounts {
    pub(crate) written: [AtomicU64; EventType::ALL.len()],
    pub(crate) sampled_out: [AtomicU64; EventType::ALL.len()],
    /// Per [`DropReason`], then per type.
    pub(crate) dropped: [[AtomicU64; EventType::ALL.len()]; DropReason::ALL.len()],
    /// Failed writes, per [`WriteFailure`].
    pub(crate) errors: [AtomicU64; WriteFailure::ALL.len()],
    pub(crate) queued_bytes: AtomicU64,
}

impl OutputCounts {
    pub(crate) fn get(&self) -> ([u64; EventType::ALL.len()], [u64; EventType::ALL.len()]) {
        (
            self.written.each_ref().map(|n| n.load(Ordering::Relaxed)),
            self.sampled_out
                .each_ref()
                .map(|n| n.load(Ordering::Relaxed)),
        )
    }

    /// Events dropped, per [`DropReason`] then type.
    pub(crate) fn dropped(&self) -> [[u64; EventType::ALL.len()]; DropReason::ALL.len()] {
        self.dropped
            .each_ref()
            .map(|by_type| by_type.each_ref().map(|n| n.load(Ordering::Relaxed)))
    }

    /// Failed writes, per [`WriteFailure`].
    pub(crate) fn errors(&self) -> [u64; WriteFailure::ALL.len()] {
        self.errors.each_ref().map(|n| n.load(Ordering::Relaxed))
    }
}

/// Per-second sampler: the first `first` events of each second, then every `thereafter`-th.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sampler {
    sample: Option<Sample>,
    second: u64,
    seen: u64,
}

impl Sampler {
    pub(crate) fn new(sample: Option<Sample>) -> Self {
        Self {
            sample,
            second: u64::MAX,
            seen: 0,
        }
    }

    /// Whether the next event is written; `now_ns` reads the clock, only when sampling.
    pub(crate) fn admit(&mut self, now_ns: impl FnOnce() -> u64) -> bool {
        let Some(Sample { first, thereafter }) = self.sample else {
            return true;
        };
        let second = now_ns() / 1_000_000_000;
        if second != self.second {
            (self.second, self.seen) = (second, 0);
        }
        self.seen += 1;
        let (first, thereafter) = (u64::from(first), u64::from(thereafter.max(1)));
        self.seen <= first || (self.seen - first).is_multiple_of(thereafter)
    }
}

/// The thresholds [`anomalies_of`] compares a connection with, in nanoseconds (0: off),
/// worked out once per change of settings rather than once per connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnomalyLimits {
    handshake_ns: u64,
    first_byte_ns: u64,
    idle_ns: u64,
    close_wait_ns: u64,
    resets: bool,
}

impl AnomalyLimits {
    pub fn of(thresholds: &Thresholds) -> Self {
        Self {
            handshake_ns: ns(thresholds.handshake_s),
            first_byte_ns: ns(thresholds.first_byte_s),
            idle_ns: ns(thresholds.idle_s),
            close_wait_ns: ns(thresholds.close_wait_s),
            resets: thresholds.resets,
        }
    }
}

/// Why a closed connection is an anomaly: each reason at most once, in a fixed order (empty if
/// it is not one). Kept inline: one is worked out for every connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Anomalies {
    names: [&'static str; Anomalies::REASONS],
    len: usize,
}

impl Anomalies {
    /// How many reasons [`anomalies_of`] can give at once.
    const REASONS: usize = 8;

    fn push(&mut self, name: &'static str) {
        self.names[self.len] = name;
        self.len += 1;
    }
}

impl std::ops::Deref for Anomalies {
    type Target = [&'static str];

    fn deref(&self) -> &Self::Target {
        &self.names[..self.len]
    }
}

/// Why a closed connection is an anomaly (empty if it is not).
pub fn anomalies_of(record: &ConnectionRecord, limits: &AnomalyLimits) -> Anomalies {
    let over = |value: Option<u64>, limit: u64| limit != 0 && value.is_some_and(|v| v > limit);
    let mut found = Anomalies::default();
    if record.connect_failure.is_some() {
        found.push("connect_failure");
    }
    if over(record.connect_ns, limits.handshake_ns) {
        found.push("slow_handshake");
    }
    if over(record.max_response_begin_ns, limits.first_byte_ns) {
        found.push("slow_first_byte");
    }
    if over(record.max_idle_ns, limits.idle_ns) {
        found.push("long_idle");
    }
    if let Some(close) = &record.close {
        if close.close_wait_unclosed || over(close.close_wait_ns, limits.close_wait_ns) {
            found.push("close_wait");
        }
        match close.kind {
            CloseKind::Rst if limits.resets => found.push("reset"),
            CloseKind::Timeout => found.push("timeout"),
            _ => {}
        }
    }
    if !record.stuck.is_empty() {
        found.push("stuck");
    }
    if record.tls().is_some_and(|tls| tls.ok == Some(false)) {
        found.push("tls_failure");
    }
    found
}

/// Which event a record makes under an event selection, if any.
pub(crate) fn selected(
    selection: EventSelection,
    record: &Record,
    limits: &AnomalyLimits,
) -> Option<EventType> {
    use EventSelection as S;
    match (selection, record) {
        (S::None, _) | (_, Record::Opened(_) | Record::Unstuck(..)) => None,
        (S::Connections | S::Exchanges, Record::Connection(_)) => Some(EventType::Connection),
        (S::Anomalies, Record::Connection(connection)) => {
            (!anomalies_of(connection, limits).is_empty()).then_some(EventType::Connection)
        }
        (S::Exchanges, Record::Exchange(_)) => Some(EventType::Exchange),
        (_, Record::Exchange(_)) => None,
        (_, Record::Anomaly(_)) => Some(EventType::Anomaly),
        (S::Exchanges, Record::Dns(_)) => Some(EventType::Dns),
        // A failed resolution has no connection record to show it.
        (_, Record::Dns(dns)) => dns.failure().is_some().then_some(EventType::Dns),
        (S::Exchanges, Record::Tls(_)) => Some(EventType::Tls),
        // A failed handshake on a connection shows in the connection record, unless it
        // ended after the connection closed.
        (_, Record::Tls(tls)) => {
            (!tls.ok && (tls.conn_id.is_none() || tls.after_close)).then_some(EventType::Tls)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Addrs, Close, CloseOriginator, Role, StuckSet, TlsRecord};

    /// The counters are indexed by `EventType::index`: `ALL` must follow it.
    #[test]
    fn event_types_follow_their_index() {
        for (index, event_type) in EventType::ALL.iter().enumerate() {
            assert_eq!(event_type.index(), index, "{event_type:?}");
        }
    }

    #[test]
    fn sampler_keeps_first_n_then_every_mth_per_second() {
        let mut sampler = Sampler::new(Some(Sample {
            first: 3,
            thereafter: 4,
        }));
        let kept: Vec<bool> = (0..12).map(|_| sampler.admit(|| 5_000_000_000)).collect();
        assert_eq!(
            kept,
            [
                true, true, true, false, false, false, true, false, false, false, true, false
            ]
        );
        assert!(sampler.admit(|| 6_000_000_000), "a new second starts over");
        assert!(Sampler::new(None).admit(|| 0));
    }

    fn connection() -> ConnectionRecord {
        ConnectionRecord {
            id: 1,
            role: Role::Client,
            partial: None,
            addrs: Addrs::new(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ),
            process: None,
            start_ns: 0,
            established_ns: Some(1),
            connect_ns: Some(1_000),
            connect_failure: None,
            lifetime_ns: 10,
            exchanges: 1,
            bytes_sent: 1,
            bytes_received: 1,
            retransmits: 0,
            close: Some(Close {
                at_ns: 10,
                originator: CloseOriginator::Client,
                closed_by: None,
                kind: CloseKind::Fin,
                rst: None,
                final_state: 5,
                teardown_ns: None,
                close_wait_ns: None,
                close_wait_unclosed: false,
                errno: 0,
            }),
            tcp: None,
            max_response_begin_ns: Some(2_000_000_000),
            max_idle_ns: None,
            stuck: StuckSet::default(),
            stuck_at_end: None,
            spans: None,
            last_exchange: None,
            diag: Default::default(),
        }
    }

    #[test]
    fn anomalies_follow_the_thresholds() {
        let limits = |thresholds: &Thresholds| AnomalyLimits::of(thresholds);
        let thresholds = Thresholds::default();
        assert_eq!(
            *anomalies_of(&connection(), &limits(&thresholds)),
            ["slow_first_byte"]
        );
        let relaxed = Thresholds {
            first_byte_s: 0.0,
            ..thresholds
        };
        assert!(anomalies_of(&connection(), &limits(&relaxed)).is_empty());
        let mut reset = connection();
        reset.close.as_mut().unwrap().kind = CloseKind::Rst;
        assert_eq!(*anomalies_of(&reset, &limits(&relaxed)), ["reset"]);
        let quiet = Thresholds {
            resets: false,
            ..relaxed
        };
        assert!(anomalies_of(&reset, &limits(&quiet)).is_empty());
        // Every reason at once fits.
        let mut worst = reset.clone();
        worst.connect_failure = Some(crate::model::ConnectFailure::Timeout);
        worst.connect_ns = Some(u64::MAX);
        worst.max_idle_ns = Some(u64::MAX);
        worst.close.as_mut().unwrap().close_wait_unclosed = true;
        worst.stuck.insert(crate::model::Stuck::Idle);
        let all = Thresholds {
            handshake_s: 1.0,
            first_byte_s: 1.0,
            idle_s: 1.0,
            ..thresholds
        };
        assert_eq!(
            *anomalies_of(&worst, &limits(&all)),
            [
                "connect_failure",
                "slow_handshake",
                "slow_first_byte",
                "long_idle",
                "close_wait",
                "reset",
                "stuck"
            ]
        );
        let plain = Record::Connection(connection());
        let (relaxed, thresholds) = (limits(&relaxed), limits(&thresholds));
        assert_eq!(selected(EventSelection::Anomalies, &plain, &relaxed), None);
        assert_eq!(
            selected(EventSelection::Anomalies, &plain, &thresholds),
            Some(EventType::Connection)
        );
        assert_eq!(
            selected(EventSelection::Connections, &plain, &relaxed),
            Some(EventType::Connection)
        );
        assert_eq!(selected(EventSelection::None, &plain, &thresholds), None);
    }

    #[test]
    fn failed_handshakes_are_written_where_no_connection_event_shows_them() {
        let handshake = |ok, conn_id, after_close| {
            Record::Tls(TlsRecord {
                conn_id,
                role: Role::Server,
                addrs: None,
                process: None,
                start_ns: 0,
                duration_ns: 1,
                ok,
                calls: 1,
                after_close,
            })
        };
        let thresholds = AnomalyLimits::of(&Thresholds::default());
        let written = |record: &Record| {
            [EventSelection::Connections, EventSelection::Anomalies]
                .map(|selection| selected(selection, record, &thresholds).is_some())
        };
        assert_eq!(written(&handshake(false, None, false)), [true, true]);
        assert_eq!(written(&handshake(false, Some(7), true)), [true, true]);
        assert_eq!(written(&handshake(false, Some(7), false)), [false, false]);
        assert_eq!(written(&handshake(true, Some(7), true)), [false, false]);
        assert_eq!(
            selected(
                EventSelection::Exchanges,
                &handshake(true, Some(7), false),
                &thresholds
            ),
            Some(EventType::Tls)
        );
    }
}
