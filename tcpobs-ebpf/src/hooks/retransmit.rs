//! Retransmits family.
//!
//! Hook: `tcp:tcp_retransmit_skb` (Linux 4.15), fired for every retransmitted segment.
//! - tp_btf prototype: `(const struct sock *sk, const struct sk_buff *skb)`, plus `int err`
//!   since 6.15.
//! - classic record: `skbaddr, skaddr, state, sport, dport, family, ...`.
//!
//! Counted in the socket record and reported with the connection. The first retransmitted
//! SYN of a connecting client also announces the connect (`kind::CONNECT`): a connect that
//! needs no retransmit is over (established or failed) within a round trip and is announced
//! by that, which saves an event on every healthy connection.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcpobs_common::{FLAG_CONNECT_SENT, Offsets, kind, role, tcp_state};

use super::read_sk;
use crate::{
    helpers::now_ns,
    maps::offsets,
    record::{Adoption, emit_open, learn_local_port, record_or_adopt},
    socket::{Direct, Read, Sock},
};

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    on_retransmit(offsets(), Sock::<Direct>::new(sk));
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn retransmit_tp(ctx: TracePointContext) -> u32 {
    let o = offsets();
    match read_sk(&ctx, o.tp_retransmit_sk) {
        Ok(sk) => {
            on_retransmit(o, sk);
            0
        }
        Err(ret) => ret,
    }
}

#[inline(always)]
fn on_retransmit<R: Read>(o: &Offsets, sk: Sock<R>) {
    if let Some(rec) = record_or_adopt(o, sk, None, Adoption::other_context(role::UNKNOWN)) {
        rec.retransmits += 1;
        learn_local_port(o, sk, rec);
        if rec.state == tcp_state::SYN_SENT
            && rec.role == role::CLIENT
            && rec.flags & FLAG_CONNECT_SENT == 0
        {
            rec.flags |= FLAG_CONNECT_SENT;
            emit_open(kind::CONNECT, sk.key(), rec, now_ns());
        }
    }
}
