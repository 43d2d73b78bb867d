//! Resets family: which side aborted.
//!
//! Hooks (Linux 4.15):
//! - `tcp:tcp_send_reset`: tp_btf `(const struct sock *sk, const struct sk_buff *skb,
//!   const enum sk_rst_reason reason)` since 6.10, `(sk, skb)` before; classic record
//!   `skbaddr, skaddr, ...`. `sk` is NULL for resets sent without a socket, and may be a
//!   request or time-wait socket, which `record_or_adopt` never adopts.
//! - `tcp:tcp_receive_reset`: tp_btf `(struct sock *sk)`; classic record `skaddr, ...`.
//!
//! A reset makes the close kind `rst`. `tcp_receive_reset` fires before the kernel moves the
//! socket to `CLOSE`; `tcp_send_reset` may fire after (see `close`).

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcpobs_common::{FLAG_RST_RECV, FLAG_RST_SENT, Offsets, role, tcp_state, teardown};

use super::read_sk;
use crate::{
    helpers::now_ns,
    maps::offsets,
    record::{Adoption, app_closed, first_teardown, learn_local_port, record_or_adopt},
    socket::{Direct, Read, Sock},
};

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    on_send_reset(offsets(), Sock::<Direct>::new(sk));
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn send_reset_tp(ctx: TracePointContext) -> u32 {
    let o = offsets();
    match read_sk(&ctx, o.tp_send_reset_sk) {
        Ok(sk) => {
            on_send_reset(o, sk);
            0
        }
        Err(ret) => ret,
    }
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn recv_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    on_recv_reset(offsets(), Sock::<Direct>::new(sk));
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn recv_reset_tp(ctx: TracePointContext) -> u32 {
    let o = offsets();
    match read_sk(&ctx, o.tp_recv_reset_sk) {
        Ok(sk) => {
            on_recv_reset(o, sk);
            0
        }
        Err(ret) => ret,
    }
}

#[inline(always)]
fn on_send_reset<R: Read>(o: &Offsets, sk: Sock<R>) {
    let Some(rec) = record_or_adopt(o, sk, None, Adoption::other_context(role::UNKNOWN)) else {
        return;
    };
    let now = now_ns();
    rec.flags |= FLAG_RST_SENT;
    first_teardown(rec, teardown::LOCAL_RST, now);
    if rec.state == tcp_state::CLOSE {
        // An abortive close() (SO_LINGER 0, unread data): CLOSE first, then the reset.
        app_closed(rec, now);
    }
}

#[inline(always)]
fn on_recv_reset<R: Read>(o: &Offsets, sk: Sock<R>) {
    let Some(rec) = record_or_adopt(o, sk, None, Adoption::other_context(role::UNKNOWN)) else {
        return;
    };
    let now = now_ns();
    learn_local_port(o, sk, rec);
    rec.flags |= FLAG_RST_RECV;
    first_teardown(rec, teardown::PEER_RST, now);
}
