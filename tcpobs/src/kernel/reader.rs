//! The ring buffer reader: kernel records to typed events, with loss accounting.
//!
//! The kernel submits events without waking the reader unless a quarter of the ring is full,
//! so the reader drains on a short timer as well as on readiness. While the ring stays empty
//! the daemon stops that timer and sets `READER_IDLE` ([`Reader::set_idle`]): the kernel then
//! wakes the reader with its next event (`app::pacing`). Draining is a tight, allocation-free
//! loop over the mapped ring.
//!
//! Close records the ring could not take wait in the socket table, their headers queued in
//! `SPILLED` in the order they closed (the kernel's `finish`). The reader merges them into the
//! ring's events by time: a spilled close is handed over before the first ring event that
//! happened after it, and at the end of a drain if it happened before the drain began (a
//! later one waits for the next drain, in case its connection's open is still on the way).
//! Merging costs one queue read per drain while nothing is spilled. A drain stops after
//! [`DRAIN_TIME_NS`], so that a backlog of spilled records (a flood the daemon cannot keep up
//! with) does not keep it from its sweeps and its API. An event that supersedes
//! a connection the tracker still has live (a new generation on its socket, or a close of
//! another) has that connection's spilled close, if there is one, taken from the table at
//! once, wherever its header is in the queue (two closes on two CPUs may be queued in the
//! other order than their times).

use std::{collections::HashSet, os::fd::AsFd as _};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, Queue, RingBuf};
use tcpobs_common::{CloseEvent, EventHeader, SockRecord, kind, names, role, spill_tag, stat};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::{
    clock::monotonic_now_ns,
    kernel::{
        decode::{KIND_NAMES, KernelEvent},
        report::{MapError, take_map},
    },
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
    /// Connection ends of which nothing reached the daemon (their close record dropped from a
    /// full ring buffer, their open dropped too or deferred), by role: `[client, server,
    /// unknown]`.
    pub connections_lost: [u64; 3],
    /// Close records dropped from a full ring buffer after the connection's open arrived, by
    /// role (`[client, server, unknown]`): the daemon's audit reports these connections
    /// partial (`lost`).
    pub closes_lost: [u64; 3],
    /// Connections already open at start-up, seeded into the socket table (or, adopted in the
    /// meantime, given their role) by the seeding iterator.
    pub seeded: u64,
    /// Close records the ring buffer could not take, kept for the reader ([`Reader::drain`]).
    pub closes_spilled: u64,
    /// State events not sent while the ring buffer was more than half full (the state is in
    /// the record, which the daemon's audit reads).
    pub states_skipped: u64,
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
    /// Indexed like [`KIND_NAMES`] (spilled close records included).
    pub events: [u64; KIND_NAMES.len()],
    pub undecodable: u64,
    /// Spilled close records read back.
    pub spills_read: u64,
    /// Spilled close records whose copy a full socket table had evicted before the reader
    /// came to it, of connections whose open had arrived: they are reported partial (`lost`)
    /// by the audit.
    pub spills_evicted: u64,
    /// The same, of connections whose open had not arrived either: ends of which nothing is
    /// reported, by role (`[client, server, unknown]`, as [`KernelStats::connections_lost`]).
    pub spills_unseen: [u64; 3],
    /// Times the reader stopped its drain timer, the ring having stayed empty, and waited for
    /// the kernel to wake it with the next event.
    pub idle_waits: u64,
}

impl ReaderStats {
    /// Connection ends of which nothing reached the daemon, by role: the kernel's count and
    /// the reader's.
    pub fn connections_lost(&self, kernel: &KernelStats) -> [u64; 3] {
        let mut lost = kernel.connections_lost;
        for (lost, unseen) in lost.iter_mut().zip(self.spills_unseen) {
            *lost += unseen;
        }
        lost
    }

    pub fn total(&self) -> u64 {
        self.events.iter().sum()
    }
}

/// How long one drain may run (ns): under a flood that refills the ring and the spill queue
/// as fast as they are read, the daemon still gets back to its sweeps and its API.
const DRAIN_TIME_NS: u64 = 20_000_000;

/// The clock is read once per this many ring buffer records.
const CLOCK_EVERY: usize = 256;

/// What one drain did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Ring buffer records read.
    pub read: usize,
    /// Whether it stopped for time with more to read.
    pub more: bool,
}

/// At most this many drains make [`Reader::drain_all`] (20 ms each): if the programs could
/// not be told to stop, a flood would otherwise keep the daemon from exiting.
const DRAIN_ALL_ROUNDS: usize = 500;

/// The order of the per-role counters here (`[client, server, unknown]`), by kernel role.
const ROLE_ORDER: [u8; 3] = [role::CLIENT, role::SERVER, role::UNKNOWN];

/// The kernel's socket table (`SOCKETS`).
pub(crate) type SocketTable = HashMap<MapData, u64, SockRecord>;

/// Where the reader's events go.
pub(crate) trait Feed {
    /// The generation (`start_ns`) of the live connection `event` supersedes, if any (see the
    /// module docs).
    fn superseded(&self, event: &KernelEvent) -> Option<u64>;
    fn handle(&mut self, event: &KernelEvent);
}

pub(crate) struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    spilled: Spilled,
    /// Whether the last drain stopped for time ([`Drained::more`]).
    behind: bool,
    stats_map: PerCpuArray<MapData, u64>,
    /// Tells the programs that nobody reads any more (`STOPPING`).
    stopping: Array<MapData, u32>,
    /// Asks the programs to wake the reader with the next event (`READER_IDLE`).
    idle: Array<MapData, u32>,
    stats: ReaderStats,
}

impl Reader {
    /// Takes the ring buffer, the spill queue and the stats map out of the loaded object, so
    /// that they outlive the programs (the last events are drained after detaching), and
    /// returns the socket table beside the reader (the reader keeps a second handle on it).
    pub(crate) fn new(ebpf: &mut aya::Ebpf) -> Result<(Self, SocketTable), MapError> {
        let (sockets, own) = take_twice(ebpf, names::SOCKETS_MAP)?;
        let ring: RingBuf<MapData> = take_map(ebpf, names::EVENTS_MAP)?;
        // SAFETY: the ring buffer owns its map fd, which stays open, and is the fd `as_raw_fd`
        // returns, for as long as the `RingBuf` (and so the `AsyncFd`) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| MapError::new(names::EVENTS_MAP, err))?;
        let stats_map = take_map(ebpf, names::STATS_MAP)?;
        let stopping = take_map(ebpf, names::STOPPING_MAP)?;
        let idle = take_map(ebpf, names::READER_IDLE_MAP)?;
        let reader = Self {
            ring,
            spilled: Spilled {
                queue: take_map(ebpf, names::SPILLED_MAP)?,
                sockets: own,
                head: None,
                taken: HashSet::new(),
            },
            behind: false,
            stats_map,
            stopping,
            idle,
            stats: ReaderStats::default(),
        };
        Ok((reader, sockets))
    }

    /// Tells the programs that the daemon is about to stop reading: from now on they send
    /// nothing and count nothing as lost (connections still open are reported partial,
    /// `shutdown`, from the live table).
    pub(crate) fn stop_sources(&mut self) -> Result<(), MapError> {
        self.stopping
            .set(0, 1, 0)
            .map_err(|err| MapError::new(names::STOPPING_MAP, err))
    }

    /// Asks the programs to wake the reader with their next event (`true`), or not (`false`:
    /// the reader drains on its timer again). Set while nothing comes, so that an idle host
    /// costs no timer wake-ups; see [`Reader::readable`].
    pub(crate) fn set_idle(&mut self, idle: bool) -> Result<(), MapError> {
        self.idle
            .set(0, u32::from(idle), 0)
            .map_err(|err| MapError::new(names::READER_IDLE_MAP, err))
    }

    /// Waits until the kernel signals pending data: it does so when a quarter of the ring is
    /// full, and for the first event after [`Reader::set_idle`]. Callers drain on a timer too.
    pub(crate) async fn readable(&self) -> std::io::Result<()> {
        let mut guard = self.ring.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands the pending events to `feed`, the ring's (decoded) and the spilled close records
    /// merged by time (see the module docs), for at most [`DRAIN_TIME_NS`].
    pub(crate) fn drain(&mut self, feed: &mut impl Feed) -> Drained {
        let began = monotonic_now_ns();
        let deadline = began + DRAIN_TIME_NS;
        let spilled = &mut self.spilled;
        let stats = &mut self.stats;
        let spills_before = stats.spills_read;
        let mut merging = spilled.refill();
        let mut read: usize = 0;
        let ring = self.ring.get_mut();
        let mut more = false;
        while let Some(item) = ring.next() {
            read += 1;
            match KernelEvent::try_from(&*item) {
                Ok(event) => {
                    if let Some(generation) = feed.superseded(&event) {
                        spilled.take(event.header().sock, generation, stats, feed);
                        merging = spilled.head.is_some();
                    }
                    if merging {
                        // A backlog of spilled records may outlast the drain: the event is
                        // handed over anyway (it is read), before older spilled closes, which
                        // is harmless (a close needed first was taken above).
                        more |= !spilled.hand_over(event.header().ts_ns, deadline, stats, feed);
                        merging = spilled.head.is_some();
                    }
                    stats.events[event.kind_index()] += 1;
                    feed.handle(&event);
                }
                Err(err) => {
                    stats.undecodable += 1;
                    if stats.undecodable == 1 {
                        warn!(
                            "undecodable ring buffer record ({err}); further ones are only counted"
                        );
                    }
                }
            }
            if more || (read.is_multiple_of(CLOCK_EVERY) && monotonic_now_ns() > deadline) {
                more = true;
                break;
            }
        }
        if !more {
            more = !spilled.hand_over(began, deadline, stats, feed);
        }
        self.behind = more;
        let read = read + (stats.spills_read - spills_before) as usize;
        Drained { read, more }
    }

    /// Removes the kernel's record of generation `start_ns` on `sock`, which outlived its
    /// socket (the close hooks' run was skipped), unless another generation has taken the
    /// address. Two races are left, each microseconds wide: a new socket taking the address
    /// between this read and the removal loses its record (its connection is then found gone
    /// by the audit and reported lost), and one taking it between the sweep that reported this
    /// connection lost and the read finishes the stale record as its predecessor's close (that
    /// end is then reported twice, `lost` and `missed_open`).
    pub(crate) fn forget_stale(&mut self, sock: u64, start_ns: u64) {
        let sockets = &mut self.spilled.sockets;
        if sockets
            .get(&sock, 0)
            .is_ok_and(|rec| rec.start_ns == start_ns)
        {
            let _ = sockets.remove(&sock);
        }
    }

    /// Whether the last drain left events to read (it stopped for time): a close may still be
    /// on its way, so a connection missing from the kernel's table is not yet lost.
    pub(crate) fn behind(&self) -> bool {
        self.behind
    }

    /// Hands everything left to `feed`: the ring's records, then every spilled close record
    /// (the programs are detached or stopped: nothing more is on its way).
    pub(crate) fn drain_all(&mut self, feed: &mut impl Feed) {
        for _ in 0..DRAIN_ALL_ROUNDS {
            if !self.drain(feed).more {
                break;
            }
        }
        self.spilled.refill();
        self.spilled
            .hand_over(u64::MAX, u64::MAX, &mut self.stats, feed);
    }

    /// Counts one wait for the kernel's wake-up ([`ReaderStats::idle_waits`]).
    pub(crate) fn count_idle_wait(&mut self) {
        self.stats.idle_waits += 1;
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
        let by_role = |group: u32| ROLE_ORDER.map(|role| sum(stat::by_role(group, role)));
        KernelStats {
            ringbuf_full: sum(stat::RINGBUF_FULL),
            table_insert_failed: sum(stat::TABLE_INSERT_FAILED),
            adopted: sum(stat::ADOPTED),
            tls_untracked: sum(stat::TLS_UNTRACKED),
            connections_lost: by_role(stat::CLOSE_UNSEEN),
            closes_lost: by_role(stat::CLOSE_DROPPED),
            seeded: sum(stat::SEEDED),
            closes_spilled: sum(stat::CLOSE_SPILLED),
            states_skipped: sum(stat::STATE_SKIPPED),
        }
    }
}

/// The spilled close records: the queue of their headers, the socket table that holds them,
/// and the next header, read ahead.
struct Spilled {
    queue: Queue<MapData, EventHeader>,
    /// The reader's own handle on the socket table, to take spilled records out.
    sockets: SocketTable,
    head: Option<EventHeader>,
    /// Generations taken ahead of their place in the queue ([`Spilled::take`]), whose headers
    /// are still to come.
    taken: HashSet<u64>,
}

impl Spilled {
    /// Reads the next header if none is waiting; whether one is.
    fn refill(&mut self) -> bool {
        if self.head.is_none() {
            // Empty (or, on a failing system call, nothing to be done until the next drain).
            self.head = self.queue.pop(0).ok();
        }
        self.head.is_some()
    }

    /// Hands the records that closed before `until` (ns) to `feed`, oldest first, each as the
    /// close event it would have been (the table's copy removed), until `deadline` (ns, on the
    /// same clock). False if it stopped for time.
    fn hand_over(
        &mut self,
        until: u64,
        deadline: u64,
        stats: &mut ReaderStats,
        feed: &mut impl Feed,
    ) -> bool {
        while let Some(hdr) = self.head.filter(|hdr| hdr.ts_ns < until) {
            if deadline != u64::MAX && monotonic_now_ns() > deadline {
                return false;
            }
            self.head = None;
            if !self.taken.remove(&hdr.start_ns) {
                match self.sockets.get(&hdr.start_ns, 0) {
                    Ok(record) => self.handle(hdr, record, stats, feed),
                    Err(_) => {
                        stats.spills_read += 1;
                        if hdr._pad & spill_tag::ANNOUNCED != 0 {
                            stats.spills_evicted += 1;
                        } else {
                            let role = spill_tag::role(hdr._pad);
                            let index = ROLE_ORDER.iter().position(|&r| r == role);
                            stats.spills_unseen[index.unwrap_or(2)] += 1;
                        }
                    }
                }
            }
            self.refill();
        }
        true
    }

    /// Hands the spilled close of generation `start_ns` on `sock` to `feed` now, if there is
    /// one: an event that supersedes that connection is next.
    fn take(&mut self, sock: u64, start_ns: u64, stats: &mut ReaderStats, feed: &mut impl Feed) {
        let Ok(record) = self.sockets.get(&start_ns, 0) else {
            return;
        };
        let hdr = match self.head.filter(|hdr| hdr.start_ns == start_ns) {
            Some(hdr) => {
                self.head = None;
                self.refill();
                hdr
            }
            None => {
                self.taken.insert(start_ns);
                EventHeader {
                    kind: kind::CLOSE,
                    _pad: 0,
                    ts_ns: record.close_ns.max(start_ns),
                    sock,
                    start_ns,
                }
            }
        };
        self.handle(hdr, record, stats, feed);
    }

    /// Hands one spilled record over as the close event it would have been, and removes the
    /// table's copy (gone already only if the table evicted it meanwhile: the copy read is the
    /// record).
    fn handle(
        &mut self,
        mut hdr: EventHeader,
        record: SockRecord,
        stats: &mut ReaderStats,
        feed: &mut impl Feed,
    ) {
        hdr._pad = 0;
        let _ = self.sockets.remove(&hdr.start_ns);
        stats.spills_read += 1;
        let close = CloseEvent { hdr, record };
        let event = KernelEvent::Close(&close);
        stats.events[event.kind_index()] += 1;
        feed.handle(&event);
    }
}

/// Two handles on the socket table: the map itself, and one on a duplicate of its file
/// descriptor.
fn take_twice(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<(SocketTable, SocketTable), MapError> {
    let map: Map = take_map(ebpf, name)?;
    let duplicate = match &map {
        Map::HashMap(data) | Map::LruHashMap(data) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| MapError::new(name, err))
            .and_then(|fd| MapData::from_fd(fd).map_err(|err| MapError::new(name, err)))?,
        _ => return Err(MapError::new(name, "not a hash map")),
    };
    let second = match map {
        Map::HashMap(_) => Map::HashMap(duplicate),
        _ => Map::LruHashMap(duplicate),
    };
    let first = HashMap::try_from(map).map_err(|err| MapError::new(name, err))?;
    let second = HashMap::try_from(second).map_err(|err| MapError::new(name, err))?;
    Ok((first, second))
}
