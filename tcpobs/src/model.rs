//! The connection model of DESIGN §3: what the tracker produces and the outputs print.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds (the kernel's clock) and durations nanoseconds;
//! outputs convert to wall-clock timestamps and seconds. The phases around a connection
//! (name resolution, TLS handshake, the timeline) are in [`phases`].

pub mod phases;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tcpobs_common::{Endpoints, Task, role, tcp_state};

pub use self::phases::{
    ConnPhases, DnsFailure, DnsLink, DnsRecord, ExchangeSpan, TlsLink, TlsRecord,
};

/// Which end of the connection this socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Active open: this socket sent the SYN. Requests are the bytes it sends.
    Client,
    /// Passive open: this socket accepted. Requests are the bytes it receives.
    Server,
    /// Already open when first seen: nobody knows, and tcpobs does not guess.
    Unknown,
}

impl Role {
    pub fn from_kernel(value: u8) -> Self {
        match value {
            role::CLIENT => Self::Client,
            role::SERVER => Self::Server,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Unknown => "unknown",
        }
    }
}

/// This socket or the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Local,
    Peer,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
        }
    }
}

/// Who ended the connection (justniffer's `%close.originator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseOriginator {
    Client,
    Server,
    /// The kernel gave up (retransmission or keep-alive timeout).
    Timeout,
    /// The role is unknown, or nobody sent FIN or RST.
    Unknown,
}

impl CloseOriginator {
    /// Maps the side that closed first to client/server through the socket's role.
    pub fn from_side(side: Side, role: Role) -> Self {
        match (side, role) {
            (Side::Local, Role::Client) | (Side::Peer, Role::Server) => Self::Client,
            (Side::Local, Role::Server) | (Side::Peer, Role::Client) => Self::Server,
            (_, Role::Unknown) => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Timeout => "timeout",
            Self::Unknown => "unknown",
        }
    }
}

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseKind {
    /// Orderly FIN handshake.
    Fin,
    /// A reset, sent or received.
    Rst,
    /// Retransmission or keep-alive timeout (`ETIMEDOUT`).
    Timeout,
    /// Any other end: a socket error, or a close with neither FIN nor RST.
    Error,
}

impl CloseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Why a connection never reached `ESTABLISHED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// A reset answered the SYN (nothing listening).
    Refused,
    /// No answer (`ETIMEDOUT`).
    Timeout,
    /// ICMP unreachable (`EHOSTUNREACH`, `ENETUNREACH`, ...).
    Unreachable,
    /// Anything else, e.g. the application gave up before the handshake finished.
    Other,
}

impl ConnectFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Other => "other",
        }
    }
}

/// justniffer's `%connection`: where the exchange sits in its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeClass {
    /// The connection's only exchange.
    Unique,
    /// First of several.
    Start,
    /// Neither first nor last.
    Continue,
    /// Last of several.
    Last,
}

impl ExchangeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unique => "unique",
            Self::Start => "start",
            Self::Continue => "continue",
            Self::Last => "last",
        }
    }
}

/// Why a connection record is incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartialReason {
    /// The kernel first saw the socket mid-life: it was open before tcpobs started, or its
    /// kernel record was evicted from a full socket table and adopted again.
    AlreadyOpen,
    /// tcpobs lost track of it: a newer connection appeared on the same socket before this one
    /// was seen to close (kernel record evicted, or the close event dropped).
    Lost,
    /// The close arrived but the open did not (dropped from a full ring buffer).
    MissedOpen,
    /// Still open when tcpobs stopped.
    Shutdown,
}

impl PartialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyOpen => "already_open",
            Self::Lost => "lost",
            Self::MissedOpen => "missed_open",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A phase a live connection can be stuck in (hang detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// `SYN_SENT` for too long: the SYN gets no answer.
    SynSent,
    /// `ESTABLISHED` and nothing sent or received yet.
    NoData,
    /// `ESTABLISHED`, idle far beyond the exchange rhythm (a zombie).
    Idle,
    /// `CLOSE_WAIT` for too long: the peer closed and the application did not.
    CloseWait,
    /// `FIN_WAIT2` for too long: this side closed and the peer never finished.
    FinWait2,
}

impl Phase {
    pub const ALL: [Self; 5] = [
        Self::SynSent,
        Self::NoData,
        Self::Idle,
        Self::CloseWait,
        Self::FinWait2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::NoData => "no_data",
            Self::Idle => "idle",
            Self::CloseWait => "close_wait",
            Self::FinWait2 => "fin_wait2",
        }
    }

    /// Likely cause and action, from the seed's troubleshooting matrix.
    pub fn hint(self) -> &'static str {
        match self {
            Self::SynSent => {
                "the SYN gets no answer: the peer host is down or a firewall drops it; check the route to the peer and that it listens"
            }
            Self::NoData => {
                "connected but nothing was sent: a pool warming connections ahead of use, or both sides waiting for the other to speak; check the client's pool and the protocol's greeting"
            }
            Self::Idle => {
                "zombie connection: idle far beyond the exchange rhythm; load balancers, NAT gateways and firewalls drop idle flows silently; send keep-alive probes or PINGs below the intermediary's idle timeout"
            }
            Self::CloseWait => {
                "CLOSE_WAIT leak: the peer closed and the application never called close(); fix the code path that drops the socket"
            }
            Self::FinWait2 => {
                "half-closed: this side closed and the peer never closed its end; check the peer application and intermediaries that may drop its FIN"
            }
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Phase`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PhaseSet(u8);

impl PhaseSet {
    pub fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }

    pub fn insert(&mut self, phase: Phase) {
        self.0 |= phase.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Phase> {
        Phase::ALL
            .into_iter()
            .filter(move |phase| self.contains(*phase))
    }
}

/// Name of a kernel TCP state, as in `/proc/net/tcp` tools.
pub fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Symbolic name of the errno values a socket ends with.
pub fn errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno {
        0 => return None,
        32 => "EPIPE",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => "EOTHER",
    })
}

pub const ETIMEDOUT: u32 = 110;
pub const ECONNREFUSED: u32 = 111;

/// The local and remote ends of a socket. Kept as addresses and ports rather than two
/// `SocketAddr`s (whose IPv6 flow and scope fields tcpobs never uses): the live table holds
/// one per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addrs {
    local_ip: IpAddr,
    remote_ip: IpAddr,
    local_port: u16,
    remote_port: u16,
}

impl Addrs {
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            local_ip: local.ip(),
            remote_ip: remote.ip(),
            local_port: local.port(),
            remote_port: remote.port(),
        }
    }

    /// IPv4-mapped IPv6 addresses are shown as IPv4.
    pub fn from_kernel(endpoints: &Endpoints) -> Self {
        let ip = |bytes: &[u8; 16]| -> IpAddr {
            if endpoints.family == 10 {
                Ipv6Addr::from(*bytes).to_canonical()
            } else {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            }
        };
        Self {
            local_ip: ip(&endpoints.laddr),
            remote_ip: ip(&endpoints.raddr),
            local_port: endpoints.lport,
            remote_port: endpoints.rport,
        }
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.local_port)
    }

    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_ip, self.remote_port)
    }

    /// (client end, server end) for a socket of this role; local first when unknown.
    pub fn client_server(&self, role: Role) -> (SocketAddr, SocketAddr) {
        match role {
            Role::Server => (self.remote(), self.local()),
            Role::Client | Role::Unknown => (self.local(), self.remote()),
        }
    }
}

/// A process name (`comm`), at most 15 bytes, NUL-padded as the kernel keeps it, inline:
/// records are copied a lot and a heap string each would cost an allocation per connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    /// From the kernel's NUL-padded `comm`; bytes that are not UTF-8 become `?`.
    pub fn from_kernel(raw: &[u8; 16]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len() - 1);
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&raw[..len]);
        if std::str::from_utf8(&bytes[..len]).is_err() {
            for byte in &mut bytes[..len] {
                if !byte.is_ascii() {
                    *byte = b'?';
                }
            }
        }
        Self(bytes)
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The process a socket belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup v2 id (0 if unknown), which names the container on a container host.
    pub cgroup: u64,
}

impl Process {
    pub fn from_kernel(task: &Task) -> Option<Self> {
        if task.pid == 0 {
            return None;
        }
        Some(Self {
            pid: task.pid,
            comm: Comm::from_kernel(&task.comm),
            cgroup: task.cgroup,
        })
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pid, self.comm)
    }
}

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
    /// Phases the hang detector flagged during the connection's life.
    pub stuck: PhaseSet,
    /// A stuck episode still going on when the connection ended: the phase and how long.
    pub stuck_at_end: Option<(Phase, u64)>,
    /// Its resolution, TLS handshake and exchanges before the last (`None` for a connection
    /// with none of these).
    pub phases: Option<Box<ConnPhases>>,
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

/// A live connection the hang detector flagged (once per connection and phase).
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyRecord {
    pub conn_id: u64,
    pub phase: Phase,
    pub role: Role,
    pub addrs: Addrs,
    pub process: Option<Process>,
    /// TCP state when flagged.
    pub state: u8,
    /// When the phase began (ns).
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
}

/// What the tracker hands to the outputs and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Connection(ConnectionRecord),
    Exchange(ExchangeRecord),
    Opened(OpenedRecord),
    Anomaly(AnomalyRecord),
    /// A stuck episode ended while the connection went on: the phase and how long it lasted.
    Unstuck(Phase, u64),
    /// A name resolution.
    Dns(DnsRecord),
    /// A TLS handshake whose outcome is known.
    Tls(TlsRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originator_follows_the_role() {
        use CloseOriginator as O;
        assert_eq!(O::from_side(Side::Local, Role::Client), O::Client);
        assert_eq!(O::from_side(Side::Peer, Role::Client), O::Server);
        assert_eq!(O::from_side(Side::Local, Role::Server), O::Server);
        assert_eq!(O::from_side(Side::Peer, Role::Server), O::Client);
        assert_eq!(O::from_side(Side::Local, Role::Unknown), O::Unknown);
    }

    #[test]
    fn addresses_decode_and_unmap_ipv4_in_ipv6() {
        let mut endpoints = Endpoints {
            lport: 8080,
            rport: 41000,
            family: 2,
            ..Default::default()
        };
        endpoints.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        endpoints.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let addrs = Addrs::from_kernel(&endpoints);
        assert_eq!(addrs.local(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(addrs.remote(), "10.1.2.3:41000".parse().unwrap());
        assert_eq!(
            addrs.client_server(Role::Server),
            (addrs.remote(), addrs.local())
        );

        endpoints.family = 10;
        endpoints.laddr = "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets();
        endpoints.raddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let addrs = Addrs::from_kernel(&endpoints);
        assert_eq!(addrs.local(), "192.0.2.1:8080".parse().unwrap());
        assert_eq!(addrs.remote(), "[2001:db8::1]:41000".parse().unwrap());
    }

    #[test]
    fn hints_read_as_one_sentence() {
        for phase in Phase::ALL {
            let hint = phase.hint();
            assert!(
                !hint.contains("  ") && !hint.contains('\n'),
                "{phase:?}: {hint}"
            );
        }
    }

    #[test]
    fn process_needs_a_pid_and_trims_comm() {
        assert_eq!(Process::from_kernel(&Task::default()), None);
        let task = Task {
            pid: 7,
            tid: 8,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            cgroup: 1234,
        };
        let process = Process::from_kernel(&task).unwrap();
        assert_eq!(process.to_string(), "7/nginx");
        assert_eq!(process.comm, "nginx");
        assert_eq!(process.cgroup, 1234);
        let odd = Comm::from_kernel(b"a\xffb\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(odd.as_str(), "a?b");
    }
}
