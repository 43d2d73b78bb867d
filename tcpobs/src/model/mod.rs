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
    /// Why it was slow or stuck, from the kernel.
    pub diag: Diagnosis,
}

/// Why a connection was slow or stuck, from the kernel, at close: what [`Diagnosis`] holds,
/// field by field; `None` where the kernel does not say (an older kernel, a hook that did not
/// attach, a role it does not apply to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiagnosisParts {
    /// SYN retransmits (client) or SYN-ACK retransmits (server) before `ESTABLISHED`.
    pub syn_retransmits: Option<u32>,
    /// `tcp_info`'s chrono counters (ns): time busy sending (including both limited times),
    /// limited by the peer's receive window, limited by the local send buffer.
    pub busy_ns: Option<u64>,
    pub rwnd_limited_ns: Option<u64>,
    pub sndbuf_limited_ns: Option<u64>,
    /// Retransmission timeouts (`tcp_sock.total_rto`, Linux 6.7).
    pub rto_count: Option<u32>,
    /// `ESTABLISHED` (queued on the listener) to the application's `accept()` (ns), servers.
    pub accept_wait_ns: Option<u64>,
    /// Packets the kernel dropped that belonged to it, and the reason for the last one
    /// (`enum skb_drop_reason`; see [`drop_reason_name`]).
    pub packet_drops: u32,
    pub drop_reason: Option<u32>,
    /// Zero-window probes sent (where the probes family attached).
    pub zero_window_probes: Option<u32>,
}

/// [`DiagnosisParts`], packed: every connection record carries one, and records move through
/// queues by value. The chrono counters are kept in milliseconds (the kernel counts them in
/// jiffies, 1 to 10 ms), up to 49 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    chrono_ms: [u32; 3],
    accept_wait_ns: u64,
    syn_retransmits: u32,
    rto_count: u32,
    zero_window_probes: u32,
    drop_reason: u32,
    packet_drops: u32,
}

const UNKNOWN: u32 = u32::MAX;

impl Default for Diagnosis {
    fn default() -> Self {
        DiagnosisParts::default().into()
    }
}

impl From<DiagnosisParts> for Diagnosis {
    fn from(parts: DiagnosisParts) -> Self {
        let ms = |ns: Option<u64>| {
            ns.map_or(UNKNOWN, |ns| {
                u32::try_from((ns + 500_000) / 1_000_000).unwrap_or(UNKNOWN - 1)
            })
        };
        let count = |value: Option<u32>| value.map_or(UNKNOWN, |value| value.min(UNKNOWN - 1));
        Self {
            chrono_ms: [
                ms(parts.busy_ns),
                ms(parts.rwnd_limited_ns),
                ms(parts.sndbuf_limited_ns),
            ],
            accept_wait_ns: parts
                .accept_wait_ns
                .map_or(u64::MAX, |ns| ns.min(u64::MAX - 1)),
            syn_retransmits: count(parts.syn_retransmits),
            rto_count: count(parts.rto_count),
            zero_window_probes: count(parts.zero_window_probes),
            drop_reason: count(parts.drop_reason),
            packet_drops: parts.packet_drops,
        }
    }
}

impl Diagnosis {
    /// Field by field.
    pub fn parts(&self) -> DiagnosisParts {
        let ns = |ms: u32| (ms != UNKNOWN).then(|| u64::from(ms) * 1_000_000);
        let count = |value: u32| (value != UNKNOWN).then_some(value);
        DiagnosisParts {
            syn_retransmits: count(self.syn_retransmits),
            busy_ns: ns(self.chrono_ms[0]),
            rwnd_limited_ns: ns(self.chrono_ms[1]),
            sndbuf_limited_ns: ns(self.chrono_ms[2]),
            rto_count: count(self.rto_count),
            accept_wait_ns: (self.accept_wait_ns != u64::MAX).then_some(self.accept_wait_ns),
            packet_drops: self.packet_drops,
            drop_reason: count(self.drop_reason),
            zero_window_probes: count(self.zero_window_probes),
        }
    }
}

/// The kernel's names of its drop reasons (`enum skb_drop_reason`, read from BTF at start-up),
/// lowercase and without the `SKB_DROP_REASON_` prefix, by value.
static DROP_REASON_NAMES: std::sync::OnceLock<Vec<Option<Box<str>>>> = std::sync::OnceLock::new();

/// Sets the drop reasons' names (once per process: every tracer reads the same kernel).
pub fn set_drop_reason_names(names: Vec<Option<Box<str>>>) {
    let _ = DROP_REASON_NAMES.set(names);
}

/// Whether the running kernel has a drop reason of this name (lowercase, no prefix).
pub fn drop_reason_known(name: &str) -> bool {
    DROP_REASON_NAMES
        .get()
        .is_some_and(|names| names.iter().flatten().any(|known| &**known == name))
}

/// The name of drop reason `value` (`netfilter_drop`), or `reason_N` if the kernel's BTF did not
/// name it.
pub fn drop_reason_name(value: u32) -> std::borrow::Cow<'static, str> {
    DROP_REASON_NAMES
        .get()
        .and_then(|names| names.get(value as usize))
        .and_then(|name| name.as_deref())
        .map_or_else(
            || std::borrow::Cow::Owned(format!("reason_{value}")),
            std::borrow::Cow::Borrowed,
        )
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

/// A live connection the hang detector flagged (once per connection and way of being stuck),
/// or a listening socket whose accept queue stayed full ([`Stuck::AcceptQueueFull`]: no
/// connection, `conn_id` 0, the listening address as local and no remote).
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
