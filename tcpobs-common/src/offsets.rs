//! Kernel layout facts the programs need, resolved by the daemon at start-up and passed in as
//! the read-only global [`crate::names::OFFSETS_GLOBAL`].
//!
//! aya-ebpf has no CO-RE relocations, so nothing here is hard-coded: `struct sock` offsets come
//! from `/sys/kernel/btf/vmlinux`, classic tracepoint record offsets from the tracepoint's
//! `format` file in tracefs. One binary then runs on every kernel.

/// Byte offsets into kernel structures, plus the ring buffer wake-up threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `struct sock`: `__sk_common.skc_family` (u16).
    pub sk_family: u16,
    /// `struct sock`: `__sk_common.skc_state` (u8).
    pub sk_state: u16,
    /// `struct inet_sock` (which starts with `struct sock`): `inet_sport`, the local port in
    /// network order (u16). Unlike `skc_num`, still set when the socket reaches `CLOSE`.
    pub inet_sport: u16,
    /// `struct sock`: `__sk_common.skc_dport`, the remote port in network order (u16).
    pub sk_dport: u16,
    /// `struct sock`: `__sk_common.skc_rcv_saddr`, local IPv4 address (4 bytes).
    pub sk_rcv_saddr: u16,
    /// `struct sock`: `__sk_common.skc_daddr`, remote IPv4 address (4 bytes).
    pub sk_daddr: u16,
    /// `struct sock`: `__sk_common.skc_v6_rcv_saddr`, local IPv6 address (16 bytes).
    pub sk_v6_rcv_saddr: u16,
    /// `struct sock`: `__sk_common.skc_v6_daddr`, remote IPv6 address (16 bytes).
    pub sk_v6_daddr: u16,
    /// `struct sock`: `sk_protocol` (u16).
    pub sk_protocol: u16,
    /// `struct sock`: `sk_err` (int).
    pub sk_err: u16,
    /// `struct sock`: `sk_type` (u16), `SOCK_STREAM` for TCP (raw sockets can say
    /// `IPPROTO_TCP` too).
    pub sk_type: u16,
    /// `struct sock`: `__sk_common.skc_net.net`, the network namespace (pointer).
    pub sk_net: u16,
    /// `struct net`: `ns.inum`, the namespace's inode number (u32).
    pub net_inum: u16,
    /// `sock:inet_sock_set_state` record: `skaddr`.
    pub tp_state_sk: u16,
    /// `sock:inet_sock_set_state` record: `oldstate`.
    pub tp_state_old: u16,
    /// `sock:inet_sock_set_state` record: `newstate`.
    pub tp_state_new: u16,
    /// `sock:sock_send_length` record: `sk`.
    pub tp_send_sk: u16,
    /// `sock:sock_send_length` record: `ret`.
    pub tp_send_ret: u16,
    /// `sock:sock_send_length` record: `flags`.
    pub tp_send_flags: u16,
    /// `sock:sock_recv_length` record: `sk`.
    pub tp_recv_sk: u16,
    /// `sock:sock_recv_length` record: `ret`.
    pub tp_recv_ret: u16,
    /// `sock:sock_recv_length` record: `flags`.
    pub tp_recv_flags: u16,
    /// `tcp:tcp_destroy_sock` record: `skaddr`.
    pub tp_destroy_sk: u16,
    /// `tcp:tcp_send_reset` record: `skaddr`.
    pub tp_send_reset_sk: u16,
    /// `tcp:tcp_receive_reset` record: `skaddr`.
    pub tp_recv_reset_sk: u16,
    /// `tcp:tcp_retransmit_skb` record: `skaddr`.
    pub tp_retransmit_sk: u16,
    /// `struct tcp_sock`: `srtt_us` (u32); 0 where the kernel lacks it, like the four below.
    pub tcp_srtt_us: u16,
    /// `struct tcp_sock`: `mdev_us` (u32).
    pub tcp_mdev_us: u16,
    /// `struct tcp_sock`: `total_retrans` (u32).
    pub tcp_total_retrans: u16,
    /// `struct tcp_sock`: `bytes_acked` (u64).
    pub tcp_bytes_acked: u16,
    /// `struct tcp_sock`: `bytes_received` (u64).
    pub tcp_bytes_received: u16,
    /// `tcp_recvmsg()`: the index of its `flags` parameter (4 before Linux 5.19, which dropped
    /// `nonblock`, 3 since), for the kprobe.
    pub recv_flags_arg: u16,
    /// `struct sock`: `__sk_common.skc_flags` (unsigned long), for `SOCK_DEAD`.
    pub sk_flags: u16,
    /// The first port of `net.ipv4.ip_local_port_range` in tcpobs's network namespace (0 if
    /// unknown): a seeded socket whose local port neither listens nor is ephemeral is not
    /// taken for a client ([`crate::seed::role_of`]).
    pub ephemeral_low: u16,
    /// `sock:sock_send_length` and `sock:sock_recv_length` records (one event class,
    /// `sock_msg_length`, so one layout): `family` and `protocol`, with which the classic data
    /// programs leave sockets other than TCP before any table lookup. 0 where unknown (the two
    /// formats disagree, or lack the fields): then the programs look every socket up.
    pub tp_length_family: u16,
    pub tp_length_protocol: u16,
    /// Wake the reader once this many bytes are waiting in the ring buffer; below that the
    /// reader polls on a timer (events are submitted with `BPF_RB_NO_WAKEUP`).
    pub wakeup_bytes: u64,
    /// What the diagnostics read (chrono counters, stall signals, listeners, drops, accept).
    pub diag: crate::DiagOffsets,
}

impl Offsets {
    /// All zero: the value compiled into the object file, always overridden by the loader.
    pub const UNSET: Self = Self {
        sk_family: 0,
        sk_state: 0,
        inet_sport: 0,
        sk_dport: 0,
        sk_rcv_saddr: 0,
        sk_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_v6_daddr: 0,
        sk_protocol: 0,
        sk_err: 0,
        sk_type: 0,
        sk_net: 0,
        net_inum: 0,
        tp_state_sk: 0,
        tp_state_old: 0,
        tp_state_new: 0,
        tp_send_sk: 0,
        tp_send_ret: 0,
        tp_send_flags: 0,
        tp_recv_sk: 0,
        tp_recv_ret: 0,
        tp_recv_flags: 0,
        tp_destroy_sk: 0,
        tp_send_reset_sk: 0,
        tp_recv_reset_sk: 0,
        tp_retransmit_sk: 0,
        tcp_srtt_us: 0,
        tcp_mdev_us: 0,
        tcp_total_retrans: 0,
        tcp_bytes_acked: 0,
        tcp_bytes_received: 0,
        recv_flags_arg: 0,
        sk_flags: 0,
        ephemeral_low: 0,
        tp_length_family: 0,
        tp_length_protocol: 0,
        wakeup_bytes: 0,
        diag: crate::DiagOffsets::UNSET,
    };
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layout_is_pinned() {
        assert_eq!(size_of::<Offsets>(), 168);
        assert_eq!(offset_of!(Offsets, sk_flags), 64);
        assert_eq!(offset_of!(Offsets, tp_length_family), 68);
        assert_eq!(offset_of!(Offsets, wakeup_bytes), 72);
        assert_eq!(offset_of!(Offsets, diag), 80);
        assert_eq!(Offsets::UNSET, Offsets::default());
    }
}
