//! Types shared by the kernel programs (`tcpobs-ebpf`) and the daemon (`tcpobs`).
//!
//! # Layout contract
//!
//! Every type here is `#[repr(C)]`, holds only integers and byte arrays, and has its padding
//! spelled out as `_pad` fields, so that any byte pattern is a valid value and both sides agree
//! on the layout bit for bit. Sizes and offsets are pinned by the tests at the bottom of this
//! file. The daemon decodes these to Rust enums with `TryFrom`; nothing here is a Rust enum.
//!
//! Units are in the field names: `_ns` is nanoseconds of `CLOCK_MONOTONIC` as returned by
//! `bpf_ktime_get_ns`, `bytes` is application payload bytes as counted by `sendmsg`/`recvmsg`.
//! Every multi-byte integer is in host byte order unless the field says otherwise; addresses
//! are kept in network order, as the kernel stores them.
//!
//! # Ring buffer protocol
//!
//! The kernel side keeps one [`SockRecord`] per TCP socket and only writes to the ring buffer
//! on lifecycle transitions and at the end of a data burst:
//!
//! - [`OpenEvent`] of kind [`kind::CONNECT`] when a connecting client's SYN is first
//!   retransmitted: a connect that completes (or fails) within its first round trip needs no
//!   event of its own, and one that hangs in `SYN_SENT` is announced after the first SYN
//!   timeout (one second);
//! - [`OpenEvent`] of kind [`kind::OPEN`] when a socket reaches `ESTABLISHED`, or when a socket
//!   that was already open is seen for the first time (flag [`FLAG_PARTIAL`]). While the
//!   daemon allows it ([`names::DEFER_OPENS_MAP`]), the open of an established connection is
//!   deferred instead ([`PendingList`]): most connections that churn close before it would be
//!   sent, and their close ([`SockRecord::open_deferred`]) then stands for it;
//! - [`BurstEvent`] when an exchange ends (the next request begins), carrying its request and
//!   response bursts, only while the daemon asks for every exchange
//!   ([`names::EXCHANGE_EVENTS_MAP`]: a JSON event or justniffer line per exchange, or metric
//!   labels the kernel cannot resolve). Otherwise the kernel folds each exchange into per-CPU
//!   histograms ([`Folds`], read by the daemon at its own pace) and into the connection's
//!   [`ExchangeSummary`], sent with the close ([`SockRecord::add_data`] and
//!   [`SockRecord::fold_exchange`]: the rules, shared with the daemon's tests);
//! - [`StateEvent`] when a socket enters a state it can hang in (`CLOSE_WAIT`, `FIN_WAIT2`);
//!   the other teardown states usually last one round trip, are kept in the record, and
//!   the daemon reads them from the table when it needs them. A connection whose open is still
//!   deferred holds its `CLOSE_WAIT` back: it follows the late open (dated when it happened),
//!   or the close stands for both;
//! - [`CloseEvent`] once, when the socket is done, carrying the whole record: the exchange in
//!   progress (its last) and the summary of the others; or, for a record that kept no
//!   timeline span (a connection that made one request), a [`ShortCloseEvent`], the record
//!   without its spans.
//!
//! A connection is identified by the socket address ([`EventHeader::sock`]) *and* its
//! generation ([`EventHeader::start_ns`]): the kernel reuses socket memory within
//! milliseconds.
//!
//! The calls an application makes into user-space libraries around a connection (name
//! resolution, the TLS handshake: "libcalls") have their own events, in [`libcalls`].
#![no_std]

pub mod diag;
mod events;
pub mod exchanges;
pub mod folds;
pub mod libcalls;
pub mod names;
pub mod offsets;
pub mod seed;

pub use diag::{DiagOffsets, DiagStats, ListenSample, ListenSock, SockSample};
pub use events::{
    BurstEvent, CloseEvent, EventHeader, OPEN_DEFER_NS, OPENS_PER_FLUSH, OpenEvent,
    PENDING_OPEN_SLOTS, PendingList, PendingOpen, PendingOpens, SHORT_RECORD_BYTES,
    ShortCloseEvent, StateEvent,
};
pub use exchanges::DataSink;
pub use folds::{FoldConfig, Folds, HistSlot, RoleFolds};
pub use libcalls::{DnsCall, DnsEvent, TlsCall, TlsEvent, TlsPending};
pub use offsets::Offsets;

/// TCP states, numbered as in the kernel's `include/net/tcp_states.h`.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// `SockRecord::open_deferred` values.
pub mod deferral {
    /// Not deferred (the open was sent at once, or the connection never got that far).
    pub const NONE: u8 = 0;
    /// Established, and no open event sent yet.
    pub const PENDING: u8 = 1;
    /// The deferred open was sent late (the connection is announced, as
    /// [`FLAG_ANNOUNCED`](crate::FLAG_ANNOUNCED) says of the others).
    pub const SENT: u8 = 2;
    /// Pending when the close was sent: a late open that finds this discards itself (the
    /// close stands for it). Never in an event: the close carries `PENDING`.
    pub const CLOSED: u8 = 3;
}

/// `EventHeader::kind` values.
pub mod kind {
    pub const OPEN: u32 = 1;
    pub const BURST: u32 = 2;
    pub const STATE: u32 = 3;
    pub const CLOSE: u32 = 4;
    /// An [`crate::OpenEvent`] sent when a connecting client's SYN is first retransmitted
    /// (still in `SYN_SENT` one retransmission timeout after `connect()`), so that a connect
    /// that hangs shows before it ends; one that completes or fails sooner sends none.
    pub const CONNECT: u32 = 5;
    /// A [`crate::DnsEvent`]: a `getaddrinfo` call returned.
    pub const DNS: u32 = 6;
    /// A [`crate::TlsEvent`]: a TLS handshake call returned, or an unfinished one was freed.
    pub const TLS: u32 = 7;
}

/// Socket role, from the side this host sees.
pub mod role {
    /// Already open when first seen: nobody knows who connected.
    pub const UNKNOWN: u8 = 0;
    /// Active open (`CLOSE -> SYN_SENT`).
    pub const CLIENT: u8 = 1;
    /// Passive open (`LISTEN -> SYN_RECV`).
    pub const SERVER: u8 = 2;
}

/// Data direction of a burst, from the socket's point of view.
pub mod direction {
    pub const NONE: u8 = 0;
    /// Bytes the local application sent.
    pub const OUT: u8 = 1;
    /// Bytes the local application received.
    pub const IN: u8 = 2;
}

/// The first sign of teardown on a connection (`SockRecord::first_teardown`).
pub mod teardown {
    pub const NONE: u8 = 0;
    /// This side sent FIN first (`ESTABLISHED -> FIN_WAIT1`).
    pub const LOCAL_FIN: u8 = 1;
    /// The peer sent FIN first (`ESTABLISHED -> CLOSE_WAIT`).
    pub const PEER_FIN: u8 = 2;
    /// This side sent a reset before any FIN.
    pub const LOCAL_RST: u8 = 3;
    /// A reset arrived before any FIN.
    pub const PEER_RST: u8 = 4;
}

/// `SockRecord::flags` bits.
pub const FLAG_PARTIAL: u8 = 1 << 0;
/// A reset was sent on this socket (`tcp:tcp_send_reset`).
pub const FLAG_RST_SENT: u8 = 1 << 1;
/// A reset arrived on this socket (`tcp:tcp_receive_reset`).
pub const FLAG_RST_RECV: u8 = 1 << 2;
/// The socket went through `CLOSE_WAIT` (the peer closed first).
pub const FLAG_CLOSE_WAIT: u8 = 1 << 3;
/// The local application closed or shut down the socket (`FIN_WAIT1` or `LAST_ACK` seen, or a
/// reset sent after `CLOSE_WAIT`).
pub const FLAG_APP_CLOSED: u8 = 1 << 4;
/// The socket is excluded by the kernel-side filters: the record is only a marker, so that
/// every later event for the socket costs one lookup and sends nothing.
pub const FLAG_IGNORED: u8 = 1 << 5;
/// The `kind::CONNECT` event was sent (the SYN was retransmitted).
pub const FLAG_CONNECT_SENT: u8 = 1 << 6;
/// An open or connect event of this connection reached the ring buffer: the daemon holds the
/// connection as live, so a close that cannot be sent leaves it there until its audit finds
/// the socket gone (see [`stat::CLOSE_DROPPED`]).
pub const FLAG_ANNOUNCED: u8 = 1 << 7;

/// `STATS` per-CPU array indexes: what the kernel side had to drop.
pub mod stat {
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Sockets not traced because the socket table insert failed.
    pub const TABLE_INSERT_FAILED: u32 = 1;
    /// Sockets adopted mid-life (already open when tcpobs started, or whose record was evicted
    /// from the LRU socket table).
    pub const ADOPTED: u32 = 2;
    /// TLS handshake calls not followed because the per-thread table (`TLS_THREADS`) was full.
    pub const TLS_UNTRACKED: u32 = 3;
    /// Connection ends of which nothing reached the daemon: the close record was dropped
    /// (ring buffer full) and no open or connect event had got through. Three counters, by
    /// role: `CLOSE_UNSEEN + role::UNKNOWN`, `+ role::CLIENT`, `+ role::SERVER` ([`by_role`]).
    pub const CLOSE_UNSEEN: u32 = 4;
    /// Close records dropped (ring buffer full) after the connection's open or connect event
    /// got through ([`crate::FLAG_ANNOUNCED`]): the daemon reports these partial (`lost`) when
    /// its audit finds the socket gone. Three counters, by role, as [`CLOSE_UNSEEN`].
    pub const CLOSE_DROPPED: u32 = 7;
    /// Connections already open when tcpobs started, seeded into the socket table at start-up
    /// by the `seed_connections` iterator (role, owner, state and byte counters known).
    pub const SEEDED: u32 = 10;
    /// Close records the ring buffer could not take, kept in the socket table under their
    /// generation (`start_ns`) with their header queued in `SPILLED`, for the daemon to read
    /// once the ring has room ([`crate::names::SPILLED_MAP`]). Not lost.
    pub const CLOSE_SPILLED: u32 = 11;
    /// State events (`CLOSE_WAIT`, `FIN_WAIT2`) not sent because the ring buffer was more than
    /// half full: its second half is kept for close records. The state is in the socket's
    /// record, which the daemon reads when it audits its connections.
    pub const STATE_SKIPPED: u32 = 12;
    /// Number of counters.
    pub const COUNT: u32 = 13;

    /// The counter of `role` ([`crate::role`]) in a per-role group starting at `base`; an
    /// out-of-range role counts as unknown.
    #[inline(always)]
    pub const fn by_role(base: u32, role: u8) -> u32 {
        if role <= crate::role::SERVER {
            base + role as u32
        } else {
            base
        }
    }
}

/// What a spilled close record's header says of it in its `_pad` (the record itself may be
/// evicted before the daemon reads it): its role, and whether its open got through.
pub mod spill_tag {
    /// Set when the record was [`crate::FLAG_ANNOUNCED`].
    pub const ANNOUNCED: u32 = 1 << 8;

    /// The tag of a record of `role` ([`crate::role`]).
    #[inline(always)]
    pub const fn of(role: u8, announced: bool) -> u32 {
        role as u32 | if announced { ANNOUNCED } else { 0 }
    }

    /// The role a tag names.
    pub const fn role(tag: u32) -> u8 {
        tag as u8
    }
}

/// How one kind of kernel-side filter applies (`FilterConfig` fields).
pub mod filter_mode {
    /// The filter is off.
    pub const OFF: u8 = 0;
    /// Trace only sockets that match.
    pub const INCLUDE: u8 = 1;
    /// Trace only sockets that do not match.
    pub const EXCLUDE: u8 = 2;
}

/// `FILTER` array, index 0: which kernel-side filters apply. A socket is traced if it passes
/// every filter that is on. Each field is a [`filter_mode`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Local or remote port in `PORT_FILTER`.
    pub ports: u8,
    /// Local or remote address in `CIDR4_FILTER` / `CIDR6_FILTER`.
    pub cidrs: u8,
    /// Owning process (tgid) in `PID_FILTER`.
    pub pids: u8,
    /// Owning cgroup (v2 id) in `CGROUP_FILTER`.
    pub cgroups: u8,
    pub _pad: [u8; 4],
}

/// A process and its cgroup: who owns a socket, for the pid and cgroup filters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Process id (tgid).
    pub pid: u32,
    pub _pad: u32,
    /// cgroup v2 id (the cgroup directory's inode number).
    pub cgroup: u64,
}

/// `DATA_CALLS` value: a `tcp_sendmsg`/`tcp_recvmsg` call in progress (kprobe strategy),
/// read back by the kretprobe, which sees only the return value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataCall {
    /// The socket (`struct sock *`).
    pub sk: u64,
    /// `tcp_recvmsg`'s flags (0 for sends).
    pub flags: i32,
    pub _pad: u32,
}

/// `LISTENERS` key: a listening port in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// The network namespace's inode number (`/proc/PID/ns/net`).
    pub netns: u32,
    /// Local port, host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// `LISTENERS` value: who listens, and how many listening sockets share the port
/// (`SO_REUSEPORT`). Accepted sockets are created in softirq, where the current task says
/// nothing, so pid and cgroup filters judge them by the process that called `listen()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub owner: Owner,
    /// Listening sockets on this port.
    pub count: u32,
    pub _pad: u32,
}

/// Addresses and ports of a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Local address, network byte order; IPv4 uses the first 4 bytes.
    pub laddr: [u8; 16],
    /// Remote address, network byte order; IPv4 uses the first 4 bytes.
    pub raddr: [u8; 16],
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    pub _pad: u16,
}

/// The process a socket is attributed to (taken in process context only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Process id (kernel tgid); 0 when not yet known.
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// cgroup v2 id (the inode number of the cgroup's directory), for container metadata.
    pub cgroup: u64,
}

/// A run of send or receive calls in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Burst {
    /// Completion time of the first call of the burst (ns).
    pub first_ns: u64,
    /// Completion time of the last call of the burst (ns).
    pub last_ns: u64,
    /// Payload bytes moved by the burst.
    pub bytes: u64,
    /// Number of successful calls in the burst.
    pub calls: u32,
    /// One of [`direction`]; [`direction::NONE`] when there is no burst.
    pub dir: u8,
    pub _pad: [u8; 3],
}

/// The kernel's per-socket record (value of the `SOCKETS` LRU hash, keyed by socket address).
///
/// Laid out for the cache: a hash table element is the kernel's 48-byte header (list and LRU
/// nodes, hash), the 8-byte key, then this record, and the elements of a preallocated table lie
/// back to back. At 456 bytes an element is 512, so every element starts a cache line: its first
/// line holds the header, the key and the record's first 8 bytes (role, flags, state), which
/// every lookup reads anyway (it compares the key, and sets the LRU reference bit if clear),
/// and the rest of the record fills exactly seven more. At 440 bytes (an element of 496)
/// elements straddled lines: a lookup and the close's copy of the record touched eight or nine
/// lines, now eight (see BENCHMARKS.md, "The record's layout"). The padding also goes into the
/// close event (16 bytes of the ring buffer a close).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    /// One of [`role`].
    pub role: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Current TCP state ([`tcp_state`]).
    pub state: u8,
    /// One of [`teardown`].
    pub first_teardown: u8,
    /// The state the socket left when it reached `CLOSE`.
    pub final_state: u8,
    /// Where the connection's open stands if it was deferred ([`PendingList`]): one of
    /// [`deferral`]. A close that says [`deferral::PENDING`] stands for the open too.
    pub open_deferred: u8,
    pub _pad: [u8; 2],
    /// Generation: SYN time, or first sighting for partial records (ns).
    pub start_ns: u64,
    /// When the socket reached `ESTABLISHED` (ns); 0 if it never did (or was already there).
    pub established_ns: u64,
    /// First FIN or reset, either direction (ns); 0 if none.
    pub teardown_ns: u64,
    /// When the socket entered `CLOSE_WAIT` (ns); 0 if it never did.
    pub close_wait_ns: u64,
    /// When the local application closed or shut down the socket (ns); 0 if not seen.
    pub app_close_ns: u64,
    /// When the socket reached `CLOSE` (ns); 0 while open.
    pub close_ns: u64,
    /// Payload bytes sent over the whole connection.
    pub bytes_sent: u64,
    /// Payload bytes received over the whole connection.
    pub bytes_recv: u64,
    /// The request of the exchange in progress, completed while its response is under way
    /// (sockets whose role is known; [`direction::NONE`] otherwise).
    pub held: Burst,
    /// The burst in progress.
    pub burst: Burst,
    /// Who the socket belongs to.
    pub task: Task,
    /// Addresses and ports, taken when the connection is established (or first seen).
    pub endpoints: Endpoints,
    /// Retransmitted segments (`tcp:tcp_retransmit_skb`): the sum of `tcp_skb_pcount()` over
    /// the successful retransmits, as the kernel counts them.
    pub retransmits: u32,
    /// `sk->sk_err` when the socket reached `CLOSE` (an errno, e.g. 110 for `ETIMEDOUT`), or, if
    /// the application had taken it by then, when the kernel reported it (errors family).
    pub sk_err: u32,
    /// The kernel's own TCP counters, read when the record is sent at close.
    pub tcp: TcpStats,
    /// Why it was slow or stuck: chrono counters and RTOs read at close, SYN retransmits, the
    /// accept, drops ([`diag`]).
    pub diag: DiagStats,
    /// The exchanges completed so far (all but the one in progress). Its timeline spans come
    /// last, then the padding: a [`ShortCloseEvent`] leaves both out, so nothing else may
    /// follow them.
    pub exchanges: ExchangeSummary,
    /// Pads the table's elements to a multiple of a cache line (see above).
    pub _tail: [u8; 16],
}

// What a short close leaves out is the spans and the padding, and only them.
const _: () = assert!(
    SHORT_RECORD_BYTES + size_of::<[TimelineSpan; TIMELINE_SPANS]>()
        == core::mem::offset_of!(SockRecord, _tail)
        && core::mem::offset_of!(SockRecord, _tail) + 16 == size_of::<SockRecord>()
);

/// Exchanges a connection's timeline keeps besides its last: the first ones.
pub const TIMELINE_SPANS: usize = 15;

/// One exchange on a connection's timeline, in 8 bytes: its first byte in µs after the
/// connection's start (the timeline prints microseconds), and its first-to-last-byte duration
/// in ns below 2^31 ns, else in µs with the top bit set ([`TimelineSpan::pack`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimelineSpan {
    pub start_us: u32,
    pub duration: u32,
}

/// What the kernel keeps of the exchanges of a connection that the next request ended: all but
/// the one in progress, which the record's `held` and `burst` hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeSummary {
    /// Exchanges completed: the exchange in progress is number `count + 1`.
    pub count: u32,
    /// How many of them `spans` holds (the first ones).
    pub kept: u32,
    /// The longest time to first byte among them (ns; 0 for none).
    pub max_response_begin_ns: u64,
    /// The longest idle gap after a response among them (ns; 0 for none).
    pub max_idle_ns: u64,
    /// Their timeline spans, exchange 1 first; `count - kept` are left out.
    pub spans: [TimelineSpan; TIMELINE_SPANS],
}

/// `struct tcp_sock` counters, read at close at offsets from BTF (zero where the kernel lacks
/// the field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// `srtt_us`: smoothed RTT in µs, shifted left by 3 (as the kernel keeps it).
    pub srtt_us8: u32,
    /// `mdev_us`: RTT mean deviation in µs, shifted left by 2.
    pub mdev_us4: u32,
    /// `total_retrans`: segments retransmitted over the connection's life (SYN and SYN-ACK
    /// retransmits included), the connection's share of the namespace's `TcpRetransSegs`.
    pub total_retrans: u32,
    /// 1 when the fields were read.
    pub valid: u32,
    /// `bytes_acked`: bytes the peer acknowledged (RFC 4898 `tcpEStatsAppHCThruOctetsAcked`).
    pub bytes_acked: u64,
    /// `bytes_received`: bytes received in order (RFC 4898 `tcpEStatsAppHCThruOctetsReceived`).
    pub bytes_received: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have no
    // implicit padding (pinned by the layout tests), so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::Listener {}
    unsafe impl aya::Pod for super::DataCall {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::DiagOffsets {}
    unsafe impl aya::Pod for super::SockSample {}
    unsafe impl aya::Pod for super::ListenSample {}
    unsafe impl aya::Pod for super::ListenSock {}
    unsafe impl aya::Pod for super::Endpoints {}
    unsafe impl aya::Pod for super::FoldConfig {}
    unsafe impl aya::Pod for super::Folds {}
    unsafe impl aya::Pod for super::RoleFolds {}
    unsafe impl aya::Pod for super::PendingList {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn per_role_counters_fit_the_stats_map() {
        assert_eq!(stat::by_role(stat::CLOSE_UNSEEN, role::UNKNOWN), 4);
        assert_eq!(stat::by_role(stat::CLOSE_UNSEEN, role::SERVER), 6);
        assert_eq!(stat::by_role(stat::CLOSE_DROPPED, role::CLIENT), 8);
        assert_eq!(stat::by_role(stat::CLOSE_DROPPED, 200), stat::CLOSE_DROPPED);
        const _: () = assert!(stat::by_role(stat::CLOSE_DROPPED, role::SERVER) < stat::COUNT);
        const _: () = assert!(stat::CLOSE_UNSEEN + 2 < stat::CLOSE_DROPPED);
    }

    #[test]
    fn the_deferred_opens_ring_wraps() {
        let mut list = PendingList {
            head: u32::MAX - 1,
            tail: u32::MAX - 1,
            ..PendingList::default()
        };
        let mut opens = PendingOpens {
            entries: [PendingOpen::default(); PENDING_OPEN_SLOTS],
        };
        assert_eq!((list.waiting(), opens.oldest(&list)), (0, None));
        for sock in 1..=4u64 {
            opens.next_mut(&list).sock = sock;
            list.tail = list.tail.wrapping_add(1);
        }
        assert_eq!(list.waiting(), 4, "across the wrap");
        assert_eq!(opens.oldest(&list).map(|entry| entry.sock), Some(1));
        assert_eq!(opens.entries[1].sock, 4, "the fourth after the wrap");
        list.head = list.head.wrapping_add(3);
        assert_eq!(list.waiting(), 1);
        assert_eq!(opens.oldest(&list).map(|entry| entry.sock), Some(4));
        assert_eq!(list.tail, 2);
    }

    #[test]
    fn a_short_close_widens_to_the_whole_record() {
        let mut record = SockRecord {
            role: role::SERVER,
            start_ns: 7,
            close_ns: 9,
            retransmits: 3,
            ..SockRecord::default()
        };
        record.diag.drops = 2;
        record.exchanges.count = 1;
        record.exchanges.max_idle_ns = 11;
        let hdr = EventHeader {
            kind: kind::CLOSE,
            ts_ns: 9,
            ..EventHeader::default()
        };
        let close = CloseEvent { hdr, record };
        assert_eq!(ShortCloseEvent::of(&close).widen(), close);
    }

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<EventHeader>(), 32);
        assert_eq!(size_of::<Endpoints>(), 40);
        assert_eq!(size_of::<Task>(), 32);
        assert_eq!(size_of::<TcpStats>(), 32);
        assert_eq!(size_of::<Burst>(), 32);
        assert_eq!(size_of::<ExchangeSummary>(), 144);
        assert_eq!(size_of::<SockRecord>(), 456);
        // A table element (48-byte header, 8-byte key, record) is whole cache lines.
        assert_eq!((48 + 8 + size_of::<SockRecord>()) % 64, 0);
        assert_eq!(size_of::<OpenEvent>(), 112);
        assert_eq!(size_of::<BurstEvent>(), 136);
        assert_eq!(size_of::<StateEvent>(), 40);
        assert_eq!(size_of::<CloseEvent>(), 488);
        assert_eq!(SHORT_RECORD_BYTES, 320);
        assert_eq!(size_of::<ShortCloseEvent>(), 352);
        assert_eq!(align_of::<ShortCloseEvent>(), 8);
        assert_eq!(offset_of!(ShortCloseEvent, record), 32);
        assert_eq!(size_of::<FilterConfig>(), 8);
        assert_eq!(size_of::<Owner>(), 16);
        assert_eq!(size_of::<ListenKey>(), 8);
        assert_eq!(size_of::<Listener>(), 24);
        assert_eq!(size_of::<DataCall>(), 16);
        assert_eq!(align_of::<CloseEvent>(), 8);
        assert_eq!(offset_of!(EventHeader, ts_ns), 8);
        assert_eq!(offset_of!(EventHeader, start_ns), 24);
        assert_eq!(offset_of!(Endpoints, lport), 32);
        assert_eq!(offset_of!(SockRecord, role), 0);
        assert_eq!(offset_of!(SockRecord, flags), 1);
        assert_eq!(offset_of!(SockRecord, state), 2);
        assert_eq!(offset_of!(SockRecord, start_ns), 8);
        assert_eq!(offset_of!(SockRecord, held), 72);
        assert_eq!(offset_of!(SockRecord, burst), 104);
        assert_eq!(offset_of!(SockRecord, task), 136);
        assert_eq!(offset_of!(SockRecord, endpoints), 168);
        assert_eq!(offset_of!(SockRecord, retransmits), 208);
        assert_eq!(offset_of!(SockRecord, tcp), 216);
        assert_eq!(offset_of!(SockRecord, diag), 248);
        assert_eq!(offset_of!(SockRecord, exchanges), 296);
        assert_eq!(offset_of!(BurstEvent, seq), 128);
        assert_eq!(offset_of!(OpenEvent, role), 104);
        assert_eq!(offset_of!(OpenEvent, state), 106);
        assert_eq!(offset_of!(CloseEvent, record), 32);
        assert_eq!(offset_of!(StateEvent, new_state), 33);
    }
}
