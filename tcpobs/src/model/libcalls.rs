//! The calls applications make into user-space libraries around a connection, as the
//! libcall probes see them: name resolutions (`getaddrinfo`) and TLS handshakes (OpenSSL),
//! the records they make, and what of them a connection keeps ([`DnsLink`], [`TlsLink`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use tcpobs_common::{
    DnsEvent,
    libcalls::{DNS_MAX_ADDRS, dns_flag},
};

use super::{Addrs, Process, Role};

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
}
