//! Errors family: the error that ends a connection, kept when the kernel reports it.
//!
//! The state family reads `sk_err` when the socket reaches `CLOSE`. On many kernels the error
//! is reported first (`sk_err` set, then the waiting application woken) and the socket moved
//! to `CLOSE` after: a connect timeout (`tcp_write_err()`), an ICMP error during the handshake
//! (`tcp_v4_err()`) and a reset before 6.10. An application on another CPU can take the error
//! in between (`getsockopt(SO_ERROR)` after `poll()`, as a non-blocking connect does), which
//! clears `sk_err`, and the state family would see none. These hooks keep it in the record's
//! `sk_err` when it is reported; the state family replaces it only with a non-empty `sk_err`.
//!
//! Hooks, by strategy:
//! - fentry / kprobe: `void sock_def_error_report(struct sock *sk)` (every kernel), the
//!   report itself for TCP sockets, which runs before the application is woken.
//! - tracepoint: `sock:inet_sk_error_report` (Linux 5.14), tp_btf `(struct sock *sk)` only: the
//!   classic record has the addresses but not the socket. It fires in `sk_error_report()`
//!   right after the wake-up, so an application can still win the race here, if much more
//!   rarely.
//!
//! The family is optional: where none of these attaches (classic tracepoints only, on a
//! kernel without fentry and kprobes), the daemon says so and the state family's reading of
//! `sk_err` at `CLOSE` is all there is.
//!
//! A socket whose error is reported but which lives on (an ICMP error on an established
//! connection with `IP_RECVERR`) keeps the error in its record until the state family drops
//! it: at a normal end (`CLOSE` from `FIN_WAIT2`, `LAST_ACK` or `CLOSING`).

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};

use crate::{
    maps::offsets,
    record::traced_record,
    socket::{Direct, Probe, Read, Sock},
};

#[fentry(function = "sock_def_error_report")]
pub fn error_report_fentry(ctx: FEntryContext) -> u32 {
    on_error_report(Sock::<Direct>::new(ctx.arg(0)));
    0
}

#[kprobe]
pub fn error_report_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        on_error_report(Sock::<Probe>::new(sk));
    }
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn error_report_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    on_error_report(Sock::<Direct>::new(sk));
    0
}

#[inline(always)]
fn on_error_report<R: Read>(sk: Sock<R>) {
    if sk.is_null() {
        return;
    }
    let Some(rec) = traced_record(sk) else {
        return;
    };
    let err = sk.err(offsets());
    if err != 0 {
        rec.sk_err = err;
    }
}
