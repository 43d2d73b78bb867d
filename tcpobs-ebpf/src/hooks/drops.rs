//! Drops family (optional): packets the kernel dropped, and why, charged to the traced
//! connection they belong to.
//!
//! Hook: `skb:kfree_skb`, fired by `kfree_skb_reason()` for every packet the host *drops*
//! (packets freed after use go to `skb:consume_skb`).
//! - tp_btf prototype: `(struct sk_buff *skb, void *location, enum skb_drop_reason reason)`
//!   since Linux 5.17, `(..., struct sock *rx_sk)` since 6.11; before 5.17 there is no reason
//!   and the family does not attach.
//! - classic record: `skbaddr, location, protocol, reason` (5.17), `rx_sk` (6.11).
//!
//! Cost: it fires for every dropped packet of the host, so the reason is tested first, against
//! the `DROP_INTEREST` array the daemon fills (every named reason but `NOT_SPECIFIED`): one
//! array lookup for uninteresting drops. Then the socket: `rx_sk` (receive path, 6.11), else
//! `skb->sk` (output path: a SYN or data dropped by a local firewall; receive path after early
//! demultiplexing), else the packet's addresses looked up in `TUPLES`, where a connection is
//! put at its first retransmit (a receive-path drop before the socket lookup, e.g. by
//! netfilter's INPUT chain, on kernels before 6.11 or on loopback). Only traced sockets count.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcpobs_common::{DiagOffsets, Endpoints, diag::DROP_REASONS};

use crate::{
    helpers::{kread, zero},
    maps::offsets,
    record::traced_record,
    socket::{Probe, Read, Sock},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;

/// Which `enum skb_drop_reason` values to look at (1), by value; written by the daemon.
#[map]
static DROP_INTEREST: Array<u8> = Array::with_max_entries(DROP_REASONS, 0);

/// Drops charged to traced connections, by reason.
#[map]
static DROP_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Addresses of connections that retransmitted (IPv4-mapped IPv6 folded to IPv4), to their
/// socket. LRU: a stale entry is harmless, its socket is checked against `SOCKETS`.
#[map]
static TUPLES: LruHashMap<Endpoints, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Linux 5.17 to 6.10.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    on_drop(&offsets().diag, skb, reason as u32, 0);
    0
}

/// Linux 6.11: with the receiving socket.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf_rx(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let rx_sk: u64 = ctx.arg(3);
    on_drop(&offsets().diag, skb, reason as u32, rx_sk);
    0
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb_tp(ctx: TracePointContext) -> u32 {
    let o = &offsets().diag;
    // SAFETY: the offsets come from this tracepoint's format file.
    let Ok(reason) = (unsafe { ctx.read_at::<u32>(usize::from(o.tp_kfree_reason)) }) else {
        return 0;
    };
    if !interesting(reason) {
        return 0;
    }
    // SAFETY: as above.
    let skb = unsafe { ctx.read_at::<u64>(usize::from(o.tp_kfree_skb)) }.unwrap_or(0);
    let rx_sk = if o.tp_kfree_rx_sk != 0 {
        // SAFETY: as above.
        unsafe { ctx.read_at::<u64>(usize::from(o.tp_kfree_rx_sk)) }.unwrap_or(0)
    } else {
        0
    };
    on_drop(o, skb, reason, rx_sk);
    0
}

#[inline(always)]
fn interesting(reason: u32) -> bool {
    reason < DROP_REASONS && DROP_INTEREST.get(reason).is_some_and(|wanted| *wanted != 0)
}

#[inline(always)]
fn on_drop(o: &DiagOffsets, skb: u64, reason: u32, rx_sk: u64) {
    if !interesting(reason) {
        return;
    }
    let sk = if rx_sk != 0 {
        rx_sk
    } else {
        kread::<u64>(skb, o.skb_sk).unwrap_or(0)
    };
    if sk != 0 && charge(sk, reason) {
        return;
    }
    by_headers(o, skb, reason);
}

/// Charges a drop to `sk` if it is traced.
#[inline(always)]
fn charge(sk: u64, reason: u32) -> bool {
    let Some(rec) = traced_record(Sock::<Probe>::new(sk as *const u8)) else {
        return false;
    };
    rec.diag.drops += 1;
    rec.diag.drop_reason = reason;
    if let Some(count) = DROP_COUNTS.get_ptr_mut(reason) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *count += 1 };
    }
    true
}

/// Finds the connection of a TCP packet by its addresses: the local socket it was for, or
/// (loopback, output path) the one that sent it.
#[inline(never)]
fn by_headers(o: &DiagOffsets, skb: u64, reason: u32) {
    if o.skb_head == 0 || o.skb_network_header == 0 {
        return;
    }
    let (Some(head), Some(network)) = (
        kread::<u64>(skb, o.skb_head),
        kread::<u16>(skb, o.skb_network_header),
    ) else {
        return;
    };
    if head == 0 || network == u16::MAX {
        return;
    }
    let ip = head + u64::from(network);
    let Some(first) = kread::<u8>(ip, 0) else {
        return;
    };
    let mut key = Endpoints::default();
    let transport = match first >> 4 {
        4 => {
            if kread::<u8>(ip, 9) != Some(IPPROTO_TCP) {
                return;
            }
            key.family = AF_INET;
            read_addr(ip + 16, &mut key.laddr, 4);
            read_addr(ip + 12, &mut key.raddr, 4);
            ip + u64::from(first & 0x0f) * 4
        }
        6 => {
            if kread::<u8>(ip, 6) != Some(IPPROTO_TCP) {
                return;
            }
            key.family = AF_INET6;
            read_addr(ip + 24, &mut key.laddr, 16);
            read_addr(ip + 8, &mut key.raddr, 16);
            ip + 40
        }
        _ => return,
    };
    let (Some(sport), Some(dport)) = (kread::<u16>(transport, 0), kread::<u16>(transport, 2))
    else {
        return;
    };
    key.lport = u16::from_be(dport);
    key.rport = u16::from_be(sport);
    // SAFETY: plain data copied out of the map value.
    if let Some(sk) = unsafe { TUPLES.get(key) }.copied()
        && charge(sk, reason)
    {
        return;
    }
    // Sent by a local socket (loopback): the other way round.
    core::mem::swap(&mut key.laddr, &mut key.raddr);
    core::mem::swap(&mut key.lport, &mut key.rport);
    // SAFETY: as above.
    if let Some(sk) = unsafe { TUPLES.get(key) }.copied() {
        charge(sk, reason);
    }
}

#[inline(always)]
fn read_addr(at: u64, addr: &mut [u8; 16], len: usize) {
    zero(addr);
    // SAFETY: the destination is a 16-byte array; the read fails rather than faults.
    let _ = unsafe { bpf_probe_read_kernel_buf(at as *const u8, &mut addr[..len]) };
}

/// Puts a connection's addresses in `TUPLES` (IPv4-mapped IPv6 folded to IPv4, as packets
/// carry them).
#[inline(never)]
pub fn index<R: Read>(sk: Sock<R>, endpoints: &Endpoints) {
    let mut key = *endpoints;
    key._pad = 0;
    if key.family == AF_INET6 && is_v4_mapped(&key.laddr) && is_v4_mapped(&key.raddr) {
        key.family = AF_INET;
        for addr in [&mut key.laddr, &mut key.raddr] {
            let v4 = [addr[12], addr[13], addr[14], addr[15]];
            zero(addr);
            addr[..4].copy_from_slice(&v4);
        }
    }
    let _ = TUPLES.insert(key, sk.key(), 0);
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
