//! Retransmits family.
//!
//! Hook: `tcp:tcp_retransmit_skb` (Linux 4.15), fired by `__tcp_retransmit_skb()`.
//! - tp_btf prototype: `(const struct sock *sk, const struct sk_buff *skb)`; since Linux 6.15
//!   `(sk, skb, int err)`, and it then fires on every attempt, also those that sent nothing
//!   (`-EBUSY` while the original is still in the host's queue, `-EAGAIN`, `-ENOMEM`). Before
//!   6.15 it fires only when the retransmit succeeded.
//! - classic record: `skbaddr, skaddr, state, sport, dport, family, ...` (`err` since 6.15).
//!
//! One buffer can carry several segments (TSO/GSO): the kernel counts `tcp_skb_pcount(skb)`
//! segments in `TcpRetransSegs` and `tcp_sock.total_retrans`, and so does this hook, for the
//! successful attempts only. Counted in the socket record, and while the socket is in
//! `SYN_SENT` also as SYN retransmits. The first retransmit of a connection also puts its
//! addresses in `TUPLES` ([`super::drops`]), so that packets dropped before the kernel found
//! their socket are still charged to it, and the first retransmitted SYN of a connecting client
//! announces the connect (`kind::CONNECT`): a connect that needs no retransmit is over
//! (established or failed) within a round trip and is announced by that, which saves an event
//! on every healthy connection.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcpobs_common::{
    FLAG_ANNOUNCED, FLAG_CONNECT_SENT, Offsets, diag::have, kind, role, tcp_state,
};

use super::{drops, read_sk};
use crate::{
    helpers::{kread, now_ns},
    maps::offsets,
    record::{Adoption, emit_open, learn_local_port, record_or_adopt},
    socket::{Direct, Read, Sock},
};

/// Before Linux 6.15: `(sk, skb)`, successful retransmits only.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let o = offsets();
    on_retransmit(o, Sock::<Direct>::new(sk), segments(o, skb));
    0
}

/// Linux 6.15: `(sk, skb, err)`, every attempt.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn retransmit_btf_err(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let err: i64 = ctx.arg(2);
    if err as i32 != 0 {
        return 0;
    }
    let o = offsets();
    on_retransmit(o, Sock::<Direct>::new(sk), segments(o, skb));
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn retransmit_tp(ctx: TracePointContext) -> u32 {
    let o = offsets();
    let sk = match read_sk(&ctx, o.tp_retransmit_sk) {
        Ok(sk) => sk,
        Err(ret) => return ret,
    };
    if o.diag.tp_retransmit_err != 0 {
        // SAFETY: the offset comes from this tracepoint's format file.
        let err = unsafe { ctx.read_at::<i32>(usize::from(o.diag.tp_retransmit_err)) };
        if err != Ok(0) {
            return 0;
        }
    }
    let skb = if o.diag.tp_retransmit_skb != 0 {
        // SAFETY: as above.
        unsafe { ctx.read_at::<u64>(usize::from(o.diag.tp_retransmit_skb)) }.unwrap_or(0)
    } else {
        0
    };
    on_retransmit(o, sk, segments(o, skb));
    0
}

/// `tcp_skb_pcount(skb)`: the segments the buffer carries (1 if unreadable).
#[inline(always)]
fn segments(o: &Offsets, skb: u64) -> u32 {
    if o.diag.skb_pcount == 0 {
        return 1;
    }
    match kread::<u16>(skb, o.diag.skb_pcount) {
        Some(0) | None => 1,
        Some(segs) => u32::from(segs),
    }
}

#[inline(always)]
fn on_retransmit<R: Read>(o: &Offsets, sk: Sock<R>, segs: u32) {
    if let Some(rec) = record_or_adopt(o, sk, None, Adoption::other_context(role::UNKNOWN)) {
        rec.retransmits += segs;
        learn_local_port(o, sk, rec);
        if rec.state == tcp_state::SYN_SENT {
            rec.diag.syn_retrans += segs;
        }
        if rec.diag.have & have::INDEXED == 0 {
            rec.diag.have |= have::INDEXED;
            drops::index(sk, &rec.endpoints);
        }
        if rec.state == tcp_state::SYN_SENT
            && rec.role == role::CLIENT
            && rec.flags & FLAG_CONNECT_SENT == 0
        {
            rec.flags |= FLAG_CONNECT_SENT;
            if emit_open(kind::CONNECT, sk.key(), rec, now_ns()) {
                rec.flags |= FLAG_ANNOUNCED;
            }
        }
    }
}
