//! The ring buffer reader: kernel records to typed events, with loss accounting.
//!
//! The kernel submits events without waking the reader unless a quarter of the ring is full,
//! so the reader drains on a short timer as well as on readiness. Draining is a tight,
//! allocation-free loop over the mapped ring.

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use tcpobs_common::{names, role, stat};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::kernel::{
    decode::{KIND_NAMES, KernelEvent},
    report::{MapError, take_map},
};

/// What the kernel side had to drop (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Events dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Sockets not traced because the socket table insert failed.
    pub table_insert_failed: u64,
    /// Sockets adopted mid-life (already open, or evicted and seen again).
    pub adopted: u64,
    /// TLS handshake calls not followed (the kernel's per-thread table was full).
    pub tls_untracked: u64,
    /// Connection ends of which nothing reached the daemon (their close record and their open
    /// were both dropped from a full ring buffer), by role: `[client, server, unknown]`.
    pub connections_lost: [u64; 3],
    /// Close records dropped from a full ring buffer after the connection's open arrived, by
    /// role (`[client, server, unknown]`): the daemon's audit reports these connections
    /// partial (`lost`).
    pub closes_lost: [u64; 3],
    /// Connections already open at start-up, seeded into the socket table (or, adopted in the
    /// meantime, given their role) by the seeding iterator.
    pub seeded: u64,
}

impl KernelStats {
    /// Connection ends of which nothing reached the daemon, over every role.
    pub fn connections_lost_total(&self) -> u64 {
        self.connections_lost.iter().sum()
    }

    /// Close records dropped after the open arrived, over every role.
    pub fn closes_lost_total(&self) -> u64 {
        self.closes_lost.iter().sum()
    }
}

/// Events received, per kind, and records that could not be decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Indexed like [`KIND_NAMES`].
    pub events: [u64; KIND_NAMES.len()],
    pub undecodable: u64,
}

impl ReaderStats {
    pub fn total(&self) -> u64 {
        self.events.iter().sum()
    }
}

pub(crate) struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    stats_map: PerCpuArray<MapData, u64>,
    /// Tells the programs that nobody reads any more (`STOPPING`).
    stopping: Array<MapData, u32>,
    stats: ReaderStats,
}

impl Reader {
    /// Takes the ring buffer and the stats map out of the loaded object, so that they outlive
    /// the programs (the last events are drained after detaching).
    pub(crate) fn new(ebpf: &mut aya::Ebpf) -> Result<Self, MapError> {
        let ring: RingBuf<MapData> = take_map(ebpf, names::EVENTS_MAP)?;
        // SAFETY: the ring buffer owns its map fd, which stays open, and is the fd `as_raw_fd`
        // returns, for as long as the `RingBuf` (and so the `AsyncFd`) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| MapError::new(names::EVENTS_MAP, err))?;
        let stats_map = take_map(ebpf, names::STATS_MAP)?;
        let stopping = take_map(ebpf, names::STOPPING_MAP)?;
        Ok(Self {
            ring,
            stats_map,
            stopping,
            stats: ReaderStats::default(),
        })
    }

    /// Tells the programs that the daemon is about to stop reading: from now on they send
    /// nothing and count nothing as lost (connections still open are reported partial,
    /// `shutdown`, from the live table).
    pub(crate) fn stop_sources(&mut self) -> Result<(), MapError> {
        self.stopping
            .set(0, 1, 0)
            .map_err(|err| MapError::new(names::STOPPING_MAP, err))
    }

    /// Waits until the kernel signals pending data (it only does so when the ring fills up;
    /// callers also drain on a timer).
    pub(crate) async fn readable(&self) -> std::io::Result<()> {
        let mut guard = self.ring.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Decodes every pending event and hands it to `handle`. Returns how many were read.
    pub(crate) fn drain(&mut self, mut handle: impl FnMut(&KernelEvent)) -> usize {
        let mut read = 0;
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            read += 1;
            match KernelEvent::try_from(&*item) {
                Ok(event) => {
                    self.stats.events[event.kind_index()] += 1;
                    handle(&event);
                }
                Err(err) => {
                    self.stats.undecodable += 1;
                    if self.stats.undecodable == 1 {
                        warn!(
                            "undecodable ring buffer record ({err}); further ones are only counted"
                        );
                    }
                }
            }
        }
        read
    }

    pub(crate) fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// The kernel's drop counters, summed over CPUs.
    pub(crate) fn kernel_stats(&self) -> KernelStats {
        let sum = |index: u32| {
            self.stats_map
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        let by_role = |group: u32| {
            [role::CLIENT, role::SERVER, role::UNKNOWN].map(|role| sum(stat::by_role(group, role)))
        };
        KernelStats {
            ringbuf_full: sum(stat::RINGBUF_FULL),
            table_insert_failed: sum(stat::TABLE_INSERT_FAILED),
            adopted: sum(stat::ADOPTED),
            tls_untracked: sum(stat::TLS_UNTRACKED),
            connections_lost: by_role(stat::CLOSE_UNSEEN),
            closes_lost: by_role(stat::CLOSE_DROPPED),
            seeded: sum(stat::SEEDED),
        }
    }
}
