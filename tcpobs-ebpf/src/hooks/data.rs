//! Data family: how many bytes the application moved, and when.
//!
//! Hooks, by strategy:
//! - tracepoint: `sock:sock_send_length` and `sock:sock_recv_length` (Linux 6.3), fired by
//!   `sock_sendmsg()` / `sock_recvmsg()` for every socket type once the call returns.
//!   tp_btf prototype `(struct sock *sk, int ret, int flags)`; classic record
//!   `sk, family, protocol, ret, flags`. They catch `send`/`write`/`sendmsg`/`sendfile` and
//!   `recv`/`read`/`recvmsg`.
//! - fentry: fexit on `tcp_sendmsg(sk, msg, size)` and `tcp_recvmsg(sk, msg, len, [nonblock,]
//!   flags, addr_len)`; the return value follows the parameters, so `tcp_recvmsg` has two
//!   programs, for the parameter lists before and after Linux 5.19.
//! - kprobe: a kprobe on each saves the socket (and flags) by thread in `DATA_CALLS`, and a
//!   kretprobe reads the return value.
//!
//! The fentry and kprobe hooks see the calls that reach TCP through `sendmsg`/`recvmsg`;
//! kernels before 6.5 send `sendfile()` data through `tcp_sendpage()` instead, which they do
//! not see. Calls are coalesced in the socket record into bursts, and bursts into exchanges:
//! an exchange ends when the next request begins. Its bytes, timings and class are folded
//! here, into this CPU's `FOLDS` (bucket by bucket, with the daemon's limits) and the record's
//! summary (with `pod`/`namespace` metric labels, into `LABELED_FOLDS`, by the label slot the
//! daemon gave the socket's cgroup); it goes to the daemon as an event only while the daemon
//! asks for every exchange (`EXCHANGE_EVENTS`), or if it could not be folded (other labels, a
//! cgroup without a slot). So the ring buffer carries nothing per exchange by default, whatever
//! the number of syscalls or bytes; a connection's last exchange goes with its close. The rules
//! are `SockRecord::add_data` and `SockRecord::fold_exchange`, in tcpobs-common, shared with
//! the daemon's tracker tests. Failed calls (`ret <= 0`) and `MSG_PEEK` reads move no data and
//! are ignored. While a thread is in a TLS handshake call, the socket it moves data on is the
//! handshake's ([`super::libcalls::tls`]).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map, tracepoint},
    maps::LruHashMap,
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext,
    },
};
use tcpobs_common::{
    DataCall, DataSink, Offsets, SockRecord, direction,
    folds::{LAYOUT, class, role_index},
};

use super::libcalls::tls;
use crate::{
    helpers::now_ns,
    maps::{exchange_events, fold_config, folds, labeled_folds, offsets},
    record::{Adoption, announce, claim, emit_exchange, record_or_adopt},
    socket::{Direct, Probe, Read, Sock, inet_tcp},
};

const MSG_PEEK: i32 = 2;

/// `tcp_sendmsg`/`tcp_recvmsg` calls in progress, by thread (`pid_tgid`), for the kretprobes.
/// LRU, so that calls whose return was never seen cannot fill it.
#[map]
static DATA_CALLS: LruHashMap<u64, DataCall> = LruHashMap::with_max_entries(16_384, 0);

#[btf_tracepoint(function = "sock_send_length")]
pub fn send_len_btf(ctx: BtfTracePointContext) -> i32 {
    match try_len_btf(&ctx, direction::OUT) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn recv_len_btf(ctx: BtfTracePointContext) -> i32 {
    match try_len_btf(&ctx, direction::IN) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_len_btf(ctx: &BtfTracePointContext, dir: u8) -> Result<i32, i32> {
    let o = offsets();
    let sk = Sock::<Direct>::new(ctx.arg(0));
    let ret: i32 = ctx.arg(1);
    // These tracepoints fire for every socket (Unix, UDP, netlink): the others leave here, for
    // the price of three loads, not a table lookup's.
    if ret <= 0 || sk.is_null() || !sk.is_tcp(o) {
        return Ok(0);
    }
    let flags: i32 = ctx.arg(2);
    on_data(o, sk, ret, flags, dir);
    Ok(0)
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn send_len_tp(ctx: TracePointContext) -> u32 {
    let o = offsets();
    match try_len_tp(
        &ctx,
        o,
        [o.tp_send_sk, o.tp_send_ret, o.tp_send_flags],
        direction::OUT,
    ) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn recv_len_tp(ctx: TracePointContext) -> u32 {
    let o = offsets();
    match try_len_tp(
        &ctx,
        o,
        [o.tp_recv_sk, o.tp_recv_ret, o.tp_recv_flags],
        direction::IN,
    ) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

/// `fields` are the record offsets of `sk`, `ret` and `flags`.
#[inline(always)]
fn try_len_tp(ctx: &TracePointContext, o: &Offsets, fields: [u16; 3], dir: u8) -> Result<u32, u32> {
    let [sk, ret, flags] = fields.map(usize::from);
    if o.tp_length_family != 0 {
        // As in `try_len_btf`, but from the record: sockets of other families and protocols
        // leave here (a raw socket of `IPPROTO_TCP` goes on, to be refused by `adopt`).
        // SAFETY: the offsets come from the format files of both data tracepoints.
        let field = |offset: u16| unsafe { ctx.read_at::<u16>(usize::from(offset)) }.unwrap_or(0);
        if !inet_tcp(field(o.tp_length_family), || field(o.tp_length_protocol)) {
            return Ok(0);
        }
    }
    // SAFETY: the offsets come from this tracepoint's format file.
    let (sk, ret, flags) = unsafe {
        (
            ctx.read_at::<u64>(sk).map_err(|_| 1u32)?,
            ctx.read_at::<i32>(ret).map_err(|_| 1u32)?,
            ctx.read_at::<i32>(flags).map_err(|_| 1u32)?,
        )
    };
    on_data(o, Sock::<Probe>::new(sk as *const u8), ret, flags, dir);
    Ok(0)
}

#[fexit(function = "tcp_sendmsg")]
pub fn send_fexit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(3);
    on_data(
        offsets(),
        Sock::<Direct>::new(ctx.arg(0)),
        ret as i32,
        0,
        direction::OUT,
    );
    0
}

/// `tcp_recvmsg(sk, msg, len, flags, addr_len)`, Linux 5.19 to 6.x.
#[fexit(function = "tcp_recvmsg")]
pub fn recv_fexit(ctx: FExitContext) -> u32 {
    on_recv_exit(&ctx, ctx.arg(3), ctx.arg(5));
    0
}

/// `tcp_recvmsg(sk, msg, len, flags)`, Linux 7 (no `addr_len`).
#[fexit(function = "tcp_recvmsg")]
pub fn recv_fexit_no_addr_len(ctx: FExitContext) -> u32 {
    on_recv_exit(&ctx, ctx.arg(3), ctx.arg(4));
    0
}

/// `tcp_recvmsg(sk, msg, len, nonblock, flags, addr_len)`, before Linux 5.19.
#[fexit(function = "tcp_recvmsg")]
pub fn recv_fexit_nonblock(ctx: FExitContext) -> u32 {
    on_recv_exit(&ctx, ctx.arg(4), ctx.arg(6));
    0
}

/// The return of `tcp_recvmsg`, whichever its signature: `flags` and the return value come
/// from the parameter slots of that signature (constant indexes, as the verifier wants).
#[inline(always)]
fn on_recv_exit(ctx: &FExitContext, flags: i32, ret: i64) {
    on_data(
        offsets(),
        Sock::<Direct>::new(ctx.arg(0)),
        ret as i32,
        flags,
        direction::IN,
    );
}

#[kprobe]
pub fn send_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        save_call(sk, 0);
    }
    0
}

#[kprobe]
pub fn recv_kprobe(ctx: ProbeContext) -> u32 {
    // Both registers are read, then one value is picked: picking the register first lets
    // the compiler compute the context offset at run time, which the verifier refuses
    // ("dereference of modified ctx ptr").
    let (arg3, arg4) = (ctx.arg::<i32>(3), ctx.arg::<i32>(4));
    let flags = if offsets().recv_flags_arg == 3 {
        arg3
    } else {
        arg4
    };
    if let Some(sk) = ctx.arg::<u64>(0) {
        save_call(sk, flags.unwrap_or(0));
    }
    0
}

#[kretprobe]
pub fn send_kretprobe(ctx: RetProbeContext) -> u32 {
    on_return(&ctx, direction::OUT);
    0
}

#[kretprobe]
pub fn recv_kretprobe(ctx: RetProbeContext) -> u32 {
    on_return(&ctx, direction::IN);
    0
}

#[inline(always)]
fn save_call(sk: u64, flags: i32) {
    let call = DataCall { sk, flags, _pad: 0 };
    let _ = DATA_CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
}

#[inline(always)]
fn on_return(ctx: &RetProbeContext, dir: u8) {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map value.
    let Some(call) = (unsafe { DATA_CALLS.get(thread) }).copied() else {
        return;
    };
    let _ = DATA_CALLS.remove(thread);
    let ret: i64 = ctx.ret();
    on_data(
        offsets(),
        Sock::<Probe>::new(call.sk as *const u8),
        ret as i32,
        call.flags,
        dir,
    );
}

#[inline(always)]
fn on_data<R: Read>(o: &Offsets, sk: Sock<R>, ret: i32, flags: i32, dir: u8) {
    if ret <= 0 || (dir == direction::IN && flags & MSG_PEEK != 0) || sk.is_null() {
        return;
    }
    let Some(rec) = record_or_adopt(o, sk, None, Adoption::process_context()) else {
        return;
    };
    let now = now_ns();
    rec.add_data(now, ret as u64, dir, &mut Fold { sock: sk.key() });
    claim(rec);
    // One load from a global unless some thread is in a TLS handshake.
    tls::note_socket(sk.key(), rec.start_ns);
}

/// What the data hooks do with completed bursts and exchanges.
struct Fold {
    sock: u64,
}

impl DataSink for Fold {
    #[inline(always)]
    fn burst_done(&mut self, rec: &SockRecord) {
        if let Some(folds) = folds() {
            let index = usize::from(rec.burst.dir == direction::IN);
            folds.roles[role_index(rec.role)].bytes[index] += rec.burst.bytes;
        }
    }

    #[inline(always)]
    fn exchange_done(&mut self, rec: &mut SockRecord, next_ns: u64) {
        exchange_done(self.sock, rec, next_ns);
    }
}

/// Folds an exchange the next request ended (at `next_ns`), and sends it if the daemon asks,
/// or if it could not be folded (metric labels the kernel has no slot for).
/// A BPF function of its own: inlined, it would add its stack to both data programs'.
#[inline(never)]
fn exchange_done(sock: u64, rec: &mut SockRecord, next_ns: u64) {
    let config = fold_config();
    let mut slots = if config.fold != 0 {
        folds().map(|folds| &mut folds.roles[role_index(rec.role)])
    } else if config.labeled != 0 {
        labeled_folds(rec.task.cgroup, rec.role)
    } else {
        None
    };
    let seq = rec.fold_exchange(next_ns, |hist, value| {
        if let Some(slots) = slots.as_deref_mut() {
            let layout = LAYOUT[hist];
            slots.hists[hist].observe(&config.limits[layout], value);
        }
    });
    let folded = slots.is_some();
    if let Some(slots) = slots {
        slots.exchanges[if seq == 1 {
            class::START
        } else {
            class::CONTINUE
        }] += 1;
    }
    if !folded || exchange_events() {
        announce(sock, rec);
        emit_exchange(sock, rec, next_ns, seq, folded);
    }
}
