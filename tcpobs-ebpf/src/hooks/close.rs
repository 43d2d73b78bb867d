//! Close family: the application closes the socket, and the socket is freed.
//!
//! Hooks, by strategy:
//! - tracepoint: `tcp:tcp_destroy_sock` (Linux 4.15), fired by `tcp_v4_destroy_sock()` (for
//!   IPv6 sockets too) once a socket in `CLOSE` is orphaned, i.e. both the connection and the
//!   application are done with it. tp_btf prototype `(struct sock *sk)`; classic record
//!   `skaddr, sport, dport, family, saddr, daddr, ..., sock_cookie`. The application's
//!   `close()` is seen by the state family (`-> FIN_WAIT1`, `-> LAST_ACK`).
//! - fentry / kprobe: on `tcp_v4_destroy_sock(sk)` itself, plus `tcp_close(sk, timeout)`, which
//!   marks the application's close when it happens, in the closing process.
//!
//! The state hook sends the final record at `CLOSE` when the cause is known; otherwise the
//! record waits for this hook, which catches the reset that `close()` sends *after* setting
//! `CLOSE` (`SO_LINGER` 0, unread data). An orphaned socket's `CLOSE` is left to this hook
//! entirely (close time, final state, `sk_err`: see the state family), and so is any record
//! whose `CLOSE` transition was missed.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use tcpobs_common::{FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, FLAG_IGNORED};

use crate::{
    helpers::now_ns,
    maps::{SOCKETS, offsets},
    record::{app_closed, finish, forget_unborn_child, mark_closed, traced_record},
    socket::{Direct, Probe, Read, Sock},
};

#[fentry(function = "tcp_v4_destroy_sock")]
pub fn destroy_fentry(ctx: FEntryContext) -> u32 {
    on_destroy(Sock::<Direct>::new(ctx.arg(0)));
    0
}

#[kprobe]
pub fn destroy_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        on_destroy(Sock::<Probe>::new(sk));
    }
    0
}

#[fentry(function = "tcp_close")]
pub fn close_fentry(ctx: FEntryContext) -> u32 {
    on_close(Sock::<Direct>::new(ctx.arg(0)));
    0
}

#[kprobe]
pub fn close_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        on_close(Sock::<Probe>::new(sk));
    }
    0
}

/// `close()` on a traced socket, in the closing process: the same mark the state family sets
/// at `-> FIN_WAIT1` / `-> LAST_ACK`, only sooner (and also for a socket that is already
/// `CLOSE`, whose `close()` the state family cannot see).
#[inline(always)]
fn on_close<R: Read>(sk: Sock<R>) {
    if sk.is_null() {
        return;
    }
    if let Some(rec) = traced_record(sk) {
        app_closed(rec, now_ns());
    }
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn destroy_btf(ctx: BtfTracePointContext) -> i32 {
    match try_destroy_btf(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_destroy_btf(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let sk: *const u8 = ctx.arg(0);
    on_destroy(Sock::<Direct>::new(sk));
    Ok(0)
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn destroy_tp(ctx: TracePointContext) -> u32 {
    match try_destroy_tp(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_destroy_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    let o = offsets();
    // SAFETY: the offset comes from this tracepoint's format file.
    let sk = unsafe { ctx.read_at::<u64>(usize::from(o.tp_destroy_sk)) }.map_err(|_| 1u32)?;
    on_destroy(Sock::<Probe>::new(sk as *const u8));
    Ok(0)
}

#[inline(always)]
fn on_destroy<R: Read>(sk: Sock<R>) {
    let Some(rec) = SOCKETS.get_ptr_mut(sk.key()) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; see `record::record_or_adopt`.
    let rec = unsafe { &mut *rec };
    if rec.flags & FLAG_IGNORED != 0 {
        let _ = SOCKETS.remove(sk.key());
        return;
    }
    if forget_unborn_child(sk.key(), rec) {
        return;
    }
    let now = now_ns();
    if rec.close_ns == 0 {
        // An orphan's `CLOSE` (the state family returned early), or a missed one.
        mark_closed(offsets(), sk, rec, rec.state, now);
    }
    if rec.flags & (FLAG_CLOSE_WAIT | FLAG_APP_CLOSED) == FLAG_CLOSE_WAIT {
        // Destroyed when the last reference goes: the application closed its end now.
        rec.flags |= FLAG_APP_CLOSED;
        rec.app_close_ns = now;
    }
    finish(sk, rec, now);
}
