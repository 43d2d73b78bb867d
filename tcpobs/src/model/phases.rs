//! The phases before and around a connection: name resolution and the TLS handshake, and
//! the connection's timeline (`phases`: dns, connect, tls, each exchange, close).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use tcpobs_common::{
    DnsEvent,
    libcalls::{DNS_MAX_ADDRS, dns_flag},
};

use super::{Addrs, ConnectionRecord, Process, Role};

/// Why a name resolution failed, from its `EAI_*` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsFailure {
    /// Try again later: the resolver timed out or a server failed (`EAI_AGAIN`), or the call
    /// was interrupted (`EAI_INTR`).
    Transient,
    /// The name does not exist or has no address (`EAI_NONAME`, `EAI_NODATA`,
    /// `EAI_ADDRFAMILY`), or the answer was a non-recoverable failure (`EAI_FAIL`).
    Permanent,
    /// The call itself failed: bad arguments, memory, a system error (`EAI_SYSTEM`, ...).
    Error,
}

impl DnsFailure {
    pub const ALL: [Self; 3] = [Self::Transient, Self::Permanent, Self::Error];

    pub fn of(code: i32) -> Option<Self> {
        Some(match code {
            0 => return None,
            -3 | -104 => Self::Transient,
            -2 | -4 | -5 | -9 => Self::Permanent,
            _ => Self::Error,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Error => "error",
        }
    }
}

/// The symbolic name of a `getaddrinfo` result (glibc's and musl's values).
pub fn eai_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        -1 => "EAI_BADFLAGS",
        -2 => "EAI_NONAME",
        -3 => "EAI_AGAIN",
        -4 => "EAI_FAIL",
        -5 => "EAI_NODATA",
        -6 => "EAI_FAMILY",
        -7 => "EAI_SOCKTYPE",
        -8 => "EAI_SERVICE",
        -9 => "EAI_ADDRFAMILY",
        -10 => "EAI_MEMORY",
        -11 => "EAI_SYSTEM",
        -12 => "EAI_OVERFLOW",
        -104 => "EAI_INTR",
        _ => "EAI_OTHER",
    }
}

/// The first addresses of an answer, inline (no allocation per resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    addrs: [IpAddr; DNS_MAX_ADDRS],
    len: u8,
    /// The answer had more addresses than are kept.
    pub more: bool,
}

impl Default for Resolved {
    fn default() -> Self {
        Self {
            addrs: [IpAddr::V4(Ipv4Addr::UNSPECIFIED); DNS_MAX_ADDRS],
            len: 0,
            more: false,
        }
    }
}

impl Resolved {
    /// From the kernel's event: IPv4-mapped IPv6 addresses become IPv4 (as socket addresses
    /// do), duplicates are dropped.
    pub fn from_kernel(event: &DnsEvent) -> Self {
        let mut resolved = Self {
            more: event.flags & dns_flag::MORE_ADDRS != 0,
            ..Self::default()
        };
        let count = usize::from(event.addr_count).min(DNS_MAX_ADDRS);
        for (family, bytes) in event.families.iter().zip(&event.addrs).take(count) {
            let ip = match family {
                2 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
                10 => Ipv6Addr::from(*bytes).to_canonical(),
                _ => continue,
            };
            resolved.push(ip);
        }
        resolved
    }

    /// Adds `ip` unless it is there already or the list is full.
    pub fn push(&mut self, ip: IpAddr) {
        let len = usize::from(self.len);
        if !self.contains(ip) && len < DNS_MAX_ADDRS {
            self.addrs[len] = ip;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[IpAddr] {
        &self.addrs[..usize::from(self.len)]
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.as_slice().contains(&ip)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One `getaddrinfo` call.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsRecord {
    pub process: Process,
    /// The name asked for (bytes that are not UTF-8 become U+FFFD).
    pub host: Arc<str>,
    /// The name was longer than tcpobs keeps (255 bytes) and is cut short.
    pub host_truncated: bool,
    /// When the call started (ns).
    pub start_ns: u64,
    pub duration_ns: u64,
    /// `getaddrinfo`'s result: 0, or an `EAI_*` code.
    pub code: i32,
    /// The first TCP addresses of the answer.
    pub addrs: Resolved,
}

impl DnsRecord {
    pub fn failure(&self) -> Option<DnsFailure> {
        DnsFailure::of(self.code)
    }

    /// The `result` label: `ok` or the failure kind.
    pub fn result(&self) -> &'static str {
        self.failure().map_or("ok", DnsFailure::as_str)
    }
}

/// One TLS handshake, reported once its outcome is known.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsRecord {
    /// The connection it ran on, if tcpobs saw it (`None` when the handshake's thread moved
    /// no data on a traced TCP socket during its calls, e.g. with memory BIOs).
    pub conn_id: Option<u64>,
    pub role: Role,
    pub addrs: Option<Addrs>,
    pub process: Option<Process>,
    /// First call's start (ns).
    pub start_ns: u64,
    /// First call's start to the return that completed it, or to the last return of a failed
    /// one (ns).
    pub duration_ns: u64,
    pub ok: bool,
    /// Handshake calls made (more than one on non-blocking sockets).
    pub calls: u16,
    /// It ended after its connection closed, so the connection's own record lacks it (not
    /// written; it decides which outputs carry a failed handshake).
    pub after_close: bool,
}

/// The resolution that gave a connection its remote address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsLink {
    pub host: Arc<str>,
    pub start_ns: u64,
    pub duration_ns: u64,
}

/// The TLS handshake on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLink {
    pub start_ns: u64,
    /// To the return that completed it, or to the last return so far.
    pub duration_ns: u64,
    /// `None` while undecided: the last call had not completed it (and the connection was
    /// still open when the record was written).
    pub ok: Option<bool>,
    pub calls: u16,
}

/// One exchange on a connection's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeSpan {
    pub seq: u32,
    /// First byte of the exchange (ns).
    pub start_ns: u64,
    /// First byte to last byte (ns).
    pub duration_ns: u64,
}

/// Exchanges a connection's timeline shows at most: the first ones and the last.
pub const TIMELINE_EXCHANGES: usize = 16;

/// An exchange kept for the timeline in 8 bytes: its start in µs after the connection's start
/// (the timeline prints microseconds), its duration in ns below 2^31 ns, else in µs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackedSpan {
    start_us: u32,
    duration: u32,
}

const MICROS: u32 = 1 << 31;

impl PackedSpan {
    fn pack(conn_start_ns: u64, span: &ExchangeSpan) -> Option<Self> {
        let start_us = u32::try_from(span.start_ns.saturating_sub(conn_start_ns) / 1_000).ok()?;
        let duration = match u32::try_from(span.duration_ns) {
            Ok(ns) if ns < MICROS => ns,
            _ => {
                MICROS
                    | u32::try_from(span.duration_ns / 1_000)
                        .unwrap_or(u32::MAX)
                        .min(!MICROS)
            }
        };
        Some(Self { start_us, duration })
    }

    fn unpack(self, conn_start_ns: u64, seq: u32) -> ExchangeSpan {
        let duration_ns = if self.duration & MICROS == 0 {
            u64::from(self.duration)
        } else {
            u64::from(self.duration & !MICROS) * 1_000
        };
        ExchangeSpan {
            seq,
            start_ns: conn_start_ns + u64::from(self.start_us) * 1_000,
            duration_ns,
        }
    }
}

/// What a connection knows beyond its TCP life: the resolution and handshake tied to it, and
/// the exchanges before the last (the last is known at close). Allocated only for connections
/// that have one of these, and bounded: 88 bytes, plus 8 per exchange kept (at most 15; the
/// buffer grows to 4, 8, 16), about 250 bytes at most with the allocator's overhead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnPhases {
    pub dns: Option<DnsLink>,
    pub tls: Option<TlsLink>,
    /// The first exchanges, `seq` 1, 2, ...
    exchanges: Vec<PackedSpan>,
    /// Exchanges before the last that the timeline leaves out.
    omitted: u32,
}

impl ConnPhases {
    /// Keeps a completed exchange (not the connection's last) for the timeline.
    pub fn push_exchange(&mut self, conn_start_ns: u64, span: &ExchangeSpan) {
        let kept = self.exchanges.len();
        let packed = (kept + 1 < TIMELINE_EXCHANGES && span.seq as usize == kept + 1)
            .then(|| PackedSpan::pack(conn_start_ns, span))
            .flatten();
        match packed {
            Some(packed) => {
                if self.exchanges.capacity() == 0 {
                    self.exchanges.reserve_exact(4);
                }
                self.exchanges.push(packed);
            }
            None => self.omitted += 1,
        }
    }

    /// The exchanges kept, in order.
    pub fn exchanges(&self, conn_start_ns: u64) -> impl Iterator<Item = ExchangeSpan> + '_ {
        self.exchanges
            .iter()
            .zip(1..)
            .map(move |(packed, seq)| packed.unpack(conn_start_ns, seq))
    }

    /// Exchanges left out of the timeline.
    pub fn omitted(&self) -> u32 {
        self.omitted
    }
}

/// A phase on the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseEntry {
    /// `dns`, `connect`, `tls`, `exchange`, `close`.
    pub name: &'static str,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The exchange number, for exchanges.
    pub seq: Option<u32>,
}

const TIMELINE_LEN: usize = TIMELINE_EXCHANGES + 4;

/// A connection's phases in time order, on the stack (writing a record allocates nothing).
pub struct Timeline {
    entries: [PhaseEntry; TIMELINE_LEN],
    len: usize,
}

impl Timeline {
    fn push(&mut self, name: &'static str, start_ns: u64, duration_ns: u64, seq: Option<u32>) {
        if self.len < TIMELINE_LEN {
            self.entries[self.len] = PhaseEntry {
                name,
                start_ns,
                duration_ns,
                seq,
            };
            self.len += 1;
        }
    }

    pub fn entries(&self) -> &[PhaseEntry] {
        &self.entries[..self.len]
    }
}

impl ConnectionRecord {
    /// The resolution tied to this connection.
    pub fn dns(&self) -> Option<&DnsLink> {
        self.phases.as_ref()?.dns.as_ref()
    }

    /// The TLS handshake on this connection.
    pub fn tls(&self) -> Option<&TlsLink> {
        self.phases.as_ref()?.tls.as_ref()
    }

    /// Exchanges left out of the timeline (it shows the first ones and the last).
    pub fn phases_omitted(&self) -> u32 {
        self.phases.as_ref().map_or(0, |phases| phases.omitted())
    }

    /// dns, connect, tls, each exchange (the first ones and the last), close, ordered by start.
    /// A failed connect lasts until the failure; the close runs from the first FIN or reset
    /// to `CLOSE`.
    pub fn timeline(&self) -> Timeline {
        let empty = PhaseEntry {
            name: "",
            start_ns: 0,
            duration_ns: 0,
            seq: None,
        };
        let mut timeline = Timeline {
            entries: [empty; TIMELINE_LEN],
            len: 0,
        };
        if let Some(dns) = self.dns() {
            timeline.push("dns", dns.start_ns, dns.duration_ns, None);
        }
        match (self.connect_ns, self.connect_failure) {
            (Some(connect), _) => timeline.push("connect", self.start_ns, connect, None),
            (None, Some(_)) => timeline.push("connect", self.start_ns, self.lifetime_ns, None),
            (None, None) => {}
        }
        if let Some(tls) = self.tls() {
            timeline.push("tls", tls.start_ns, tls.duration_ns, None);
        }
        if let Some(phases) = &self.phases {
            for span in phases.exchanges(self.start_ns) {
                timeline.push("exchange", span.start_ns, span.duration_ns, Some(span.seq));
            }
        }
        if let Some(last) = &self.last_exchange {
            timeline.push("exchange", last.start_ns, last.duration_ns, Some(last.seq));
        }
        if let Some(close) = &self.close {
            let teardown = close.teardown_ns.unwrap_or(0);
            timeline.push(
                "close",
                close.at_ns.saturating_sub(teardown),
                teardown,
                None,
            );
        }
        // Stable: equal starts keep the order above (a connect and its DNS-less start).
        timeline.entries[..timeline.len].sort_by_key(|entry| entry.start_ns);
        timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds() {
        assert_eq!(DnsFailure::of(0), None);
        assert_eq!(DnsFailure::of(-3), Some(DnsFailure::Transient));
        assert_eq!(DnsFailure::of(-2), Some(DnsFailure::Permanent));
        assert_eq!(DnsFailure::of(-5), Some(DnsFailure::Permanent));
        assert_eq!(DnsFailure::of(-11), Some(DnsFailure::Error));
        assert_eq!(eai_name(-3), "EAI_AGAIN");
        assert_eq!(eai_name(-2), "EAI_NONAME");
        assert_eq!(eai_name(-77), "EAI_OTHER");
    }

    #[test]
    fn resolved_addresses_are_canonical_and_distinct() {
        let mut event = DnsEvent {
            addr_count: 3,
            families: [2, 10, 10, 0],
            ..Default::default()
        };
        event.addrs[0][..4].copy_from_slice(&[192, 0, 2, 1]);
        event.addrs[1] = "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets();
        event.addrs[2] = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let resolved = Resolved::from_kernel(&event);
        assert_eq!(
            resolved.as_slice(),
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert!(!resolved.more);
    }

    #[test]
    fn packed_spans_keep_microsecond_starts_and_long_durations() {
        let start = 5_000_000_000;
        for (offset, duration) in [(0, 0), (1_234_567, 999), (60_000_000_000, 3_000_000_000)] {
            let span = ExchangeSpan {
                seq: 1,
                start_ns: start + offset,
                duration_ns: duration,
            };
            let back = PackedSpan::pack(start, &span).unwrap().unpack(start, 1);
            assert_eq!(back.start_ns, start + offset / 1_000 * 1_000, "{span:?}");
            let expected = if duration < 1 << 31 {
                duration
            } else {
                duration / 1_000 * 1_000
            };
            assert_eq!(back.duration_ns, expected, "{span:?}");
        }
        // More than 71 minutes after the connection's start: left out.
        let late = ExchangeSpan {
            seq: 1,
            start_ns: start + 5_000_000_000_000,
            duration_ns: 1,
        };
        assert_eq!(PackedSpan::pack(start, &late), None);
    }

    /// Allocated per connection with phases: growing it is a decision (see `ConnPhases`).
    #[test]
    fn phase_data_stays_small() {
        assert!(size_of::<ConnPhases>() <= 88, "{}", size_of::<ConnPhases>());
        assert_eq!(size_of::<PackedSpan>(), 8);
    }

    #[test]
    fn the_timeline_keeps_the_first_exchanges() {
        let mut phases = ConnPhases::default();
        for seq in 1..=40 {
            let span = ExchangeSpan {
                seq,
                start_ns: 1_000 + u64::from(seq) * 10_000,
                duration_ns: 5_000,
            };
            phases.push_exchange(1_000, &span);
        }
        let kept: Vec<u32> = phases.exchanges(1_000).map(|span| span.seq).collect();
        assert_eq!(kept, (1..TIMELINE_EXCHANGES as u32).collect::<Vec<_>>());
        assert_eq!(phases.omitted(), 40 - (TIMELINE_EXCHANGES as u32 - 1));
        assert!(phases.exchanges.capacity() <= TIMELINE_EXCHANGES);
    }
}
