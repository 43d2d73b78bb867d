//! Probes family (optional): zero-window probes sent.
//!
//! Hook: `tcp_send_probe0(struct sock *sk)`, by fentry or kprobe (no tracepoint on any kernel),
//! called by the probe timer each time the sender, facing a zero window (or unable to send),
//! probes the peer. The kernel keeps no total: `icsk_probes_out` counts only the probes not
//! answered yet and is reset by every ACK. Where fentry and kprobes are refused (the
//! development host), the family does not attach and `zero_window_probes` is `null`; the time
//! limited by the peer's window (`rwnd_limited_s`) and the `stalled_receiver` check say the
//! same thing anyway.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use crate::{
    record::traced_record,
    socket::{Probe, Sock},
};

#[fentry(function = "tcp_send_probe0")]
pub fn probe0_fentry(ctx: FEntryContext) -> u32 {
    on_probe0(Sock::<Probe>::new(ctx.arg(0)));
    0
}

#[kprobe]
pub fn probe0_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        on_probe0(Sock::<Probe>::new(sk));
    }
    0
}

#[inline(always)]
fn on_probe0(sk: Sock<Probe>) {
    if sk.is_null() {
        return;
    }
    if let Some(rec) = traced_record(sk) {
        rec.diag.probes0 += 1;
    }
}
