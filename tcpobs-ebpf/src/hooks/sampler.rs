//! The sampler: reads live sockets the daemon names by address, for the hang detector's stall
//! checks and the listener health gauges.
//!
//! A raw tracepoint program that is never attached: the daemon runs it with
//! `BPF_PROG_TEST_RUN` (raw tracepoints since Linux 5.10), passing up to twelve `u64`
//! arguments, which the program sees as its tracepoint arguments: what to read
//! (`tcpobs_common::diag::sample`) and up to eleven socket addresses. It writes one sample per
//! argument slot to `SOCK_SAMPLES` or `LISTEN_SAMPLES`. A connection is read only if it has a
//! traced record in `SOCKETS` (which also gives its generation), a listener only if it is in
//! `LISTEN_SOCKS` and still listening. A record can outlive its socket when the kernel skipped
//! the close programs' runs; the reading then says so (`SockSample::gone`). Every read is a
//! checked one (`bpf_probe_read_kernel`), so a freed socket's memory reads as what it now
//! holds: the closed, orphaned socket it was (TCP sockets are freed `SLAB_TYPESAFE_BY_RCU`, and
//! stay so until the slab reuses them), another socket, or anything else, which reads as gone
//! but for a one-in-many-thousands match of state, flags and ports.
//! Reading by address works in every network namespace, with no `setns()` (which needs
//! `CAP_SYS_ADMIN`), and costs one system call per eleven sockets.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use tcpobs_common::{ListenSample, SockSample, diag::sample, tcp_state};

use crate::{
    helpers::zero,
    maps::{LISTEN_SOCKS, offsets},
    record::traced_record,
    socket::{Probe, Sock, is_connected_state},
};

/// What the last run read of connections, by argument slot.
#[map]
static SOCK_SAMPLES: Array<SockSample> = Array::with_max_entries(sample::PER_RUN as u32, 0);

/// What the last run read of listening sockets, by argument slot.
#[map]
static LISTEN_SAMPLES: Array<ListenSample> = Array::with_max_entries(sample::PER_RUN as u32, 0);

const AF_INET6: u16 = 10;

#[raw_tracepoint]
pub fn sample_socks(ctx: RawTracePointContext) -> i32 {
    let kind: u64 = ctx.arg(0);
    // Constant indexes: the verifier refuses a context read at a computed offset.
    let socks: [u64; sample::PER_RUN] = [
        ctx.arg(1),
        ctx.arg(2),
        ctx.arg(3),
        ctx.arg(4),
        ctx.arg(5),
        ctx.arg(6),
        ctx.arg(7),
        ctx.arg(8),
        ctx.arg(9),
        ctx.arg(10),
        ctx.arg(11),
    ];
    for (slot, sk) in socks.into_iter().enumerate() {
        if kind == sample::LISTENERS {
            sample_listener(slot as u32, sk);
        } else {
            sample_sock(slot as u32, sk);
        }
    }
    0
}

#[inline(never)]
fn sample_sock(slot: u32, sk: u64) {
    let Some(out) = SOCK_SAMPLES.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a slot of an array map; the daemon reads it only after the run.
    let out = unsafe { &mut *out };
    out.sock = 0;
    // Always, even without a socket: the daemon measures the kernel's HZ with these.
    // SAFETY: neither helper has preconditions.
    (out.now_ns, out.jiffies) = unsafe { (bpf_ktime_get_ns(), bpf_jiffies64()) };
    let sock = Sock::<Probe>::new(sk as *const u8);
    let Some(rec) = traced_record(sock) else {
        return;
    };
    let (start_ns, ports) = (rec.start_ns, (rec.endpoints.lport, rec.endpoints.rport));
    let o = &offsets().diag;
    out.sock = sk;
    out.start_ns = start_ns;
    out.snd_wnd = sock.field(o.snd_wnd);
    out.packets_out = sock.field(o.packets_out);
    let snd_nxt: u32 = sock.field(o.snd_nxt);
    out.unsent = sock.field::<u32>(o.write_seq).wrapping_sub(snd_nxt);
    out.unacked = snd_nxt.wrapping_sub(sock.field(o.snd_una));
    out.rcv_tstamp = sock.field(o.rcv_tstamp);
    out.chrono_start = sock.field(o.chrono_start);
    let raw: u8 = sock.field(o.chrono_type);
    out.chrono_type = (raw >> (o.chrono_type_shift & 7)) & (o.chrono_type_mask as u8);
    out.pending = sock.field(o.icsk_pending);
    out.retransmits = sock.field(o.icsk_retransmits);
    out.backoff = sock.field(o.icsk_backoff);
    out.probes_out = sock.field(o.icsk_probes_out);
    out.state = sock.state(offsets());
    out.gone = u8::from(outlived(sock, out.state, ports));
}

/// Whether a record outlived its socket (see `SockSample::gone`). A socket that is not open is
/// still the record's while its application holds it: after a reset, a disconnect
/// (`connect(AF_UNSPEC)` clears the remote port), or a `CLOSE` whose run was skipped (the
/// destroy hook, when the application lets go, does what that run would have). Once orphaned
/// it is being destroyed or was (the destroy hook runs in the call that closes an orphan). An
/// open socket, or a closed one, with other ports than the record's is another socket. The
/// ports are compared once the record has them (from establishment on).
#[inline(always)]
fn outlived(sock: Sock<Probe>, state: u8, ports: (u16, u16)) -> bool {
    let o = offsets();
    let (local, remote) = ports;
    if !is_connected_state(state) {
        // The local port survives the close and the disconnect; a new socket's is 0.
        return sock.is_orphan(o) || (local != 0 && local != sock.local_port(o));
    }
    local != 0 && (local, remote) != (sock.local_port(o), sock.remote_port(o))
}

#[inline(never)]
fn sample_listener(slot: u32, sk: u64) {
    let Some(out) = LISTEN_SAMPLES.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: as in `sample_sock`.
    let out = unsafe { &mut *out };
    out.sock = 0;
    // SAFETY: plain data copied out of the map value.
    let Some((netns, port)) = (unsafe { LISTEN_SOCKS.get(sk) }).map(|l| (l.netns, l.port)) else {
        return;
    };
    let o = offsets();
    let sock = Sock::<Probe>::new(sk as *const u8);
    out.sock = sk;
    out.state = sock.state(o);
    out.netns = netns;
    out.port = port;
    if out.state != tcp_state::LISTEN {
        return;
    }
    let family: u16 = sock.field(o.sk_family);
    out.family = family;
    let (at, len) = if family == AF_INET6 {
        (o.sk_v6_rcv_saddr, 16)
    } else {
        (o.sk_rcv_saddr, 4)
    };
    zero(&mut out.addr);
    // SAFETY: the destination is a 16-byte array; the read fails rather than faults.
    let _ = unsafe {
        bpf_probe_read_kernel_buf((sk + u64::from(at)) as *const u8, &mut out.addr[..len])
    };
    out.drops = sock.field(o.diag.sk_drops);
    out.ack_backlog = sock.field(o.diag.sk_ack_backlog);
    out.max_ack_backlog = sock.field(o.diag.sk_max_ack_backlog);
    out.syn_queue = sock.field(o.diag.icsk_qlen);
}
