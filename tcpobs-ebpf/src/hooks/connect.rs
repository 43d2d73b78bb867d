//! Connect family: a client starts connecting.
//!
//! Hook: `tcp_connect(struct sock *sk)`, by fentry or kprobe, called by `tcp_v4_connect()` /
//! `tcp_v6_connect()` in the connecting process once the socket is in `SYN_SENT` and its local
//! port is bound, just before the SYN goes out. With the tracepoint strategy there is no
//! program here: the state program starts clients at `CLOSE -> SYN_SENT` (the loader tells it
//! through `CONNECT_HOOKED` which of the two does it).

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use tcpobs_common::role;

use crate::{
    helpers::now_ns,
    maps::offsets,
    record::start,
    socket::{Direct, Probe, Read, Sock},
};

#[fentry(function = "tcp_connect")]
pub fn connect_fentry(ctx: FEntryContext) -> u32 {
    on_connect(Sock::<Direct>::new(ctx.arg(0)));
    0
}

#[kprobe]
pub fn connect_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        on_connect(Sock::<Probe>::new(sk));
    }
    0
}

#[inline(always)]
fn on_connect<R: Read>(sk: Sock<R>) {
    let o = offsets();
    if sk.is_null() || !sk.is_tcp(o) {
        return;
    }
    start(o, sk, role::CLIENT, now_ns());
}
