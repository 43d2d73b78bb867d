//! TLS family: OpenSSL handshakes, and the TCP socket each one runs on.
//!
//! Hooks (libssl.so.3, on the host and in containers; the daemon finds the files):
//! - uprobes on `int SSL_do_handshake(SSL *s)`, `int SSL_connect(SSL *s)` and
//!   `int SSL_accept(SSL *s)`, and one uretprobe program on all three. `SSL_connect` and
//!   `SSL_accept` call `SSL_do_handshake`: calls nest, and only the outermost one counts.
//!   A call returns 1 when the handshake is complete, anything else when it failed or (on a
//!   non-blocking socket) must be called again; every return is sent to the daemon, which
//!   tells the two apart by what follows.
//! - a uprobe on `void SSL_free(SSL *s)`: a handshake still unfinished when its `SSL` is freed
//!   failed (or was abandoned).
//!
//! Which socket: while a thread is inside a handshake call it is marked in `TLS_THREADS`,
//! and the data hooks (`hooks::data::on_data`) record the first traced TCP socket that thread
//! sends to or receives from. No payload is read. To keep the data hooks cheap when no
//! handshake is in progress, they first read `TLS_ACTIVE` (one load from a global) and only
//! look the thread up when it is non-zero.
//!
//! `TLS_ACTIVE` counts the `TLS_THREADS` entries the kernel added and has not removed. A thread
//! that dies inside a handshake call never returns: the daemon finds such entries, removes
//! them, and counts them in `TLS_ABANDONED`; the data hooks look threads up only while
//! `TLS_ACTIVE` exceeds it.
//!
//! Handshakes that take several calls (non-blocking sockets) are kept in `TLS_PENDING`, keyed
//! by process and `SSL *`, so that every event carries the handshake's first start time and
//! its socket.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    sync::atomic::AtomicU64,
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use tcpobs_common::{
    EventHeader, TlsCall, TlsEvent, TlsPending, kind,
    libcalls::{tls_func, tls_step},
    stat,
};

use crate::{
    filter::current_process_allowed,
    helpers::{current_task, now_ns},
    maps::{SOCKETS, count},
    record::{announce, emit},
};

/// The handshake call each thread is in. Not LRU: every entry is counted in `TLS_ACTIVE`.
#[map]
static TLS_THREADS: HashMap<u64, TlsCall> = HashMap::with_max_entries(4096, 0);

/// Handshakes not completed by their last call, by `[SSL *, tgid]`. LRU: an `SSL` that is
/// never freed (the process exits) must not fill it.
#[map]
static TLS_PENDING: LruHashMap<[u64; 2], TlsPending> = LruHashMap::with_max_entries(16_384, 0);

/// `TLS_THREADS` entries the daemon removed (their thread died mid-call); daemon-written.
#[map]
static TLS_ABANDONED: Array<u64> = Array::with_max_entries(1, 0);

/// `TLS_THREADS` entries added by the kernel and not removed by it.
static TLS_ACTIVE: AtomicU64 = AtomicU64::new(0);

/// Adds `delta` (`u64::MAX` to subtract one) to `TLS_ACTIVE` with one atomic add (the BPF
/// target's `core` has no `fetch_add`; the intrinsic becomes `lock xadd`).
#[inline(always)]
fn add_active(delta: u64) {
    // SAFETY: a valid, aligned pointer to a global that lives as long as the program.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(TLS_ACTIVE.as_ptr(), delta);
    }
}

/// `int SSL_do_handshake(SSL *s)`: the explicit handshake, either role (Python's `ssl`, nginx).
#[uprobe]
pub fn ssl_do_handshake_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx, tls_func::DO_HANDSHAKE);
    0
}

/// `int SSL_connect(SSL *s)`: a client's handshake (curl).
#[uprobe]
pub fn ssl_connect_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx, tls_func::CONNECT);
    0
}

/// `int SSL_accept(SSL *s)`: a server's handshake (`openssl s_server`).
#[uprobe]
pub fn ssl_accept_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx, tls_func::ACCEPT);
    0
}

/// The return of any of the three: 1 when the handshake completed.
#[uretprobe]
pub fn ssl_handshake_return(ctx: RetProbeContext) -> u32 {
    on_return(ctx.ret::<i32>());
    0
}

/// `void SSL_free(SSL *s)`: the end of an `SSL`; a handshake still pending failed.
#[uprobe]
pub fn ssl_free_entry(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        on_free(ssl);
    }
    0
}

/// Called by the data hooks for every traced socket's send or receive: if the thread is in a
/// handshake call and has no socket yet, this is its socket.
#[inline(always)]
pub fn note_socket(sock: u64, sock_start_ns: u64) {
    // SAFETY: an aligned 8-byte load (atomic on BPF) from a global that lives as long as the
    // program; a plain volatile read, because this target cannot select an atomic load.
    let active = unsafe { core::ptr::read_volatile(TLS_ACTIVE.as_ptr()) };
    if active != 0 {
        note_socket_slow(active, sock, sock_start_ns);
    }
}

#[inline(never)]
fn note_socket_slow(active: u64, sock: u64, sock_start_ns: u64) {
    let abandoned = TLS_ABANDONED.get(0).copied().unwrap_or(0);
    if active == abandoned {
        return;
    }
    let Some(call) = TLS_THREADS.get_ptr_mut(bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: a map value, valid until removed; only this thread's programs touch its entry.
    let call = unsafe { &mut *call };
    if call.sock == 0 {
        call.sock = sock;
        call.sock_start_ns = sock_start_ns;
    }
}

#[inline(always)]
fn on_entry(ctx: &ProbeContext, func: u8) {
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return;
    };
    let thread = bpf_get_current_pid_tgid();
    let call = TlsCall {
        ssl,
        entry_ns: now_ns(),
        sock: 0,
        sock_start_ns: 0,
        depth: 1,
        func: u32::from(func),
    };
    if let Some(current) = TLS_THREADS.get_ptr_mut(thread) {
        // SAFETY: as in `note_socket_slow`.
        let current = unsafe { &mut *current };
        if current.ssl == ssl {
            current.depth += 1;
        } else {
            // A call whose return was never seen (the thread jumped out of it): start over.
            *current = call;
        }
        return;
    }
    if TLS_THREADS
        .insert(thread, call, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count(stat::TLS_UNTRACKED);
        return;
    }
    add_active(1);
}

#[inline(always)]
fn on_return(ret: i32) {
    let thread = bpf_get_current_pid_tgid();
    let Some(call) = TLS_THREADS.get_ptr_mut(thread) else {
        return;
    };
    // SAFETY: as in `note_socket_slow`.
    let call = unsafe { &mut *call };
    if call.depth > 1 {
        call.depth -= 1;
        return;
    }
    let call = *call;
    // Whoever removes the entry (this return, or the daemon for a dead thread) accounts for it.
    if TLS_THREADS.remove(thread).is_ok() {
        add_active(u64::MAX);
    }
    let key = [call.ssl, thread >> 32];
    let mut handshake = TlsPending {
        first_ns: call.entry_ns,
        sock: call.sock,
        sock_start_ns: call.sock_start_ns,
        calls: 1,
        func: call.func,
    };
    if let Some(pending) = TLS_PENDING.get_ptr_mut(key) {
        // SAFETY: as in `note_socket_slow`.
        let pending = unsafe { &mut *pending };
        handshake.first_ns = pending.first_ns;
        handshake.calls = pending.calls.saturating_add(1);
        handshake.func = pending.func;
        if handshake.sock == 0 {
            handshake.sock = pending.sock;
            handshake.sock_start_ns = pending.sock_start_ns;
        }
        if ret == 1 {
            let _ = TLS_PENDING.remove(key);
        } else {
            *pending = handshake;
        }
    } else if ret != 1 {
        let _ = TLS_PENDING.insert(key, handshake, 0);
    }
    emit_tls(call.ssl, &handshake, ret, tls_step::RETURN);
}

#[inline(always)]
fn on_free(ssl: u64) {
    let key = [ssl, bpf_get_current_pid_tgid() >> 32];
    // SAFETY: plain data copied out of the map value.
    let Some(pending) = (unsafe { TLS_PENDING.get(key) }).copied() else {
        return;
    };
    let _ = TLS_PENDING.remove(key);
    emit_tls(ssl, &pending, 0, tls_step::FREED);
}

/// Sends a handshake's outcome: always for one on a traced socket (the data hooks note only
/// those), which its connection's filters judged; otherwise if the calling process passes the
/// pid and cgroup filters.
#[inline(never)]
fn emit_tls(ssl: u64, handshake: &TlsPending, ret: i32, step: u8) {
    if handshake.sock == 0 && !current_process_allowed() {
        return;
    }
    // The daemon ties the handshake to its connection: a deferred open goes first.
    // SAFETY: as in `record_or_adopt`.
    if let Some(rec) = SOCKETS
        .get_ptr_mut(handshake.sock)
        .map(|rec| unsafe { &mut *rec })
        && rec.start_ns == handshake.sock_start_ns
    {
        announce(handshake.sock, rec);
    }
    let now = now_ns();
    // SAFETY: the pointer is a reserved ring buffer slot of a `TlsEvent`; every field is
    // written before submit.
    let _ = emit(|event: *mut TlsEvent| unsafe {
        (*event).hdr = EventHeader {
            kind: kind::TLS,
            _pad: 0,
            ts_ns: now,
            sock: handshake.sock,
            start_ns: handshake.sock_start_ns,
        };
        current_task(&mut (*event).task);
        (*event).ssl = ssl;
        (*event).handshake_ns = handshake.first_ns;
        (*event).ret = ret;
        (*event).func = handshake.func as u8;
        (*event).step = step;
        (*event).calls = handshake.calls.min(u32::from(u16::MAX)) as u16;
    });
}
