//! Maps and globals shared by the hook families (a map that one family uses sits beside its
//! hooks). Names match `tcpobs_common::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
};
use tcpobs_common::{
    EventHeader, FoldConfig, Folds, ListenKey, ListenSock, Offsets, RoleFolds, SockRecord,
    folds::{LABEL_SLOTS as SLOTS, LABELED_CGROUPS, labeled_index},
    stat,
};

use crate::helpers::current_task;

/// Events to the daemon. The size is set by the loader (`--ringbuf-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// One record per traced socket, keyed by `struct sock` address. LRU, so a full table evicts
/// the coldest socket instead of refusing new ones; the daemon notices and counts evictions.
/// The size is set by the loader (`--max-sockets`).
#[map]
pub static SOCKETS: LruHashMap<u64, SockRecord> = LruHashMap::with_max_entries(131_072, 0);

/// Close records the ring buffer could not take: their headers, in the order they closed. The
/// record itself stays in `SOCKETS`, re-keyed by its `start_ns`. The size is set by the loader
/// (`--max-sockets`: the table cannot hold more records than that anyway).
#[map]
pub static SPILLED: Queue<EventHeader> = Queue::with_max_entries(131_072, 0);

/// Scratch space to build a record in: a `SockRecord` is too big for the 512-byte stack
/// alongside everything else.
#[map]
pub static SCRATCH: PerCpuArray<SockRecord> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the seeding iterator alone: it runs in process context, where a hook in
/// softirq on the same CPU (a state change, a reset) may interrupt it and use `SCRATCH`.
#[map]
pub static SEED_SCRATCH: PerCpuArray<SockRecord> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed record to fill in and insert (per CPU; programs do not nest on one CPU for the
/// same hook).
#[inline(always)]
pub fn scratch_record() -> Option<&'static mut SockRecord> {
    SCRATCH.get_ptr_mut(0).map(zeroed)
}

/// The seeding's zeroed record to fill in and insert (see `SEED_SCRATCH`).
#[inline(always)]
pub fn seed_scratch_record() -> Option<&'static mut SockRecord> {
    SEED_SCRATCH.get_ptr_mut(0).map(zeroed)
}

/// Zeroes this CPU's slot of a one-entry scratch array.
#[inline(always)]
fn zeroed(rec: *mut SockRecord) -> &'static mut SockRecord {
    const WORDS: usize = core::mem::size_of::<SockRecord>() / 8;
    const _: () = assert!(core::mem::size_of::<SockRecord>().is_multiple_of(8));
    let words = rec.cast::<u64>();
    // SAFETY: the pointer is this CPU's slot of a one-entry array, 8-byte aligned and
    // `WORDS` words long; SockRecord is plain data, for which all-zero bytes are a valid
    // value. Volatile word stores, because `write_bytes` becomes a call to a byte-at-a-time
    // `memset` subprogram.
    unsafe {
        for index in 0..WORDS {
            core::ptr::write_volatile(words.add(index), 0);
        }
        &mut *rec
    }
}

/// 1 when a `tcp_connect` program starts client records (set by the loader before the state
/// family attaches).
#[map]
pub static CONNECT_HOOKED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the state program should leave client starts to the connect family.
#[inline(always)]
pub fn connect_hooked() -> bool {
    CONNECT_HOOKED.get(0).is_some_and(|hooked| *hooked != 0)
}

/// 1 once the daemon stopped reading the ring buffer (set by the daemon as it shuts down).
#[map]
pub static STOPPING: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the daemon has stopped reading: nothing is sent, and nothing counted as lost.
#[inline(always)]
pub fn stopping() -> bool {
    STOPPING.get(0).is_some_and(|stopping| *stopping != 0)
}

/// 1 while the daemon waits for the next event with no drain timer running (set by the
/// daemon once the ring has stayed empty for a while).
#[map]
pub static READER_IDLE: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the daemon waits for a wake-up to read the ring: true once per idle period (the
/// flag is cleared here; two CPUs that both see it set wake the reader twice, harmlessly).
#[inline(always)]
pub fn take_reader_idle() -> bool {
    let Some(idle) = READER_IDLE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a pointer into an array map's value, valid while the program runs; volatile so
    // the store is not merged with the load.
    unsafe {
        if core::ptr::read_volatile(idle) == 0 {
            return false;
        }
        core::ptr::write_volatile(idle, 0);
    }
    true
}

/// Drop counters, indexed by `tcpobs_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Kernel layout facts, written by the loader before the programs load.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::UNSET;

/// The loader's layout facts, read in place. The pointer goes through a volatile read so that
/// the compiler cannot fold the zeroes compiled into the object into the code, and no program
/// copies the whole struct onto its 512-byte stack.
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    let ptr: *const Offsets = &raw const OFFSETS;
    // SAFETY: a volatile read of a local; the static lives as long as the program.
    unsafe { &*core::ptr::read_volatile(&ptr) }
}

/// Whether exchanges are folded, and the histograms' bucket limits (written by the loader).
#[unsafe(no_mangle)]
static FOLD_CONFIG: FoldConfig = FoldConfig::UNSET;

/// The loader's fold settings, read in place (see [`offsets`]).
#[inline(always)]
pub fn fold_config() -> &'static FoldConfig {
    let ptr: *const FoldConfig = &raw const FOLD_CONFIG;
    // SAFETY: as in `offsets`.
    unsafe { &*core::ptr::read_volatile(&ptr) }
}

/// What the data hooks folded (`tcpobs_common::folds`), per CPU.
#[map]
pub static FOLDS: PerCpuArray<Folds> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's folds.
#[inline(always)]
pub fn folds() -> Option<&'static mut Folds> {
    // SAFETY: this CPU's slot of a one-entry per-CPU array: programs on one CPU do not run
    // concurrently for the same hook, and every field is an integer.
    FOLDS.get_ptr_mut(0).map(|folds| unsafe { &mut *folds })
}

/// What the data hooks folded by label slot (`tcpobs_common::folds::LABEL_SLOTS`), per CPU.
#[map]
pub static LABELED_FOLDS: PerCpuArray<RoleFolds> = PerCpuArray::with_max_entries(2 * SLOTS, 0);

/// Socket cgroups' label slots, written by the daemon.
#[map]
pub static LABEL_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(LABELED_CGROUPS, 0);

/// This CPU's folds for the label slot of a socket's cgroup, if the daemon gave it one.
#[inline(always)]
pub fn labeled_folds(cgroup: u64, socket_role: u8) -> Option<&'static mut RoleFolds> {
    // SAFETY: a plain value copied out of the map.
    let slot = unsafe { LABEL_SLOTS.get(cgroup) }.copied()?;
    let index = labeled_index(slot, socket_role)?;
    // SAFETY: as in `folds`.
    LABELED_FOLDS
        .get_ptr_mut(index)
        .map(|folds| unsafe { &mut *folds })
}

/// 1 while the daemon wants an event for every exchange; 0: only for those not folded.
#[map]
pub static EXCHANGE_EVENTS: Array<u32> = Array::with_max_entries(1, 0);

/// Whether to send each exchange to the daemon, folded or not.
#[inline(always)]
pub fn exchange_events() -> bool {
    EXCHANGE_EVENTS.get(0).is_some_and(|wanted| *wanted != 0)
}

/// Adds one to a drop counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup; per-CPU slots are
        // not shared with other CPUs.
        unsafe { *counter += 1 };
    }
}

/// Listening sockets by address, and who listens: registered at `listen()` (by the state
/// family, in the listening process) or found at start-up by the `find_listeners` iterator;
/// read by the daemon through the sampler, for the listener health gauges.
#[map]
pub static LISTEN_SOCKS: HashMap<u64, ListenSock> = HashMap::with_max_entries(16_384, 0);

/// Registers a listening socket with the current process as its owner (process context).
#[inline(never)]
pub fn remember_listener(sk: u64, netns: u32, port: u16) {
    let mut listener = ListenSock {
        netns,
        port,
        ..ListenSock::default()
    };
    current_task(&mut listener.task);
    let _ = LISTEN_SOCKS.insert(sk, listener, 0);
}

/// Listening ports found by the `find_listeners` iterator at start-up, in every network
/// namespace: the `seed_connections` iterator, which runs next, takes a socket whose local port
/// is one of them (or one registered at `listen()` since, `LISTENERS`) for the server end.
/// Not preallocated (`BPF_F_NO_PREALLOC`): written once.
#[map]
pub static LISTEN_PORTS: HashMap<ListenKey, u8> = HashMap::with_max_entries(16_384, 1);
