//! State family: every TCP state change.
//!
//! Hook: `sock:inet_sock_set_state` (Linux 4.16), the stable tracepoint that `tcp_set_state()`
//! fires *before* storing the new state; or, with the kprobe strategy, kprobes on the two
//! functions that fire it.
//! - tp_btf prototype: `(const struct sock *sk, const int oldstate, const int newstate)`.
//! - classic record: `skaddr, oldstate, newstate, sport, dport, family, protocol, ...`.
//!
//! It sees active opens (`CLOSE -> SYN_SENT`, in the connecting process's context), passive
//! opens (`LISTEN -> SYN_RECV` on the new child socket, in softirq), establishment, the first
//! FIN in either direction (`ESTABLISHED -> FIN_WAIT1` is a local close, `-> CLOSE_WAIT` a peer
//! close) and the end (`-> CLOSE`). It also fires for SCTP and MPTCP sockets, which the
//! protocol check drops.
//!
//! When the socket reaches `CLOSE` the final record is sent right away if the cause is already
//! known (a reset arrived, or `sk_err` says timeout/refused). Otherwise the close came from the
//! application (`close()` with `SO_LINGER` 0 or unread data sets `CLOSE` *then* sends the
//! reset), and `tcp:tcp_destroy_sock`, which follows in the same call, sends it instead. A
//! socket in `CLOSE_WAIT` that the application has not closed also waits for
//! `tcp_destroy_sock`, which fires when the application finally closes it.
//!
//! Two transitions of an orphaned socket (`SOCK_DEAD`: the application closed it and no file
//! refers to it) return early, since a churned connection runs this program ten times:
//! - `-> CLOSE` from a teardown state: `tcp_destroy_sock` follows in the same call
//!   (`tcp_done()`) and does what this program would (close time, final state, `sk_err`), so
//!   this run does nothing at all;
//! - `FIN_WAIT1 -> FIN_WAIT2`: only the state is stored, for the final state at destroy. An
//!   orphan does not linger in `FIN_WAIT2` as a full socket (the kernel moves it to a
//!   time-wait socket at once, or at most `tcp_fin_timeout` later), so the `FIN_WAIT2` event
//!   the hang detector waits for is sent only for sockets the application still holds
//!   (`shutdown(SHUT_WR)`), which can linger for good.

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, tracepoint},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use tcpobs_common::{
    FLAG_ANNOUNCED, FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, FLAG_PARTIAL, FLAG_RST_RECV, Offsets,
    deferral, kind, role, tcp_state, teardown,
};

use crate::{
    filter::{listening, not_listening},
    helpers::now_ns,
    maps::{connect_hooked, offsets},
    record::{
        Adoption, announce, app_closed, defer_open, emit_open, emit_state, finish, first_teardown,
        forget_unborn_child, judge_server, learn_local_port, mark_closed, record_or_adopt, start,
        store_load_fence, traced_record,
    },
    socket::{Direct, Probe, Read, Sock},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf(ctx: BtfTracePointContext) -> i32 {
    match try_set_state_btf(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_set_state_btf(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    on_set_state(offsets(), Sock::<Direct>::new(sk), old as u8, new as u8);
    Ok(0)
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn set_state_tp(ctx: TracePointContext) -> u32 {
    match try_set_state_tp(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_set_state_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    let o = offsets();
    // SAFETY: the offsets come from this tracepoint's format file.
    let (sk, old, new) = unsafe {
        (
            ctx.read_at::<u64>(usize::from(o.tp_state_sk))
                .map_err(|_| 1u32)?,
            ctx.read_at::<i32>(usize::from(o.tp_state_old))
                .map_err(|_| 1u32)?,
            ctx.read_at::<i32>(usize::from(o.tp_state_new))
                .map_err(|_| 1u32)?,
        )
    };
    on_set_state(o, Sock::<Probe>::new(sk as *const u8), old as u8, new as u8);
    Ok(0)
}

/// kprobe strategy: `inet_sk_state_store(sk, newstate)`, called by every `tcp_set_state()`
/// and by `listen()`, fires the tracepoint on entry; so does `inet_sk_set_state(sk, state)`,
/// which new accepted sockets go through. Same point, same logic, old state read from the
/// socket (not yet overwritten on entry).
#[kprobe]
pub fn state_store_kprobe(ctx: ProbeContext) -> u32 {
    on_state_kprobe(&ctx);
    0
}

#[kprobe]
pub fn set_state_kprobe(ctx: ProbeContext) -> u32 {
    on_state_kprobe(&ctx);
    0
}

#[inline(always)]
fn on_state_kprobe(ctx: &ProbeContext) {
    let (Some(sk), Some(new)) = (ctx.arg::<*const u8>(0), ctx.arg::<i32>(1)) else {
        return;
    };
    let o = offsets();
    let sk = Sock::<Probe>::new(sk);
    if sk.is_null() {
        return;
    }
    on_set_state(o, sk, sk.state(o), new as u8);
}

/// The protocol check (three reads of the socket) is made only where a socket is first seen:
/// a socket with a record is TCP, and one without is checked when it is adopted.
#[inline(always)]
fn on_set_state<R: Read>(o: &Offsets, sk: Sock<R>, old: u8, new: u8) {
    if sk.is_null() || old == new {
        return;
    }
    // Orphans (see the module docs): before any clock read or lookup.
    match (old, new) {
        (tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2) if sk.is_orphan(o) => {
            if let Some(rec) = traced_record(sk) {
                rec.state = tcp_state::FIN_WAIT2;
            }
            return;
        }
        (
            tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::LAST_ACK | tcp_state::CLOSING,
            tcp_state::CLOSE,
        ) if sk.is_orphan(o) => return,
        _ => {}
    }
    let now = now_ns();
    match (old, new) {
        // listen() runs in the listening process: remember who owns the port.
        (_, tcp_state::LISTEN) if sk.is_tcp(o) => listening(o, sk),
        (tcp_state::LISTEN, tcp_state::CLOSE) if sk.is_tcp(o) => not_listening(o, sk),
        (tcp_state::CLOSE, tcp_state::SYN_SENT) if !connect_hooked() && sk.is_tcp(o) => {
            start(o, sk, role::CLIENT, now)
        }
        (tcp_state::LISTEN, tcp_state::SYN_RECV) if sk.is_tcp(o) => start(o, sk, role::SERVER, now),
        (_, tcp_state::LISTEN)
        | (tcp_state::LISTEN, _)
        | (tcp_state::CLOSE, tcp_state::SYN_SENT) => {}
        (_, tcp_state::ESTABLISHED) => established(o, sk, old, now),
        (_, tcp_state::CLOSE) => closed(o, sk, old, now),
        _ => teardown_step(o, sk, old, new, now),
    }
}

/// The role a socket must have to make this transition, if it says anything.
#[inline(always)]
fn role_from(old: u8) -> u8 {
    match old {
        tcp_state::SYN_SENT => role::CLIENT,
        tcp_state::SYN_RECV => role::SERVER,
        _ => role::UNKNOWN,
    }
}

#[inline(always)]
fn established<R: Read>(o: &Offsets, sk: Sock<R>, old: u8, now: u64) {
    let adoption = Adoption::other_context(role_from(old));
    // A socket adopted here is adopted as established: that is what it is about to be.
    let Some(rec) = record_or_adopt(o, sk, Some(tcp_state::ESTABLISHED), adoption) else {
        return;
    };
    rec.state = tcp_state::ESTABLISHED;
    if rec.established_ns != 0 || rec.flags & FLAG_PARTIAL != 0 {
        // Already announced (a partial record is announced when adopted).
        return;
    }
    rec.established_ns = now;
    sk.read_endpoints(o, &mut rec.endpoints);
    if rec.role == role::SERVER && !judge_server(o, sk, rec) {
        return;
    }
    if defer_open(sk.key(), rec, now) {
        return;
    }
    if emit_open(kind::OPEN, sk.key(), rec, now) {
        rec.flags |= FLAG_ANNOUNCED;
    }
}

#[inline(always)]
fn closed<R: Read>(o: &Offsets, sk: Sock<R>, old: u8, now: u64) {
    let adoption = Adoption::other_context(role_from(old));
    let Some(rec) = record_or_adopt(o, sk, Some(old), adoption) else {
        return;
    };
    if old == tcp_state::SYN_RECV && forget_unborn_child(sk.key(), rec) {
        return;
    }
    learn_local_port(o, sk, rec);
    mark_closed(o, sk, rec, old, now);
    // The peer had closed and the application has not yet: it learns of the reset or error
    // now and closes (or leaks) later; `tcp_destroy_sock` tells which.
    let waiting_for_app = rec.flags & (FLAG_CLOSE_WAIT | FLAG_APP_CLOSED) == FLAG_CLOSE_WAIT;
    if (rec.flags & FLAG_RST_RECV != 0 || rec.sk_err != 0) && !waiting_for_app {
        finish(sk, rec, now);
    }
}

#[inline(always)]
fn teardown_step<R: Read>(o: &Offsets, sk: Sock<R>, old: u8, new: u8, now: u64) {
    let adoption = Adoption::other_context(role::UNKNOWN);
    let Some(rec) = record_or_adopt(o, sk, Some(old), adoption) else {
        return;
    };
    match new {
        tcp_state::FIN_WAIT1 => {
            first_teardown(rec, teardown::LOCAL_FIN, now);
            app_closed(rec, now);
        }
        tcp_state::CLOSE_WAIT => {
            first_teardown(rec, teardown::PEER_FIN, now);
            rec.flags |= FLAG_CLOSE_WAIT;
            rec.close_wait_ns = now;
        }
        tcp_state::LAST_ACK => app_closed(rec, now),
        _ => {}
    }
    rec.state = new;
    // Only the states a connection can hang in are worth an event; the daemon reads the others
    // from the record when it needs them. A connection whose open is deferred says it is in
    // `CLOSE_WAIT` with its open (or its close, usually microseconds away); `FIN_WAIT2` can
    // last for good on a socket the application still holds, so its open goes now.
    if matches!(new, tcp_state::CLOSE_WAIT | tcp_state::FIN_WAIT2) {
        if new == tcp_state::CLOSE_WAIT {
            store_load_fence(rec);
            if rec.open_deferred == deferral::PENDING {
                return;
            }
        }
        announce(sk.key(), rec);
        emit_state(sk.key(), rec, old, new, now);
    }
}
