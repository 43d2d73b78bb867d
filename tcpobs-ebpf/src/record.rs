//! The per-socket record and everything that writes to the ring buffer.
//!
//! Events are submitted with `BPF_RB_NO_WAKEUP` unless `OFFSETS.wakeup_bytes` are already
//! waiting: the daemon drains on a short timer, so a busy host does not pay one reader wake-up
//! per event. When the ring has stayed empty for a while the daemon stops that timer and sets
//! `READER_IDLE`: the first event after it wakes the reader. Every failed reservation is
//! counted in `STATS`.

mod deferred;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use tcpobs_common::{
    BurstEvent, CloseEvent, EventHeader, FLAG_ANNOUNCED, FLAG_APP_CLOSED, FLAG_IGNORED,
    FLAG_PARTIAL, Offsets, OpenEvent, Owner, SHORT_RECORD_BYTES, ShortCloseEvent, SockRecord,
    StateEvent, deferral, kind, role, seed, spill_tag, stat, tcp_state, teardown,
};

pub use self::deferred::{announce, defer_open, flush_some};
use crate::{
    filter::{allowed, is_listening_port, listener},
    helpers::{current_owner, current_task, kread, now_ns, zero},
    maps::{
        EVENTS, SOCKETS, SPILLED, count, offsets, scratch_record, seed_scratch_record, stopping,
        take_reader_idle,
    },
    socket::{Read, Sock, is_connected_state},
};

/// What a hook can tell about a socket it has no record for: the role, and whether it runs
/// in the context of the process that owns the socket (packed in one byte: BPF functions take
/// at most five arguments).
#[derive(Clone, Copy)]
pub struct Adoption(u8);

impl Adoption {
    const PROCESS_CONTEXT: u8 = 1 << 7;

    /// A hook that runs in softirq or timer context.
    pub const fn other_context(role: u8) -> Self {
        Self(role)
    }

    /// A hook that runs in the owning process's system call (send, recv).
    pub const fn process_context() -> Self {
        Self(role::UNKNOWN | Self::PROCESS_CONTEXT)
    }

    fn role(self) -> u8 {
        self.0 & !Self::PROCESS_CONTEXT
    }

    /// The socket's owner, as far as this hook can know it.
    fn owner<R: Read>(self, o: &Offsets, sk: Sock<R>, local_port: u16) -> Option<Owner> {
        if self.0 & Self::PROCESS_CONTEXT != 0 {
            Some(current_owner())
        } else {
            listener(o, sk, local_port)
        }
    }
}

#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= offsets().wakeup_bytes || take_reader_idle() {
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

/// Attributes the socket to the current process if nobody has claimed it yet.
#[inline(always)]
pub fn claim(rec: &mut SockRecord) {
    if rec.task.pid == 0 {
        current_task(&mut rec.task);
    }
}

/// A full barrier between this CPU's stores before it and its loads after it, for the two
/// sides of `CLOSE_WAIT` on a deferred connection: the state program stores the state, then
/// loads the deferral mark; a late open on another CPU stores the mark, then loads the state.
/// Without it both loads can miss the other's store (store buffers), and neither sends the
/// `CLOSE_WAIT` event; with it one of them does (or both: the daemon takes the second as a
/// repeat). An atomic add of nothing to the record: x86's JIT makes it `lock add`, a full
/// barrier (and Linux 5.10 has that instruction, not the fetching atomics). arm64's JIT makes
/// no barrier of it; there the race stays as narrow as the two programs' few instructions.
#[inline(always)]
pub fn store_load_fence(rec: &mut SockRecord) {
    // SAFETY: an aligned `u64` of a map value, valid while the program runs; adding 0 keeps its
    // value whatever another CPU writes to it (the add is atomic).
    unsafe {
        // Hidden from the compiler, which would otherwise make a plain load of an add of 0.
        let nothing = core::hint::black_box(0);
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut rec.close_wait_ns, nothing);
    }
}

/// Drops the record of a server's child socket that closes without ever being established,
/// accepted or used: not a connection, and not reported. True if it was one. The kernel makes
/// such a child when two CPUs complete the same handshake at once (the final ACK and the first
/// data segment each create a child from the request; the one that loses the race into the
/// established table is closed on the spot, and its segment goes to the winner), when the
/// listener closes as the child is queued (the client's side reports that reset), and for a
/// Fast Open child whose handshake is reset or times out before anyone accepted it. Reported,
/// the first would be a second, failed server connection for one handshake. Nothing about such
/// a socket has been sent: a server's open waits for its establishment.
#[inline(always)]
pub fn forget_unborn_child(sock: u64, rec: &SockRecord) -> bool {
    let unborn = rec.role == role::SERVER
        && rec.established_ns == 0
        && rec.flags & FLAG_PARTIAL == 0
        && rec.task.pid == 0
        && rec.bytes_sent == 0
        && rec.bytes_recv == 0;
    if unborn {
        let _ = SOCKETS.remove(sock);
    }
    unborn
}

/// Notes the first sign of teardown (FIN or reset, either way), if it is the first.
#[inline(always)]
pub fn first_teardown(rec: &mut SockRecord, how: u8, now: u64) {
    if rec.first_teardown == teardown::NONE {
        rec.first_teardown = how;
        rec.teardown_ns = now;
    }
}

/// The application closed or shut down the socket: a process-context transition.
#[inline(always)]
pub fn app_closed(rec: &mut SockRecord, now: u64) {
    if rec.flags & FLAG_APP_CLOSED == 0 {
        rec.flags |= FLAG_APP_CLOSED;
        rec.app_close_ns = now;
        claim(rec);
    }
}

/// Reserves a `T` in the ring buffer, lets `fill` write every field, and submits it; counts
/// the event as lost if the ring buffer is full, and returns false then. Once the daemon has
/// stopped reading ([`stopping`]) nothing is sent and nothing counted: returns true.
#[inline(always)]
pub fn emit<T: 'static>(fill: impl FnOnce(*mut T)) -> bool {
    if stopping() {
        return true;
    }
    if !send(fill) {
        count(stat::RINGBUF_FULL);
        return false;
    }
    true
}

/// Reserves a `T` in the ring buffer, lets `fill` write every field, and submits it. False if
/// the ring buffer has no room (nothing counted: the caller decides what that costs).
#[inline(always)]
fn send<T: 'static>(fill: impl FnOnce(*mut T)) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        return false;
    };
    fill(entry.as_mut_ptr());
    entry.submit(submit_flags());
    true
}

/// Announces a connection: `kind::OPEN` (established, or adopted) or `kind::CONNECT`. Returns
/// whether the event got through (see [`emit`]); the caller then marks the record
/// [`FLAG_ANNOUNCED`].
///
/// The event writers are separate BPF functions (`inline(never)`): inlined into every caller
/// they would add their stack slots to each program's 512 bytes.
#[inline(never)]
pub fn emit_open(kind: u32, sock: u64, rec: &SockRecord, ts_ns: u64) -> bool {
    // SAFETY (all `emit` closures): the pointer is a reserved ring buffer slot of the event's
    // size, and every field is written before submit.
    emit(|event: *mut OpenEvent| unsafe {
        write_open(event, header(kind, ts_ns, sock, rec), rec, rec.state, 0);
    })
}

/// Writes every field of an open event of `rec` into a reserved ring buffer slot.
///
/// # Safety
/// `event` is a reserved ring buffer slot of an `OpenEvent`, not yet submitted.
#[inline(always)]
unsafe fn write_open(
    event: *mut OpenEvent,
    hdr: EventHeader,
    rec: &SockRecord,
    state: u8,
    deferred: u8,
) {
    // SAFETY: the caller's.
    unsafe {
        (*event).hdr = hdr;
        (*event).endpoints = rec.endpoints;
        (*event).task = rec.task;
        (*event).role = rec.role;
        (*event).flags = rec.flags;
        (*event).state = state;
        (*event).deferred = deferred;
        zero(&mut (*event)._pad);
    }
}

/// Sends the exchange that the next request (at `next_ns`) ended: the held request and the
/// response that just completed.
#[inline(never)]
pub fn emit_exchange(sock: u64, rec: &SockRecord, next_ns: u64, seq: u32, folded: bool) {
    let _ = emit(|event: *mut BurstEvent| unsafe {
        (*event).hdr = header(kind::BURST, next_ns, sock, rec);
        (*event).request = rec.held;
        (*event).response = rec.burst;
        (*event).task = rec.task;
        (*event).seq = seq;
        (*event).folded = u8::from(folded);
        zero(&mut (*event)._pad);
    });
}

///
/// Not sent while the ring buffer is more than half full (a storm of closes): its room is kept
/// for close records, and the state is in the record, which the daemon's audit reads.
#[inline(never)]
pub fn emit_state(sock: u64, rec: &SockRecord, old: u8, new: u8, ts_ns: u64) {
    if !stopping()
        && EVENTS.query(u64::from(BPF_RB_AVAIL_DATA))
            > EVENTS.query(u64::from(BPF_RB_RING_SIZE)) / 2
    {
        count(stat::STATE_SKIPPED);
        return;
    }
    let _ = emit(|event: *mut StateEvent| unsafe {
        (*event).hdr = header(kind::STATE, ts_ns, sock, rec);
        (*event).old_state = old;
        (*event).new_state = new;
        zero(&mut (*event)._pad);
    });
}

/// Sends the final record, with the kernel's TCP counters, and forgets the socket: a record
/// that kept no timeline span as a [`ShortCloseEvent`], else whole. A record the ring buffer
/// cannot take is spilled ([`spill`]); one that cannot be spilled either is
/// counted by role: as a connection nothing of which reached the daemon, or, if its open did
/// ([`FLAG_ANNOUNCED`]), as a close the daemon's audit will miss.
#[inline(never)]
pub fn finish<R: Read>(sk: Sock<R>, rec: &mut SockRecord, ts_ns: u64) {
    let sock = sk.key();
    sk.tcp_stats(offsets(), &mut rec.tcp);
    sk.diag_at_close(&offsets().diag, &mut rec.diag);
    let hdr = header(kind::CLOSE, ts_ns, sock, rec);
    if !stopping() {
        // Read before the slot is reserved, and sent as read: a late open on another CPU marks
        // itself sent once its own slot is reserved, so a close that reads it sent is read
        // after that open, and one that reads it pending stands for it; a late open that
        // checks the mark after this (`CLOSED`) discards itself.
        // SAFETY: fields of the record, a map value valid while the program runs.
        let deferred = unsafe { core::ptr::read_volatile(&rec.open_deferred) };
        if deferred == deferral::PENDING {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&mut rec.open_deferred, deferral::CLOSED) };
        }
        // SAFETY (both closures): the pointer is a reserved ring buffer slot of the event's
        // size, and every byte is written before submit.
        let sent = if rec.exchanges.kept == 0 {
            // The record's first `SHORT_RECORD_BYTES` (a multiple of 8, both sides 8-aligned),
            // copied as words.
            send(|event: *mut ShortCloseEvent| unsafe {
                (*event).hdr = hdr;
                core::ptr::copy_nonoverlapping(
                    (rec as *const SockRecord).cast::<u64>(),
                    (&raw mut (*event).record).cast::<u64>(),
                    SHORT_RECORD_BYTES / 8,
                );
                (*event).record[OPEN_DEFERRED_BYTE] = deferred;
            })
        } else {
            send(|event: *mut CloseEvent| unsafe {
                (*event).hdr = hdr;
                (*event).record = *rec;
                (*event).record.open_deferred = deferred;
            })
        };
        if !sent {
            // The spilled copy stands for the open as the close would have.
            if rec.open_deferred == deferral::CLOSED {
                rec.open_deferred = deferral::PENDING;
            }
            if spill(hdr, rec) {
                count(stat::CLOSE_SPILLED);
            } else {
                count(stat::RINGBUF_FULL);
                let group = if announced(rec) {
                    stat::CLOSE_DROPPED
                } else {
                    stat::CLOSE_UNSEEN
                };
                count(stat::by_role(group, rec.role));
            }
        }
    }
    let _: Result<(), i32> = SOCKETS.remove(sock);
}

/// Where a record's short close carries `SockRecord::open_deferred`.
const OPEN_DEFERRED_BYTE: usize = core::mem::offset_of!(SockRecord, open_deferred);
const _: () = assert!(OPEN_DEFERRED_BYTE < SHORT_RECORD_BYTES);

/// Whether an open or connect event of the connection got through: the daemon holds it as
/// live.
#[inline(always)]
fn announced(rec: &SockRecord) -> bool {
    rec.flags & FLAG_ANNOUNCED != 0 || rec.open_deferred == deferral::SENT
}

/// Keeps a close record the ring buffer cannot take: a copy in `SOCKETS` under its
/// generation (`start_ns`, which no socket address can equal), and its header in `SPILLED`,
/// whence the daemon takes both once it has drained the ring. A burst of closes (a server
/// restarting, a thousand clients leaving at once) is then delayed rather than lost, within
/// the table's room. False if either is full (or two records share a generation). The
/// header carries the record's role and whether its open got through ([`spill_tag`]), for
/// the daemon to count the end if the table evicts the copy first.
#[inline(always)]
fn spill(mut hdr: EventHeader, rec: &SockRecord) -> bool {
    if SOCKETS.insert(hdr.start_ns, rec, BPF_NOEXIST).is_err() {
        return false;
    }
    hdr._pad = spill_tag::of(rec.role, announced(rec));
    if SPILLED.push(hdr, 0).is_err() {
        // Unless the daemon took the copy meanwhile (a newer connection on the socket made it
        // look): then the close is reported.
        return SOCKETS.remove(hdr.start_ns).is_err();
    }
    true
}

/// The socket reached `CLOSE` from `old` (the state family's transition, or, for an orphaned
/// socket, `tcp_destroy_sock` right after it): close time and `sk_err`.
#[inline(always)]
pub fn mark_closed<R: Read>(o: &Offsets, sk: Sock<R>, rec: &mut SockRecord, old: u8, now: u64) {
    rec.close_ns = now;
    rec.final_state = old;
    rec.state = tcp_state::CLOSE;
    // Empty if the application already took it; the errors family kept it then, unless the
    // connection outlived that error (an ICMP error on an established socket with
    // `IP_RECVERR`) and is ending normally, from a state only a FIN exchange leads to.
    let err = sk.err(o);
    if err != 0 {
        rec.sk_err = err;
    } else if matches!(
        old,
        tcp_state::FIN_WAIT2 | tcp_state::LAST_ACK | tcp_state::CLOSING
    ) {
        rec.sk_err = 0;
    }
}

/// The record of a traced socket, adopting the socket if tcpobs has none: a connection already
/// open when tcpobs started, or whose record the LRU table evicted. `state` is the socket's
/// state if the hook knows it (state hooks fire before the kernel stores the new state),
/// `None` to read it from the socket. `None` for sockets that are not traced.
#[inline(always)]
pub fn record_or_adopt<R: Read>(
    o: &Offsets,
    sk: Sock<R>,
    state: Option<u8>,
    adoption: Adoption,
) -> Option<&'static mut SockRecord> {
    let key = sk.key();
    if let Some(rec) = SOCKETS.get_ptr_mut(key) {
        // SAFETY: map values live until removed; concurrent updates from another CPU can only
        // make counters approximate, never invalid (every field is an integer).
        let rec = unsafe { &mut *rec };
        return (rec.flags & FLAG_IGNORED == 0).then_some(rec);
    }
    if sk.is_null() {
        return None;
    }
    // The state lives in `sock_common`, valid even for request and time-wait sockets, which
    // `adopt` rules out before anything beyond `sock_common` is read.
    adopt(
        o,
        sk,
        state.unwrap_or_else(|| sk.state(o)),
        adoption,
        now_ns(),
    )
}

#[inline(never)]
fn adopt<R: Read>(
    o: &Offsets,
    sk: Sock<R>,
    state: u8,
    adoption: Adoption,
    now: u64,
) -> Option<&'static mut SockRecord> {
    // Once the daemon stops reading, nothing new is taken on (it could not be reported).
    if !is_connected_state(state) || stopping() || !sk.is_tcp(o) {
        return None;
    }
    let rec = scratch_record()?;
    sk.read_endpoints(o, &mut rec.endpoints);
    let lport = rec.endpoints.lport;
    let traced = allowed(&rec.endpoints, || adoption.owner(o, sk, lport));
    rec.start_ns = now;
    rec.role = adoption.role();
    rec.flags = if traced { FLAG_PARTIAL } else { FLAG_IGNORED };
    rec.state = state;
    // By reference: a copy would put the record on the stack.
    let record: &SockRecord = rec;
    if SOCKETS.insert(sk.key(), record, 0).is_err() {
        count(stat::TABLE_INSERT_FAILED);
        return None;
    }
    if !traced {
        return None;
    }
    count(stat::ADOPTED);
    if adoption.0 & Adoption::PROCESS_CONTEXT != 0 {
        // The owner, as the first send or receive will claim it: the daemon hears no more of
        // this connection until it closes.
        current_task(&mut rec.task);
    }
    let announced = emit_open(kind::OPEN, sk.key(), rec, now);
    // SAFETY: as in `record_or_adopt`.
    let rec = unsafe { &mut *SOCKETS.get_ptr_mut(sk.key())? };
    if announced {
        rec.flags |= FLAG_ANNOUNCED;
    }
    Some(rec)
}

/// Seeds the record of a connection that was open before tcpobs started (the
/// `seed_connections` iterator, once at start-up): `task` holds the socket's file.
///
/// The role comes from the listening ports of the socket's network namespace (a socket on a
/// listening port is the server end, one on an ephemeral port the client end, the rest
/// unknown: `tcpobs_common::seed::role_of`), the owner from the task (pid and comm, in the
/// open event; the cgroup is not known here, so the record's owner is claimed again by the
/// first process-context hook), the byte totals from the kernel's own counters (`bytes_acked`,
/// `bytes_received`, less the SYN and FINs: `tcpobs_common::seed`). The kernel keeps no
/// creation time for a TCP socket: the record starts now and is partial (`already_open`), with
/// the handshake unknown. A teardown
/// already under way is kept: who sent the first FIN follows from the state, when is unknown.
/// A socket that already has a record (a hook saw it first) keeps it; if a hook adopted it
/// (role unknown) since the families attached, it gets its role. With the role known, the
/// data hooks time and classify the exchanges from now on like any other's.
#[inline(never)]
pub fn seed<R: Read>(o: &Offsets, sk: Sock<R>, state: u8, task: u64) {
    let key = sk.key();
    if let Some(existing) = SOCKETS.get_ptr_mut(key) {
        // SAFETY: as in `record_or_adopt`.
        let existing = unsafe { &mut *existing };
        // Adopted by a hook since the families attached, with its role unknown: it gets its
        // role now, announced by a second open event of the same generation.
        if existing.role == role::UNKNOWN
            && existing.flags & (FLAG_PARTIAL | FLAG_IGNORED) == FLAG_PARTIAL
        {
            let lport = existing.endpoints.lport;
            let role = seed::role_of(is_listening_port(o, sk, lport), lport, o.ephemeral_low);
            if role != role::UNKNOWN {
                existing.role = role;
                count(stat::SEEDED);
                if emit_open(kind::OPEN, key, existing, now_ns()) {
                    existing.flags |= FLAG_ANNOUNCED;
                }
            }
        }
        return;
    }
    let Some(rec) = seed_scratch_record() else {
        return;
    };
    sk.read_endpoints(o, &mut rec.endpoints);
    let lport = rec.endpoints.lport;
    rec.role = seed::role_of(is_listening_port(o, sk, lport), lport, o.ephemeral_low);
    let d = &o.diag;
    rec.task.pid = kread(task, d.task_tgid).unwrap_or(0);
    rec.task.tid = rec.task.pid;
    if d.task_comm != 0 {
        rec.task.comm = kread(task, d.task_comm).unwrap_or([0; 16]);
    }
    let owner = Owner {
        pid: rec.task.pid,
        _pad: 0,
        cgroup: 0,
    };
    let traced = allowed(&rec.endpoints, || Some(owner));
    let now = now_ns();
    rec.start_ns = now;
    rec.state = state;
    rec.flags = if traced { FLAG_PARTIAL } else { FLAG_IGNORED };
    let (first_teardown, flags) = seed::teardown_of(state);
    rec.first_teardown = first_teardown;
    rec.flags |= flags;
    sk.tcp_stats(o, &mut rec.tcp);
    (rec.bytes_sent, rec.bytes_recv) =
        seed::payload_of(rec.role, state, rec.tcp.bytes_acked, rec.tcp.bytes_received);
    let record: &SockRecord = rec;
    // No overwrite: a hook that created the record since the look-up above wins.
    if SOCKETS.insert(key, record, BPF_NOEXIST).is_err() || !traced {
        return;
    }
    count(stat::SEEDED);
    let announced = emit_open(kind::OPEN, key, rec, now);
    // The open event names the holder found; the record's owner is left for the first send,
    // receive or close to claim (`claim`), with its cgroup, which the iterator cannot read.
    if let Some(kept) = SOCKETS.get_ptr_mut(key) {
        // SAFETY: as in `record_or_adopt`.
        unsafe { (*kept).task.pid = 0 };
        if announced {
            // SAFETY: as above.
            unsafe { (*kept).flags |= FLAG_ANNOUNCED };
        }
    }
}

const BPF_NOEXIST: u64 = 1;

/// The traced record of a socket, without adopting it.
#[inline(always)]
pub fn traced_record<R: Read>(sk: Sock<R>) -> Option<&'static mut SockRecord> {
    // SAFETY: as in `record_or_adopt`.
    let rec = unsafe { &mut *SOCKETS.get_ptr_mut(sk.key())? };
    (rec.flags & FLAG_IGNORED == 0).then_some(rec)
}

/// Starts a fresh record for a connection being opened: `CLOSE -> SYN_SENT` for a client (in
/// the connecting process), `LISTEN -> SYN_RECV` for a server (in softirq). A client is judged
/// by the filters now (an excluded one gets an ignored marker), and announced when it is
/// established, fails, or retransmits its SYN (`kind::CONNECT`, see `hooks::retransmit`); a server
/// is judged and announced when it is established, the moment its addresses are sure to be
/// set ([`judge_server`]).
pub fn start<R: Read>(o: &Offsets, sk: Sock<R>, role: u8, now: u64) {
    let key = sk.key();
    if let Some(previous) = traced_record(sk) {
        // The same socket was disconnected (connect(AF_UNSPEC)) and is connecting again: the
        // previous connection is over.
        finish(sk, previous, now);
    }
    let Some(rec) = scratch_record() else {
        return;
    };
    sk.read_endpoints(o, &mut rec.endpoints);
    let client = role == role::CLIENT;
    let traced = if client {
        current_task(&mut rec.task);
        let owner = Owner {
            pid: rec.task.pid,
            _pad: 0,
            cgroup: rec.task.cgroup,
        };
        allowed(&rec.endpoints, || Some(owner))
    } else {
        true
    };
    rec.start_ns = now;
    rec.role = role;
    rec.state = if client {
        tcp_state::SYN_SENT
    } else {
        tcp_state::SYN_RECV
    };
    rec.flags = if traced { 0 } else { FLAG_IGNORED };
    let record: &SockRecord = rec;
    if SOCKETS.insert(key, record, 0).is_err() {
        count(stat::TABLE_INSERT_FAILED);
    }
}

/// Whether an accepted socket, now established, passes the filters (judged by whoever listens
/// on its port); if not, its record becomes an ignored marker.
#[inline(always)]
pub fn judge_server<R: Read>(o: &Offsets, sk: Sock<R>, rec: &mut SockRecord) -> bool {
    let lport = rec.endpoints.lport;
    if allowed(&rec.endpoints, || listener(o, sk, lport)) {
        return true;
    }
    rec.flags |= FLAG_IGNORED;
    false
}

/// A connecting socket gets its local port after `SYN_SENT` and loses it again when a failed
/// connect reaches `CLOSE`; hooks that see it in between (a reset, a SYN retransmit) fill it in.
#[inline(always)]
pub fn learn_local_port<R: Read>(o: &Offsets, sk: Sock<R>, rec: &mut SockRecord) {
    if rec.endpoints.lport == 0 && rec.state == tcp_state::SYN_SENT {
        sk.read_endpoints(o, &mut rec.endpoints);
    }
}
