//! Deferred opens (`tcpobs_common::PendingList`): the open of an established connection waits
//! on its CPU's list, and is sent only if the connection outlives the list (or something else
//! about it is sent first). A connection that closes before that needs no open event: its close
//! carries `SockRecord::open_deferred`, and the daemon makes the open from it.

use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use tcpobs_common::{
    EventHeader, FLAG_CONNECT_SENT, OPEN_DEFER_NS, OPENS_PER_FLUSH, OpenEvent, PENDING_OPEN_SLOTS,
    PendingList, PendingOpen, PendingOpens, SockRecord, deferral, kind, stat, tcp_state,
};

use super::{emit_state, store_load_fence, submit_flags, write_open};
use crate::maps::{EVENTS, READER_IDLE, SOCKETS, count, stopping};

/// 1 while the daemon allows deferring opens: it can flush a quiet CPU's list (`flush_opens`),
/// and will flush them all before it stops reading.
#[map]
static DEFER_OPENS: Array<u32> = Array::with_max_entries(1, 0);

/// The counters of each CPU's deferred opens; the daemon reads them.
#[map]
static PENDING_LISTS: PerCpuArray<PendingList> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's deferred opens.
#[map]
static PENDING_OPENS: PerCpuArray<PendingOpens> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's list, taken: its counters and its entries.
struct List {
    counts: &'static mut PendingList,
    opens: &'static mut PendingOpens,
}

impl List {
    #[inline(always)]
    fn waiting(&self) -> u32 {
        self.counts.waiting()
    }

    #[inline(always)]
    fn oldest(&self) -> Option<&PendingOpen> {
        self.opens.oldest(self.counts)
    }
}

/// Defers the open of `rec`, just established: notes it on this CPU's list and marks the
/// record, after taking out the list's oldest entry if the list is full or the entry has waited
/// [`OPEN_DEFER_NS`] (twice at most). False if it cannot be deferred (the daemon does not allow
/// it; the daemon already knows the connection from its connect event; the reader is idle,
/// waiting for an event to wake it; or the list is busy under this run): the caller sends the
/// open.
#[inline(never)]
pub fn defer_open(sock: u64, rec: &mut SockRecord, now: u64) -> bool {
    if rec.flags & FLAG_CONNECT_SENT != 0
        || stopping()
        || !DEFER_OPENS.get(0).is_some_and(|allowed| *allowed != 0)
        || READER_IDLE.get(0).is_some_and(|idle| *idle != 0)
    {
        return false;
    }
    let Some(mut list) = own_list() else {
        return false;
    };
    for _ in 0..2 {
        let due = list.oldest().is_some_and(|oldest| {
            list.waiting() as usize >= PENDING_OPEN_SLOTS
                || now.saturating_sub(oldest.deferred_ns) >= OPEN_DEFER_NS
        });
        if !due || !take_oldest(&mut list) {
            break;
        }
    }
    let deferred = (list.waiting() as usize) < PENDING_OPEN_SLOTS;
    if deferred {
        *list.opens.next_mut(list.counts) = PendingOpen {
            sock,
            start_ns: rec.start_ns,
            deferred_ns: now,
        };
        list.counts.tail = list.counts.tail.wrapping_add(1);
        rec.open_deferred = deferral::PENDING;
    }
    release(list);
    deferred
}

/// Takes out up to [`OPENS_PER_FLUSH`] entries of this CPU's list, oldest first, whatever their
/// age (the `flush_opens` program's run). False if the list was busy under the run this one
/// interrupted, or the ring buffer had no room for an open: the daemon tries again.
#[inline(always)]
pub fn flush_some() -> bool {
    let Some(mut list) = own_list() else {
        return false;
    };
    let mut done = true;
    for _ in 0..OPENS_PER_FLUSH {
        if list.waiting() == 0 {
            break;
        }
        if !take_oldest(&mut list) {
            done = false;
            break;
        }
    }
    release(list);
    done
}

/// Sends the open of `rec`, if it is still deferred: before any other event about the
/// connection.
#[inline(always)]
pub fn announce(sock: u64, rec: &mut SockRecord) {
    if rec.open_deferred == deferral::PENDING {
        let _ = send_open(sock, rec.start_ns, rec);
    }
}

/// This CPU's list, taken (`busy`); `None` if a run this one interrupted holds it.
#[inline(always)]
fn own_list() -> Option<List> {
    // SAFETY: this CPU's slot of a one-entry per-CPU array, valid while the program runs; only
    // programs on this CPU touch it, and `busy`, read and written volatile (the program order
    // is all that matters on one CPU), keeps a nested run off it. Every program that takes it
    // runs with preemption off (tracepoints, kprobes, the flush's test run), so none is
    // descheduled between the read and the write for another to run in between.
    unsafe {
        let counts = &mut *PENDING_LISTS.get_ptr_mut(0)?;
        let opens = &mut *PENDING_OPENS.get_ptr_mut(0)?;
        if core::ptr::read_volatile(&counts.busy) != 0 {
            return None;
        }
        core::ptr::write_volatile(&mut counts.busy, 1);
        // Nor may the compiler move the list's reads and writes out from under `busy`.
        compiler_fence(Ordering::SeqCst);
        Some(List { counts, opens })
    }
}

#[inline(always)]
fn release(list: List) {
    compiler_fence(Ordering::SeqCst);
    // SAFETY: a field of the list taken by `own_list`.
    unsafe { core::ptr::write_volatile(&mut list.counts.busy, 0) };
}

/// Takes the oldest entry out of a taken list: sends the open of its connection if it is still
/// deferred (its record still in the table, same generation). False if the list is empty, or
/// the ring buffer had no room (the entry stays, the oldest, for the next try).
#[inline(always)]
fn take_oldest(list: &mut List) -> bool {
    let Some(&PendingOpen { sock, start_ns, .. }) = list.oldest() else {
        return false;
    };
    if !take_out(sock, start_ns) {
        return false;
    }
    list.counts.head = list.counts.head.wrapping_add(1);
    true
}

/// Sends the open of an entry's connection if it is still deferred. False if the ring buffer
/// had no room.
#[inline(never)]
fn take_out(sock: u64, start_ns: u64) -> bool {
    // SAFETY: as in `record_or_adopt`.
    match SOCKETS.get_ptr_mut(sock).map(|rec| unsafe { &mut *rec }) {
        Some(rec) if rec.start_ns == start_ns && rec.open_deferred == deferral::PENDING => {
            send_open(sock, start_ns, rec)
        }
        _ => true,
    }
}

/// The deferred open of generation `start_ns` of `rec`, with when it was established, then its
/// `CLOSE_WAIT` state event if it is in that state (held back while the open was deferred).
/// False if the ring buffer had no room (counted): the open stays deferred, its entry on the
/// list if it has one, and the close stands for it if it comes first.
#[inline(never)]
fn send_open(sock: u64, start_ns: u64, rec: &mut SockRecord) -> bool {
    if stopping() {
        return true;
    }
    let Some(mut entry) = EVENTS.reserve::<OpenEvent>(0) else {
        count(stat::RINGBUF_FULL);
        return false;
    };
    let hdr = EventHeader {
        kind: kind::OPEN,
        _pad: 0,
        ts_ns: rec.established_ns,
        sock,
        start_ns,
    };
    // SAFETY: a reserved ring buffer slot of an `OpenEvent`, submitted or discarded below.
    unsafe { write_open(entry.as_mut_ptr(), hdr, rec, tcp_state::ESTABLISHED, 1) };
    // A flush reads records of other CPUs' sockets: the connection may have closed and its
    // record's memory gone to another meanwhile (the table reuses freed elements), or another
    // run sent the open first.
    if rec.start_ns != start_ns || rec.open_deferred != deferral::PENDING {
        entry.discard(0);
        return true;
    }
    // Marked sent while the slot is reserved and not yet submitted: a close (`finish`) reads
    // the mark before it reserves its own slot, so one that reads it sent is read after this
    // open; one that read it pending stands for the open too, and the daemon keeps the first
    // of the two it reads. Not `FLAG_ANNOUNCED`: `flags` is written by the socket's own CPU.
    // SAFETY: a field of the record, a map value valid while the program runs.
    unsafe { core::ptr::write_volatile(&mut rec.open_deferred, deferral::SENT) };
    entry.submit(submit_flags());
    store_load_fence(rec);
    if rec.state == tcp_state::CLOSE_WAIT {
        emit_state(
            sock,
            rec,
            tcp_state::ESTABLISHED,
            tcp_state::CLOSE_WAIT,
            rec.close_wait_ns,
        );
    }
    true
}
