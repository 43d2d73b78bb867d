//! The connection model of DESIGN §3: what the tracker produces and the outputs print.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds (the kernel's clock) and durations nanoseconds;
//! outputs convert to wall-clock timestamps and seconds.
//!
//! The records themselves are here; what they are made of is in submodules: the values they
//! are classified by (`kinds`), who a connection is (`identity`), how a live connection can
//! be stuck (`stuck`), the library calls around it, name resolutions and TLS handshakes
//! (`libcalls`), and its timeline (`timeline`).

mod identity;
mod kinds;
mod libcalls;
mod stuck;
mod timeline;

pub use self::{
    identity::{Addrs, Comm, Process},
    kinds::{
        CloseKind, CloseOriginator, ConnectFailure, ECONNREFUSED, ETIMEDOUT, ExchangeClass,
        PartialReason, Role, Side, errno_name, state_name,
    },
    libcalls::{DnsFailure, DnsLink, DnsRecord, Resolved, TlsLink, TlsRecord, eai_name},
    stuck::{Stuck, StuckSet},
    timeline::{ExchangeSpan, TIMELINE_EXCHANGES, Timeline, TimelineEntry, TimelineSpans},
};

/// How a closed connection ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Close {
    /// When the socket reached `CLOSE` (ns).
    pub at_ns: u64,
    pub originator: CloseOriginator,
    /// Which side sent the first FIN or RST, if any did.
    pub closed_by: Option<Side>,
    pub kind: CloseKind,
    /// Which side sent a reset, if one was sent.
    pub rst: Option<Side>,
    /// The state the socket left to reach `CLOSE`.
    pub final_state: u8,
    /// First FIN/RST to `CLOSE` (ns).
    pub teardown_ns: Option<u64>,
    /// Time spent in `CLOSE_WAIT`: peer's FIN to the application's close (ns).
    pub close_wait_ns: Option<u64>,
    /// The peer closed, and the application never closed its end.
    pub close_wait_unclosed: bool,
    /// `sk_err` at close (errno), 0 if none.
    pub errno: u32,
}

/// One connection, reported when it closes (or when tcpobs stops).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionRecord {
    /// tcpobs's id for the connection, shared with its exchange records.
    pub id: u64,
    pub role: Role,
    pub partial: Option<PartialReason>,
    pub addrs: Addrs,
    pub process: Option<Process>,
    /// SYN (or first sighting, for partial records) (ns).
    pub start_ns: u64,
    /// `ESTABLISHED` (ns), if seen.
    pub established_ns: Option<u64>,
    /// Handshake duration (ns).
    pub connect_ns: Option<u64>,
    pub connect_failure: Option<ConnectFailure>,
    /// Start to close, or to the moment tcpobs stopped (ns).
    pub lifetime_ns: u64,
    pub exchanges: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    /// `None` while the connection is still open.
    pub close: Option<Close>,
    /// The kernel's own TCP counters, read at close (`None` while open, or on a kernel
    /// without them).
    pub tcp: Option<TcpCounters>,
    /// The longest time to first byte among its exchanges (ns).
    pub max_response_begin_ns: Option<u64>,
    /// The longest idle gap among its exchanges (ns).
    pub max_idle_ns: Option<u64>,
    /// How the hang detector found it stuck during its life.
    pub stuck: StuckSet,
    /// A stuck episode still going on when the connection ended: how it was stuck, and how long.
    pub stuck_at_end: Option<(Stuck, u64)>,
    /// Its resolution, TLS handshake and exchanges before the last, for the timeline (`None`
    /// for a connection with none of these).
    pub spans: Option<Box<TimelineSpans>>,
    /// Its last exchange (the one finished by the close, or in progress at shutdown).
    pub last_exchange: Option<ExchangeSpan>,
}

/// The kernel's TCP counters for a connection (`struct tcp_sock`), at close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Smoothed round-trip time (ns); `None` if no RTT sample was taken.
    pub rtt_ns: Option<u64>,
    /// Round-trip time mean deviation (ns).
    pub rtt_var_ns: Option<u64>,
    /// Segments retransmitted.
    pub total_retrans: u32,
    /// Bytes the peer acknowledged.
    pub bytes_acked: u64,
    /// Bytes received in order.
    pub bytes_received: u64,
}

impl TcpCounters {
    pub fn from_kernel(stats: &tcpobs_common::TcpStats) -> Option<Self> {
        if stats.valid == 0 {
            return None;
        }
        let rtt = |us: u64| (us != 0).then_some(us * 1_000);
        Some(Self {
            rtt_ns: rtt(u64::from(stats.srtt_us8 >> 3)),
            rtt_var_ns: rtt(u64::from(stats.mdev_us4 >> 2)).filter(|_| stats.srtt_us8 != 0),
            total_retrans: stats.total_retrans,
            bytes_acked: stats.bytes_acked,
            bytes_received: stats.bytes_received,
        })
    }
}

/// A connection just established (for counters and the handshake histogram).
#[derive(Clone, Debug, PartialEq)]
pub struct OpenedRecord {
    pub id: u64,
    pub role: Role,
    pub addrs: Addrs,
    pub process: Option<Process>,
    pub connect_ns: u64,
}

/// A live connection the hang detector flagged (once per connection and way of being stuck).
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyRecord {
    pub conn_id: u64,
    pub stuck: Stuck,
    pub role: Role,
    pub addrs: Addrs,
    pub process: Option<Process>,
    /// TCP state when flagged.
    pub state: u8,
    /// When it got stuck: entered the state, or last moved data (ns).
    pub since_ns: u64,
    /// When the sweep flagged it (ns).
    pub at_ns: u64,
    /// The threshold it crossed (ns).
    pub threshold_ns: u64,
}

/// One request/response exchange (a justniffer line).
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeRecord {
    pub conn_id: u64,
    pub role: Role,
    pub addrs: Addrs,
    pub process: Option<Process>,
    /// 1-based exchange number.
    pub seq: u32,
    pub class: ExchangeClass,
    /// First byte of the exchange: the request, or the response if there was no request (ns).
    pub start_ns: u64,
    pub connect_ns: Option<u64>,
    pub idle_before_ns: Option<u64>,
    pub request_ns: Option<u64>,
    pub response_begin_ns: Option<u64>,
    pub response_end_ns: Option<u64>,
    pub response_ns: Option<u64>,
    pub idle_after_ns: Option<u64>,
    pub session_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Last or unique exchanges of a closed connection only.
    pub close_originator: Option<CloseOriginator>,
    /// Already counted in the kernel's histograms (an exchange the kernel folded and also
    /// sent, because an output wants every exchange): the metrics leave it alone.
    pub folded: bool,
}

/// What the tracker hands to the outputs and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Connection(ConnectionRecord),
    Exchange(ExchangeRecord),
    Opened(OpenedRecord),
    Anomaly(AnomalyRecord),
    /// A stuck episode ended while the connection went on: how it was stuck, and how long.
    Unstuck(Stuck, u64),
    /// A name resolution.
    Dns(DnsRecord),
    /// A TLS handshake whose outcome is known.
    Tls(TlsRecord),
}
