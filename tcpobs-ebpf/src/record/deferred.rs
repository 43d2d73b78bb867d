//! Deferred opens (`tcpobs_common::PendingOpens`): the open of an established connection waits
//! on its CPU's list, and is sent only if the connection outlives the list (or something else
//! about it is sent first). A connection that closes before that needs no open event: its close
//! carries `SockRecord::open_deferred`, and the daemon makes the open from it.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use tcpobs_common::{
    FLAG_ANNOUNCED, FLAG_CONNECT_SENT, OPEN_DEFER_NS, OpenEvent, PENDING_OPEN_SLOTS, PendingOpens,
    SockRecord, kind, tcp_state,
};

use super::{emit, emit_state, header};
use crate::{
    helpers::zero,
    maps::{READER_IDLE, SOCKETS, stopping},
};

/// 1 while the daemon allows deferring opens: it can flush a quiet CPU's list (with the
/// sampler), and will flush them all before it stops reading.
#[map]
static DEFER_OPENS: Array<u32> = Array::with_max_entries(1, 0);

/// Each CPU's deferred opens.
#[map]
static PENDING_OPENS: PerCpuArray<PendingOpens> = PerCpuArray::with_max_entries(1, 0);

/// Defers the open of `rec`, just established: notes it on this CPU's list (flushed first if
/// full or old) and marks the record. False if it cannot be deferred (the daemon does not allow
/// it; the daemon already knows the connection from its connect event; the reader is idle,
/// waiting for an event to wake it, so that the open would wait for the next sweep; or the list
/// is busy under this run): the caller sends the open.
#[inline(never)]
pub fn defer_open(sock: u64, rec: &mut SockRecord, now: u64) -> bool {
    if rec.flags & FLAG_CONNECT_SENT != 0
        || stopping()
        || !DEFER_OPENS.get(0).is_some_and(|allowed| *allowed != 0)
        || READER_IDLE.get(0).is_some_and(|idle| *idle != 0)
    {
        return false;
    }
    let Some(list) = own_list() else {
        return false;
    };
    let waiting = list.count as usize;
    if waiting >= PENDING_OPEN_SLOTS
        || (waiting > 0 && now.saturating_sub(list.oldest_ns) >= OPEN_DEFER_NS)
    {
        flush(list);
    }
    let index = list.count as usize;
    let deferred = match list.entries.get_mut(index) {
        Some(entry) => {
            entry.sock = sock;
            entry.start_ns = rec.start_ns;
            true
        }
        None => false,
    };
    if deferred {
        if index == 0 {
            list.oldest_ns = now;
        }
        list.count = index as u32 + 1;
        rec.open_deferred = 1;
    }
    release(list);
    deferred
}

/// Flushes this CPU's list (the sampler's run, on the CPU the daemon chose).
#[inline(never)]
pub fn flush_here() {
    if let Some(list) = own_list() {
        flush(list);
        release(list);
    }
}

/// Sends the open of `rec` if it is still deferred: before any other event about the
/// connection.
#[inline(always)]
pub fn announce(sock: u64, rec: &mut SockRecord) {
    if rec.open_deferred != 0 {
        send_open(sock, rec);
    }
}

/// This CPU's list, taken (`busy`); `None` if a run this one interrupted holds it.
#[inline(always)]
fn own_list() -> Option<&'static mut PendingOpens> {
    // SAFETY: this CPU's slot of a one-entry per-CPU array, valid while the program runs; only
    // programs on this CPU touch it, and `busy`, read and written volatile (the program order
    // is all that matters on one CPU), keeps a nested run off it.
    unsafe {
        let list = &mut *PENDING_OPENS.get_ptr_mut(0)?;
        if core::ptr::read_volatile(&list.busy) != 0 {
            return None;
        }
        core::ptr::write_volatile(&mut list.busy, 1);
        Some(list)
    }
}

#[inline(always)]
fn release(list: &mut PendingOpens) {
    // SAFETY: a field of the list taken by `own_list`.
    unsafe { core::ptr::write_volatile(&mut list.busy, 0) };
}

/// Sends the open of every listed connection still deferred (its record still in the table,
/// same generation) and empties the list.
#[inline(never)]
fn flush(list: &mut PendingOpens) {
    let waiting = list.count as usize;
    for index in 0..PENDING_OPEN_SLOTS {
        if index >= waiting {
            break;
        }
        let entry = list.entries[index];
        // SAFETY: as in `record_or_adopt`.
        if let Some(rec) = SOCKETS
            .get_ptr_mut(entry.sock)
            .map(|rec| unsafe { &mut *rec })
            && rec.start_ns == entry.start_ns
        {
            announce(entry.sock, rec);
        }
    }
    list.count = 0;
}

/// The deferred open of `rec`, with when it was established, then its `CLOSE_WAIT` state
/// event if it is in that state (skipped while the open was deferred).
#[inline(never)]
fn send_open(sock: u64, rec: &mut SockRecord) {
    let rec_ptr: *mut SockRecord = rec;
    // SAFETY: the pointer is a reserved ring buffer slot of an `OpenEvent`, every field written
    // before submit; `rec_ptr` is the record, a map value valid while the program runs.
    let sent = emit(|event: *mut OpenEvent| unsafe {
        let rec = &mut *rec_ptr;
        (*event).hdr = header(kind::OPEN, rec.established_ns, sock, rec);
        (*event).endpoints = rec.endpoints;
        (*event).task = rec.task;
        (*event).role = rec.role;
        (*event).flags = rec.flags;
        (*event).state = tcp_state::ESTABLISHED;
        (*event).deferred = 1;
        zero(&mut (*event)._pad);
        // Cleared while the slot is reserved and not yet submitted: a close on another CPU
        // that no longer sees the flag reserves its slot after this one, so the daemon reads
        // this open first. One that saw it set stands for the open too; the daemon keeps the
        // first of the two it reads.
        core::ptr::write_volatile(&mut rec.open_deferred, 0);
    });
    rec.open_deferred = 0;
    if sent {
        rec.flags |= FLAG_ANNOUNCED;
        if rec.state == tcp_state::CLOSE_WAIT {
            emit_state(
                sock,
                rec,
                tcp_state::ESTABLISHED,
                tcp_state::CLOSE_WAIT,
                rec.close_wait_ns,
            );
        }
    }
}
