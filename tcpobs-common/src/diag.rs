//! Why a connection is slow or stuck, and how healthy a listener is: what the kernel programs
//! read for it (issue 15).
//!
//! - [`DiagStats`], appended to every [`crate::SockRecord`] and sent with the close: the
//!   kernel's own `tcp_info` chrono counters (busy, limited by the peer's receive window,
//!   limited by the send buffer), retransmission timeouts, SYN retransmits, when the
//!   application accepted the socket, and the packets the kernel dropped for it (with why).
//! - [`SockSample`] and [`ListenSample`]: what the sampler program (`sample_socks`, a raw
//!   tracepoint program the daemon runs with `BPF_PROG_TEST_RUN`, never attached) reads of live
//!   sockets the daemon names by address: the stall signals of a connection, the accept queue
//!   and drop counter of a listener. Reading by address needs no network namespace switch.
//! - [`ListenSock`]: a listening socket and who listens (`LISTEN_SOCKS`), registered at
//!   `listen()` or found at start-up by the `find_listeners` iterator.
//! - [`DiagOffsets`]: the kernel layout all of these need, from BTF and tracefs.
//!
//! Units as in the rest of the crate; `_j` is jiffies (the daemon measures the kernel's HZ with
//! the sampler, which returns both clocks).

/// `DiagStats::have` bits.
pub mod have {
    /// `chrono_j` was read (`tcp_sock.chrono_*`, every supported kernel).
    pub const CHRONO: u32 = 1 << 0;
    /// `total_rto` was read (`tcp_sock.total_rto`, Linux 6.7).
    pub const RTO: u32 = 1 << 1;
    /// The socket's addresses are in `TUPLES`, so that drops found by their headers alone are
    /// attributed to it (set on its first retransmit).
    pub const INDEXED: u32 = 1 << 8;
}

/// Close-time diagnostics of a socket (appended to [`crate::SockRecord`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiagStats {
    /// When the application's `accept()` returned this socket (ns); 0 if not seen (a client, or
    /// the accept family is not attached, or an accept path it does not see).
    pub accept_ns: u64,
    /// `tcp_info`'s chrono counters in jiffies, as `tcp_get_info_chrono_stats()` computes them
    /// at close: `[busy, rwnd_limited, sndbuf_limited]`, each `chrono_stat[i]` plus the running
    /// period if `chrono_type` is that one. `tcpi_busy_time` is the sum of the three.
    pub chrono_j: [u32; 3],
    /// `tcp_sock.total_rto`: retransmission timeouts (Linux 6.7; see `have::RTO`).
    pub total_rto: u32,
    /// Segments retransmitted while in `SYN_SENT`: a client's SYN retransmits.
    pub syn_retrans: u32,
    /// Packets the kernel dropped (`skb:kfree_skb`) that belong to this socket.
    pub drops: u32,
    /// `enum skb_drop_reason` of the last of them.
    pub drop_reason: u32,
    /// Zero-window probes sent (`tcp_send_probe0`, probes family).
    pub probes0: u32,
    /// [`have`] bits.
    pub have: u32,
    pub _pad: u32,
}

/// What the sampler read of a live connection (`SOCK_SAMPLES`, by argument slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockSample {
    /// The socket asked for; 0 when it has no traced record (closed, or not traced).
    pub sock: u64,
    /// The record's generation (`SockRecord::start_ns`).
    pub start_ns: u64,
    /// `bpf_ktime_get_ns()` and `bpf_jiffies64()` when read.
    pub now_ns: u64,
    pub jiffies: u64,
    /// `tcp_sock.snd_wnd`: the peer's receive window (bytes).
    pub snd_wnd: u32,
    /// `tcp_sock.packets_out`: segments in flight.
    pub packets_out: u32,
    /// `write_seq - snd_nxt`: bytes written by the application and not sent yet.
    pub unsent: u32,
    /// `snd_nxt - snd_una`: bytes sent and not acknowledged.
    pub unacked: u32,
    /// `tcp_sock.rcv_tstamp`: when the last ACK arrived (jiffies, low 32 bits).
    pub rcv_tstamp: u32,
    /// `tcp_sock.chrono_start` (jiffies, low 32 bits).
    pub chrono_start: u32,
    /// `tcp_sock.chrono_type`: 0 none, 1 busy, 2 limited by the receive window, 3 by the
    /// send buffer.
    pub chrono_type: u8,
    /// `icsk_pending`: the pending timer (1 retransmit, 3 zero-window probe, ...).
    pub pending: u8,
    /// `icsk_retransmits`: retransmission timeouts since the last ACK that advanced.
    pub retransmits: u8,
    /// `icsk_backoff`.
    pub backoff: u8,
    /// `icsk_probes_out`: unanswered zero-window (or keep-alive) probes.
    pub probes_out: u8,
    /// `sk_state`.
    pub state: u8,
    /// 1 when the record outlived its socket: the socket at this address is closed and
    /// orphaned (destroyed, or being destroyed), or carries other ports (its memory now holds
    /// another socket). The kernel skipped the close hooks' run (see the daemon's
    /// `kernel::misses`); the daemon reads such a socket twice before it reports the
    /// connection lost.
    pub gone: u8,
    pub _pad: u8,
}

/// What the sampler read of a listening socket (`LISTEN_SAMPLES`, by argument slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenSample {
    /// The socket asked for.
    pub sock: u64,
    /// `sk_drops`: every `tcp_listendrop()` (and other drops) of the listener so far.
    pub drops: u32,
    /// `sk_ack_backlog`: connections in the accept queue.
    pub ack_backlog: u32,
    /// `sk_max_ack_backlog`: the `listen()` backlog (the queue holds one more: it is full when
    /// `ack_backlog > max_ack_backlog`).
    pub max_ack_backlog: u32,
    /// `icsk_accept_queue.qlen`: requests in the SYN queue.
    pub syn_queue: u32,
    /// The network namespace's inode number.
    pub netns: u32,
    /// Local port, host byte order.
    pub port: u16,
    /// `sk_state` (`tcp_state::LISTEN` while it listens).
    pub state: u8,
    pub _pad: u8,
    /// Local address, network byte order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    pub _pad2: [u8; 6],
}

/// `LISTEN_SOCKS` value: a listening socket (keyed by its address) and who listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenSock {
    /// The listening process (the caller of `listen()`, or the first process found holding it).
    pub task: crate::Task,
    /// The network namespace's inode number.
    pub netns: u32,
    /// Local port, host byte order.
    pub port: u16,
    /// 1 if found at start-up by the iterator (its drop count so far is history), 0 if
    /// registered at `listen()`.
    pub found: u16,
}

/// First argument of a sampler run: what the other eleven are.
pub mod sample {
    /// Connections: fills `SOCK_SAMPLES`.
    pub const SOCKS: u64 = 1;
    /// Listening sockets: fills `LISTEN_SAMPLES`.
    pub const LISTENERS: u64 = 2;
    /// Sockets per run (the twelve arguments of a raw tracepoint, less the kind).
    pub const PER_RUN: usize = 11;
}

/// Highest `enum skb_drop_reason` value tracked (the `DROP_INTEREST` and `DROP_COUNTS` arrays
/// are this long); subsystem reasons (bit 16 and up) are beyond it and ignored.
pub const DROP_REASONS: u32 = 1024;

/// Kernel layout for the diagnostics: byte offsets from BTF (0 where the kernel lacks a field,
/// unless said otherwise) and classic tracepoint record offsets from tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiagOffsets {
    /// `tcp_sock.chrono_start` (u32).
    pub chrono_start: u16,
    /// `tcp_sock.chrono_stat` (`u32[3]`).
    pub chrono_stat: u16,
    /// The byte holding `tcp_sock.chrono_type`, its bit shift and mask (a 2-bit bitfield before
    /// Linux 6.8, a byte since).
    pub chrono_type: u16,
    pub chrono_type_shift: u16,
    pub chrono_type_mask: u16,
    /// `tcp_sock.total_rto` (u16, Linux 6.7).
    pub total_rto: u16,
    /// `tcp_sock`: `snd_wnd`, `packets_out`, `write_seq`, `snd_nxt`, `snd_una`, `rcv_tstamp`
    /// (all u32).
    pub snd_wnd: u16,
    pub packets_out: u16,
    pub write_seq: u16,
    pub snd_nxt: u16,
    pub snd_una: u16,
    pub rcv_tstamp: u16,
    /// `inet_connection_sock`: `icsk_pending`, `icsk_retransmits`, `icsk_backoff`,
    /// `icsk_probes_out` (u8 each), `icsk_accept_queue.qlen` (int).
    pub icsk_pending: u16,
    pub icsk_retransmits: u16,
    pub icsk_backoff: u16,
    pub icsk_probes_out: u16,
    pub icsk_qlen: u16,
    /// `struct sock`: `sk_drops` (atomic int), `sk_ack_backlog`, `sk_max_ack_backlog` (u32).
    pub sk_drops: u16,
    pub sk_ack_backlog: u16,
    pub sk_max_ack_backlog: u16,
    /// `struct sk_buff`: `sk`, `head`, `network_header` (u16) and where
    /// `TCP_SKB_CB(skb)->tcp_gso_segs` (`tcp_skb_pcount()`, u16) lives (`cb` + its offset).
    pub skb_sk: u16,
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_pcount: u16,
    /// `tcp:tcp_retransmit_skb` record: `skbaddr`, and `err` (Linux 6.15; 0 where absent).
    pub tp_retransmit_skb: u16,
    pub tp_retransmit_err: u16,
    /// `skb:kfree_skb` record: `skbaddr`, `reason` (5.17), `rx_sk` (6.11; 0 where absent).
    pub tp_kfree_skb: u16,
    pub tp_kfree_reason: u16,
    pub tp_kfree_rx_sk: u16,
    /// `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept` records: `ret`.
    pub tp_accept4_ret: u16,
    pub tp_accept_ret: u16,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds` (0: it is the first member),
    /// `fdtable.fd`, `file.private_data`, `socket.sk`: from an fd to its socket.
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdt_max_fds: u16,
    pub fdt_fd: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    /// `file.f_inode`, `inode.i_mode` (the `find_listeners` iterator keeps socket files).
    pub file_inode: u16,
    pub inode_mode: u16,
    /// `task_struct.tgid`, `task_struct.comm` (who holds a listener found by the iterator).
    pub task_tgid: u16,
    pub task_comm: u16,
    pub _pad: [u16; 3],
}

impl DiagOffsets {
    /// All zero, as compiled into the object.
    pub const UNSET: Self = Self {
        chrono_start: 0,
        chrono_stat: 0,
        chrono_type: 0,
        chrono_type_shift: 0,
        chrono_type_mask: 0,
        total_rto: 0,
        snd_wnd: 0,
        packets_out: 0,
        write_seq: 0,
        snd_nxt: 0,
        snd_una: 0,
        rcv_tstamp: 0,
        icsk_pending: 0,
        icsk_retransmits: 0,
        icsk_backoff: 0,
        icsk_probes_out: 0,
        icsk_qlen: 0,
        sk_drops: 0,
        sk_ack_backlog: 0,
        sk_max_ack_backlog: 0,
        skb_sk: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_pcount: 0,
        tp_retransmit_skb: 0,
        tp_retransmit_err: 0,
        tp_kfree_skb: 0,
        tp_kfree_reason: 0,
        tp_kfree_rx_sk: 0,
        tp_accept4_ret: 0,
        tp_accept_ret: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_sk: 0,
        file_inode: 0,
        inode_mode: 0,
        task_tgid: 0,
        task_comm: 0,
        _pad: [0; 3],
    };
}

impl DiagStats {
    /// The chrono counters as `tcp_info` reports them, in nanoseconds for a kernel of `hz`:
    /// `(busy, rwnd_limited, sndbuf_limited)`, busy including both limited times.
    pub fn chrono_ns(&self, hz: u64) -> Option<(u64, u64, u64)> {
        if self.have & have::CHRONO == 0 || hz == 0 {
            return None;
        }
        let ns = |j: u32| u64::from(j) * 1_000_000_000 / hz;
        let [busy, rwnd, sndbuf] = self.chrono_j;
        Some((ns(busy) + ns(rwnd) + ns(sndbuf), ns(rwnd), ns(sndbuf)))
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<DiagStats>(), 48);
        assert_eq!(offset_of!(DiagStats, chrono_j), 8);
        assert_eq!(offset_of!(DiagStats, drops), 28);
        assert_eq!(offset_of!(DiagStats, have), 40);
        assert_eq!(size_of::<SockSample>(), 64);
        assert_eq!(offset_of!(SockSample, chrono_type), 56);
        assert_eq!(size_of::<ListenSample>(), 56);
        assert_eq!(offset_of!(ListenSample, port), 28);
        assert_eq!(size_of::<ListenSock>(), 40);
        assert_eq!(size_of::<DiagOffsets>(), 88);
        assert_eq!(DiagOffsets::UNSET, DiagOffsets::default());
    }

    #[test]
    fn chrono_follows_tcp_info() {
        let stats = DiagStats {
            chrono_j: [4, 750, 0],
            have: have::CHRONO,
            ..Default::default()
        };
        // HZ 250: 4 ms a jiffy; busy includes the limited times (tcp_get_info_chrono_stats).
        assert_eq!(
            stats.chrono_ns(250),
            Some((3_016_000_000, 3_000_000_000, 0))
        );
        assert_eq!(DiagStats::default().chrono_ns(250), None);
    }
}
