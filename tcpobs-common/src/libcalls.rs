//! Libcalls: the calls an application makes into user-space libraries around a TCP connection,
//! name resolution (`getaddrinfo`) and the TLS handshake (OpenSSL), seen by uprobes on the C
//! library and libssl. The daemon's `--phases` flag turns them on.
//!
//! Same layout contract as the rest of this crate (integers and byte arrays, padding spelled
//! out, sizes pinned by the tests below). Events go through the same ring buffer as the
//! connection events:
//!
//! - [`DnsEvent`] (kind [`crate::kind::DNS`]) once per `getaddrinfo` call, when it returns;
//! - [`TlsEvent`] (kind [`crate::kind::TLS`]) each time a handshake call (`SSL_do_handshake`,
//!   `SSL_connect`, `SSL_accept`) returns, and when `SSL_free` drops a handshake that never
//!   completed. A non-blocking handshake takes several calls (each returning -1 until the
//!   last returns 1); the daemon decides when the handshake is over.
//!
//! Resolved addresses are in network byte order, like the socket addresses.

use crate::{EventHeader, Task};

/// Longest host name kept, including its NUL (DNS names are at most 253 characters).
pub const DNS_HOST_LEN: usize = 256;
/// Resolved addresses kept per call (the first ones of the answer, TCP entries only).
pub const DNS_MAX_ADDRS: usize = 4;
/// `addrinfo` entries walked at most per answer.
pub const DNS_MAX_ENTRIES: usize = 16;

/// `DnsEvent::flags` bits.
pub mod dns_flag {
    /// The host name filled the buffer: it was cut short.
    pub const HOST_TRUNCATED: u8 = 1 << 0;
    /// `node` was NULL (a service-only lookup) or unreadable.
    pub const NO_HOST: u8 = 1 << 1;
    /// The answer had more TCP addresses than [`super::DNS_MAX_ADDRS`].
    pub const MORE_ADDRS: u8 = 1 << 2;
}

/// One `getaddrinfo(node, service, hints, res)` call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    /// `ts_ns` is the return; `sock` and `start_ns` are 0 (no socket yet).
    pub hdr: EventHeader,
    /// The calling process and thread.
    pub task: Task,
    /// When the call started (ns).
    pub call_ns: u64,
    /// `getaddrinfo`'s return value: 0, or an `EAI_*` code (negative, as in glibc and musl).
    pub result: i32,
    /// Bytes of `host` in use (no NUL).
    pub host_len: u16,
    /// Addresses in `addrs`.
    pub addr_count: u8,
    /// [`dns_flag`] bits.
    pub flags: u8,
    /// `AF_INET` (2) or `AF_INET6` (10), per address.
    pub families: [u16; DNS_MAX_ADDRS],
    /// Resolved addresses, network byte order; IPv4 uses the first 4 bytes. Only the first
    /// `addr_count` are meaningful.
    pub addrs: [[u8; 16]; DNS_MAX_ADDRS],
    /// The host name asked for (`node`); only the first `host_len` bytes are meaningful.
    pub host: [u8; DNS_HOST_LEN],
}

impl Default for DnsEvent {
    fn default() -> Self {
        Self {
            hdr: EventHeader::default(),
            task: Task::default(),
            call_ns: 0,
            result: 0,
            host_len: 0,
            addr_count: 0,
            flags: 0,
            families: [0; DNS_MAX_ADDRS],
            addrs: [[0; 16]; DNS_MAX_ADDRS],
            host: [0; DNS_HOST_LEN],
        }
    }
}

/// `DNS_CALLS` value: a `getaddrinfo` call in progress, by thread, for the uretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCall {
    /// `node` (`const char *`).
    pub node: u64,
    /// `res` (`struct addrinfo **`), read back at return for the answer.
    pub res: u64,
    /// Entry time (ns).
    pub start_ns: u64,
}

/// Which OpenSSL function a handshake call went through (the outermost one).
pub mod tls_func {
    pub const DO_HANDSHAKE: u8 = 1;
    pub const CONNECT: u8 = 2;
    pub const ACCEPT: u8 = 3;
}

/// `TlsEvent::step` values.
pub mod tls_step {
    /// A handshake call returned (`ret` says how).
    pub const RETURN: u8 = 1;
    /// `SSL_free` dropped a handshake whose last call had not completed it.
    pub const FREED: u8 = 2;
}

/// A TLS handshake call returned, or an unfinished handshake was freed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsEvent {
    /// `ts_ns` is the return (or the free); `sock` and `start_ns` identify the TCP connection
    /// the handshake's thread sent to or received from during the handshake (both 0 if none
    /// was seen, e.g. with memory BIOs).
    pub hdr: EventHeader,
    /// The calling process and thread.
    pub task: Task,
    /// The `SSL *`: which handshake this is.
    pub ssl: u64,
    /// When the handshake's first call started (ns).
    pub handshake_ns: u64,
    /// The call's return value: 1 when the handshake completed; 0 for [`tls_step::FREED`].
    pub ret: i32,
    /// One of [`tls_func`].
    pub func: u8,
    /// One of [`tls_step`].
    pub step: u8,
    /// Calls made for this handshake so far.
    pub calls: u16,
}

/// `TLS_THREADS` value: the handshake call a thread is in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// Entry of the outermost call (ns).
    pub entry_ns: u64,
    /// The first traced TCP socket the thread sent to or received from during the call.
    pub sock: u64,
    /// That socket's generation (`SockRecord::start_ns`).
    pub sock_start_ns: u64,
    /// Nesting (`SSL_connect` calls `SSL_do_handshake`).
    pub depth: u32,
    /// One of [`tls_func`].
    pub func: u32,
}

/// `TLS_PENDING` value: a handshake that took more than one call so far, by `SSL *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsPending {
    /// Entry of its first call (ns).
    pub first_ns: u64,
    /// Its socket, once seen (as in [`TlsCall`]).
    pub sock: u64,
    pub sock_start_ns: u64,
    /// Calls so far.
    pub calls: u32,
    /// One of [`tls_func`] (of the first call).
    pub func: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers only, no implicit padding (pinned by the tests).
    unsafe impl aya::Pod for super::TlsCall {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<DnsEvent>(), 408);
        assert_eq!(offset_of!(DnsEvent, task), 32);
        assert_eq!(offset_of!(DnsEvent, call_ns), 64);
        assert_eq!(offset_of!(DnsEvent, result), 72);
        assert_eq!(offset_of!(DnsEvent, host_len), 76);
        assert_eq!(offset_of!(DnsEvent, addr_count), 78);
        assert_eq!(offset_of!(DnsEvent, flags), 79);
        assert_eq!(offset_of!(DnsEvent, families), 80);
        assert_eq!(offset_of!(DnsEvent, addrs), 88);
        assert_eq!(offset_of!(DnsEvent, host), 152);
        assert_eq!(size_of::<DnsCall>(), 24);
        assert_eq!(size_of::<TlsEvent>(), 88);
        assert_eq!(offset_of!(TlsEvent, ssl), 64);
        assert_eq!(offset_of!(TlsEvent, ret), 80);
        assert_eq!(offset_of!(TlsEvent, step), 85);
        assert_eq!(offset_of!(TlsEvent, calls), 86);
        assert_eq!(size_of::<TlsCall>(), 40);
        assert_eq!(size_of::<TlsPending>(), 32);
    }
}
