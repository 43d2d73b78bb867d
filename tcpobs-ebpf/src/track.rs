//! The per-socket record and everything that writes to the ring buffer.
//!
//! Events are submitted with `BPF_RB_NO_WAKEUP` unless `OFFSETS.wakeup_bytes` are already
//! waiting: the daemon drains on a short timer, so a busy host does not pay one reader wake-up
//! per event. Every failed reservation is counted in `STATS`.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
};
use tcpobs_common::{
    BurstEvent, CloseEvent, EventHeader, FLAG_PARTIAL, FilterConfig, Offsets, OpenEvent,
    SockRecord, StateEvent, Task, kind, role, stat, tcp_state,
};

use crate::{
    maps::{EVENTS, FILTER, PORT_FILTER, SOCKETS, count},
    sock::{Sock, is_connected_state},
};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn submit_flags(o: &Offsets) -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= o.wakeup_bytes {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[inline(always)]
fn header(kind: u32, ts_ns: u64, sock: u64, rec: &SockRecord) -> EventHeader {
    EventHeader {
        kind,
        _pad: 0,
        ts_ns,
        sock,
        start_ns: rec.start_ns,
    }
}

/// The current process, in process context (connect, send/recv, close).
#[inline(always)]
pub fn current_task() -> Task {
    let pid_tgid = bpf_get_current_pid_tgid();
    Task {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
}

/// Attributes the socket to the current process if nobody has claimed it yet.
#[inline(always)]
pub fn claim(rec: &mut SockRecord) {
    if rec.task.pid == 0 {
        rec.task = current_task();
    }
}

/// Whether the kernel-side filter lets a socket with these ports through.
#[inline(always)]
pub fn port_allowed(local: u16, remote: u16) -> bool {
    match FILTER.get(0) {
        Some(FilterConfig {
            port_allowlist: 1, ..
        }) => PORT_FILTER.get_ptr(local).is_some() || PORT_FILTER.get_ptr(remote).is_some(),
        _ => true,
    }
}

/// Reserves a `T` in the ring buffer, lets `fill` write every field, and submits it; counts
/// the event as lost if the ring buffer is full.
#[inline(always)]
fn emit<T: 'static>(o: &Offsets, fill: impl FnOnce(*mut T)) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(stat::RINGBUF_FULL);
        return;
    };
    fill(entry.as_mut_ptr());
    entry.submit(submit_flags(o));
}

pub fn emit_open(o: &Offsets, sock: u64, rec: &SockRecord, ts_ns: u64) {
    // SAFETY (all `emit` closures): the pointer is a reserved ring buffer slot of the event's
    // size, and every field is written before submit.
    emit(o, |event: *mut OpenEvent| unsafe {
        (*event).hdr = header(kind::OPEN, ts_ns, sock, rec);
        (*event).endpoints = rec.endpoints;
        (*event).task = rec.task;
        (*event).role = rec.role;
        (*event).flags = rec.flags;
        (*event)._pad = [0; 6];
    });
}

/// Sends the burst in progress (the direction just flipped).
pub fn emit_burst(o: &Offsets, sock: u64, rec: &SockRecord, ts_ns: u64) {
    emit(o, |event: *mut BurstEvent| unsafe {
        (*event).hdr = header(kind::BURST, ts_ns, sock, rec);
        (*event).burst = rec.burst;
        (*event).task = rec.task;
    });
}

pub fn emit_state(o: &Offsets, sock: u64, rec: &SockRecord, old: u8, new: u8, ts_ns: u64) {
    emit(o, |event: *mut StateEvent| unsafe {
        (*event).hdr = header(kind::STATE, ts_ns, sock, rec);
        (*event).old_state = old;
        (*event).new_state = new;
        (*event)._pad = [0; 6];
    });
}

/// Sends the final record and forgets the socket.
pub fn finish(o: &Offsets, sock: u64, rec: &SockRecord, ts_ns: u64) {
    emit(o, |event: *mut CloseEvent| unsafe {
        (*event).hdr = header(kind::CLOSE, ts_ns, sock, rec);
        (*event).record = *rec;
    });
    let _: Result<(), i32> = SOCKETS.remove(sock);
}

/// The record of a socket, adopting it if tcpobs has none: a connection already open when
/// tcpobs started, or whose record the LRU table evicted. `state` is the socket's state if the
/// hook knows it (state hooks fire before the kernel stores the new state), `None` to read it
/// from the socket; `role` is what the hook can tell (usually unknown).
#[inline(always)]
pub fn record_or_adopt(
    o: &Offsets,
    sk: Sock,
    state: Option<u8>,
    role: u8,
    now: u64,
) -> Option<&'static mut SockRecord> {
    let key = sk.key();
    if let Some(rec) = SOCKETS.get_ptr_mut(key) {
        // SAFETY: map values live until removed; concurrent updates from another CPU can only
        // make counters approximate, never invalid (every field is an integer).
        return Some(unsafe { &mut *rec });
    }
    if sk.is_null() {
        return None;
    }
    // The state lives in `sock_common`, valid even for request and time-wait sockets, which
    // `adopt` rules out before anything beyond `sock_common` is read.
    adopt(o, sk, state.unwrap_or_else(|| sk.state(o)), role, now)
}

#[inline(never)]
fn adopt(o: &Offsets, sk: Sock, state: u8, role: u8, now: u64) -> Option<&'static mut SockRecord> {
    if !is_connected_state(state) || !sk.is_tcp(o) {
        return None;
    }
    let endpoints = sk.endpoints(o);
    if !port_allowed(endpoints.lport, endpoints.rport) {
        return None;
    }
    let rec = SockRecord {
        start_ns: now,
        role,
        flags: FLAG_PARTIAL,
        state,
        endpoints,
        ..SockRecord::default()
    };
    if SOCKETS.insert(sk.key(), rec, 0).is_err() {
        count(stat::TABLE_INSERT_FAILED);
        return None;
    }
    count(stat::ADOPTED);
    emit_open(o, sk.key(), &rec, now);
    // SAFETY: as in `record_or_adopt`.
    SOCKETS
        .get_ptr_mut(sk.key())
        .map(|rec| unsafe { &mut *rec })
}

/// Starts a fresh record for a connection being opened (`CLOSE -> SYN_SENT` for a client,
/// `LISTEN -> SYN_RECV` for a server), subject to the port filter.
pub fn start(o: &Offsets, sk: Sock, role: u8, task: Task, now: u64) {
    let key = sk.key();
    if let Some(previous) = SOCKETS.get_ptr_mut(key) {
        // The same socket was disconnected (connect(AF_UNSPEC)) and is connecting again: the
        // previous connection is over.
        // SAFETY: as in `record_or_adopt`.
        finish(o, key, unsafe { &*previous }, now);
    }
    let (local, remote) = sk.ports(o);
    if !port_allowed(local, remote) {
        return;
    }
    let state = if role == role::CLIENT {
        tcp_state::SYN_SENT
    } else {
        tcp_state::SYN_RECV
    };
    let rec = SockRecord {
        start_ns: now,
        role,
        state,
        task,
        ..SockRecord::default()
    };
    if SOCKETS.insert(key, rec, 0).is_err() {
        count(stat::TABLE_INSERT_FAILED);
    }
}
