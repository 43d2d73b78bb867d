//! Maps and globals shared by every hook family. Names match `tcpobs_common::names`.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use tcpobs_common::{Offsets, SockRecord, stat};

/// Events to the daemon. The size is set by the loader (`--ringbuf-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// One record per traced socket, keyed by `struct sock` address. LRU, so a full table evicts
/// the coldest socket instead of refusing new ones; the daemon notices and counts evictions.
/// The size is set by the loader (`--max-sockets`).
#[map]
pub static SOCKETS: LruHashMap<u64, SockRecord> = LruHashMap::with_max_entries(131_072, 0);

/// Drop counters, indexed by `tcpobs_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Kernel layout facts, written by the loader before the programs load.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<Offsets> = Global::new(Offsets::UNSET);

/// Adds one to a drop counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup; per-CPU slots are
        // not shared with other CPUs.
        unsafe { *counter += 1 };
    }
}
