//! The Tracker: a pure state machine from kernel events to connection and exchange records.
//!
//! It knows nothing of aya, tokio or output formats: [`Tracker::handle`] takes one decoded
//! event and appends whatever records it completes. Times are the kernel's monotonic
//! nanoseconds; the caller supplies "now" when it needs one ([`Tracker::flush`],
//! [`Tracker::sweep_with`]).
//!
//! # Connection states
//!
//! A connection is keyed by socket address *and* generation (`start_ns`): socket memory is
//! reused within milliseconds.
//!
//! - *connecting*: a `Connect` event, sent when a client's first SYN is retransmitted (a
//!   connect still in `SYN_SENT` after the first SYN timeout; one that completes or fails
//!   sooner sends none and starts with its `Open` or `Close`).
//! - *live*: an `Open` event arrived (at `ESTABLISHED`; for a socket that was already open, at
//!   start-up when the kernel seeds it, with the role its listening port gives it, or at first
//!   sighting, with role `unknown`; both are marked partial). The kernel ends and folds
//!   exchanges itself; `Burst` events bring them while they are wanted ([`exchange`]);
//!   `State` events track teardown.
//! - *closed*: the `Close` event carries the whole final record (the last exchange and the
//!   kernel's summary of the others), so a connection is reported even if its earlier events
//!   were lost.
//! - *lost*: an event for a new generation on a socket whose previous generation never closed
//!   means the kernel evicted that record or its close was dropped; the old connection is
//!   reported partial (`lost`) and counted.
//!
//! Events for connections the tracker does not know are counted as unmatched, never guessed.
//! The tracker also keeps the live counts behind the gauges (open connections by role and
//! state, bytes by role and direction) and runs the hang detector's sweep ([`hang`]).
//! Name resolutions and TLS handshakes are tied to connections in [`libcalls`]. What the
//! tracker keeps of one live connection ([`Conn`]), and how its record is built, is in `conn`.

mod close;
mod conn;
mod exchange;
mod hang;
mod libcalls;
mod listeners;
mod stalls;
mod table;
#[cfg(test)]
mod tests;

use std::{num::NonZeroU64, sync::Arc};

use tcpobs_common::{
    CloseEvent, FLAG_PARTIAL, OpenEvent, SockRecord, StateEvent, deferral, direction,
};

#[cfg(test)]
pub(crate) use self::conn::LiveView;
#[cfg(test)]
pub(crate) use self::stalls::StallView;
/// A cheap hasher for integer keys, shared with the container metadata cache.
pub(crate) use self::table::SockHasher;
pub(crate) use self::{
    conn::Conn,
    hang::{KernelView, StuckThresholds, SweepReport},
    libcalls::DnsCache,
    listeners::{ListenDrop, ListenerReport, ListenerWatch, Listening},
    stalls::{StallViews, classify},
};
use self::{libcalls::RecentCloses, table::Table};
use crate::{
    kernel::decode::KernelEvent,
    model::{Addrs, OpenedRecord, PartialReason, Record, Role},
};

/// Data-loss counters kept by the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Events for a connection the tracker never saw open.
    pub unmatched: u64,
    /// Connections abandoned because a newer one appeared on the same socket before they were
    /// seen to close (kernel record evicted, or close event dropped).
    pub lost: u64,
    /// Of `lost`: connections whose socket closed without the kernel programs seeing it (their
    /// runs skipped), found by the stall check reading the socket gone.
    pub closes_unseen: u64,
    /// Resolutions dropped from the DNS correlation cache before their window ended.
    pub dns_evicted: u64,
}

/// Index of a role in the per-role counters.
pub(crate) fn role_index(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Server => 1,
        Role::Unknown => 2,
    }
}

/// Counters the gauges and byte counters read at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LiveCounts {
    /// Live connections by [`role_index`] and TCP state.
    pub open: [[u64; 16]; 3],
    /// Payload bytes by [`role_index`]: `[sent, received]`. The kernel counts every completed
    /// burst (added here by the daemon as it reads the kernel's folds); the close adds the
    /// burst still in progress.
    pub bytes: [[u64; 2]; 3],
    /// Retransmitted segments of closed connections, by [`role_index`] (each connection's
    /// `retransmits`: the kernel's `total_retrans`).
    pub retransmits: [u64; 3],
}

impl LiveCounts {
    fn add(&mut self, role: Role, state: u8) {
        self.open[role_index(role)][usize::from(state & 15)] += 1;
    }

    fn remove(&mut self, role: Role, state: u8) {
        let slot = &mut self.open[role_index(role)][usize::from(state & 15)];
        *slot = slot.saturating_sub(1);
    }
}

/// Facts about the running kernel the records need, set once the programs are loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelFacts {
    /// The kernel's tick rate (jiffies per second), for its chrono counters; 0 if unknown.
    pub hz: u64,
    /// The probes family is attached: zero-window probes are counted.
    pub probes: bool,
}

/// Reads the kernel's record of a socket (the daemon's `SOCKETS` map), for the live view.
/// Cloned out of the tracker, so that the lookups (a system call each) are made without the
/// live table locked.
#[derive(Clone)]
pub(crate) struct KernelTable(Arc<dyn Fn(u64) -> Option<SockRecord> + Send + Sync>);

impl KernelTable {
    pub(crate) fn new(lookup: impl Fn(u64) -> Option<SockRecord> + Send + Sync + 'static) -> Self {
        Self(Arc::new(lookup))
    }

    pub(crate) fn get(&self, sock: u64) -> Option<SockRecord> {
        (self.0)(sock)
    }
}

impl std::fmt::Debug for KernelTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelTable")
    }
}

/// Live connections and the rules that turn events into records.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    conns: Table,
    next_id: u64,
    stats: TrackerStats,
    counts: LiveCounts,
    sweeps: u64,
    /// Recent resolutions, for tying them to connections.
    dns: DnsCache,
    /// Recently closed connections, for handshakes that end after their connection.
    recent_closes: RecentCloses,
    facts: KernelFacts,
    /// Listening sockets and their accept queues.
    listeners: ListenerWatch,
    /// The kernel's socket table, once loaded (for [`Tracker::live_view`]).
    kernel: Option<KernelTable>,
    /// Sweeps left that audit every live connection ([`Tracker::audit_all`]), each one in
    /// `audit_stride` of them.
    audit_all: u64,
    audit_stride: u64,
    /// Already-flagged stuck connections are read again once per this many sweeps (0 or 1:
    /// every sweep); set by each sweep from how many there were.
    recheck_stride: u64,
    /// The reader has events left to read (its last drain stopped for time): a connection
    /// missing from the kernel's table may have its close among them, so the audit does not
    /// count the miss ([`Tracker::set_reader_behind`]).
    reader_behind: bool,
}

impl Tracker {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn stats(&self) -> TrackerStats {
        TrackerStats {
            dns_evicted: self.dns.evicted(),
            ..self.stats
        }
    }

    pub(crate) fn counts(&self) -> &LiveCounts {
        &self.counts
    }

    /// Where [`Tracker::live_view`] reads the kernel's records (`None`: nowhere).
    pub(crate) fn set_kernel_table(&mut self, table: Option<KernelTable>) {
        self.kernel = table;
    }

    /// The live view of the connection on socket `sock`: one lookup in the kernel's table.
    #[cfg(test)]
    pub(crate) fn live_view(&self, sock: u64, conn: &Conn) -> LiveView {
        let rec = self.kernel.as_ref().and_then(|table| table.get(sock));
        conn.live_view(rec.as_ref())
    }

    /// Where the live views read the kernel's records, to read them with the table unlocked.
    pub(crate) fn kernel_table(&self) -> Option<KernelTable> {
        self.kernel.clone()
    }

    /// What the records need to know of the kernel (once loaded).
    pub(crate) fn set_kernel_facts(&mut self, facts: KernelFacts) {
        self.facts = facts;
    }

    /// Takes this sweep's readings of the listening sockets (see `listeners`): the accept
    /// queues, the drops since the last sweep, and listeners stuck with a full queue for longer
    /// than `threshold_ns` (one anomaly per episode, to `out`).
    pub(crate) fn observe_listeners(
        &mut self,
        now: u64,
        threshold_ns: u64,
        listeners: &[Listening],
        out: &mut Vec<Record>,
    ) -> ListenerReport {
        self.listeners.observe(now, threshold_ns, listeners, out)
    }

    /// Adds payload bytes the kernel counted (by [`role_index`], `[sent, received]`).
    pub(crate) fn add_kernel_bytes(&mut self, bytes: &[[u64; 2]; 3]) {
        for (total, more) in self.counts.bytes.iter_mut().zip(bytes) {
            total[0] = total[0].saturating_add(more[0]);
            total[1] = total[1].saturating_add(more[1]);
        }
    }

    /// Live connections, in no particular order.
    #[cfg(test)]
    pub(crate) fn live(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    /// The live connections with their sockets (the kernel table's keys).
    pub(crate) fn live_socks(&self) -> impl Iterator<Item = (u64, &Conn)> {
        self.conns.iter()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert(&mut self, sock: u64, conn: Conn) {
        self.counts.add(conn.role, conn.state);
        self.conns.insert(sock, conn);
    }

    fn remove(&mut self, sock: u64) -> Option<Conn> {
        let conn = self.conns.remove(sock)?;
        self.counts.remove(conn.role, conn.state);
        Some(conn)
    }

    /// Applies one kernel event, appending the records it completes to `out`.
    pub(crate) fn handle(&mut self, event: &KernelEvent, out: &mut Vec<Record>) {
        match event {
            KernelEvent::Connect(connect) => self.on_connect(connect, out),
            KernelEvent::Open(open) => self.on_open(open, out),
            KernelEvent::Burst(exchange) => {
                let folded = exchange.folded != 0;
                let Some(conn) = self.matching(exchange.hdr.sock, exchange.hdr.start_ns) else {
                    return;
                };
                conn.update_process(&exchange.task);
                conn.last_activity_ns = conn.last_activity_ns.max(exchange.hdr.ts_ns);
                conn.unstick(exchange.hdr.ts_ns, out);
                conn.on_exchange_event(exchange, folded, out);
            }
            KernelEvent::State(state) => self.on_state(state, out),
            KernelEvent::Close(close) => self.on_close(close, out),
            KernelEvent::ShortClose(close) => self.on_close(&close.widen(), out),
            KernelEvent::Dns(dns) => self.on_dns(dns, out),
            KernelEvent::Tls(tls) => self.on_tls(tls, out),
        }
    }

    /// The generation (`start_ns`) of the connection live on `event`'s socket, if `event`
    /// starts or ends another one: the live one's close may be among the spilled records the
    /// reader has yet to take (`kernel::reader`), and must come first.
    pub(crate) fn superseded(&self, event: &KernelEvent) -> Option<u64> {
        let hdr = match event {
            KernelEvent::Connect(open) | KernelEvent::Open(open) => &open.hdr,
            KernelEvent::Close(close) => &close.hdr,
            KernelEvent::ShortClose(close) => &close.hdr,
            _ => return None,
        };
        self.conns
            .get(hdr.sock)
            .map(|conn| conn.start_ns)
            .filter(|&start_ns| start_ns < hdr.start_ns)
    }

    /// The live connection for this socket and generation; counts a miss as unmatched.
    fn matching(&mut self, sock: u64, start_ns: u64) -> Option<&mut Conn> {
        match self.conns.get_mut(sock) {
            Some(conn) if conn.start_ns == start_ns => Some(conn),
            _ => {
                self.stats.unmatched += 1;
                None
            }
        }
    }

    /// Reports a connection that never closed as lost.
    fn abandon(&mut self, sock: u64, out: &mut Vec<Record>) {
        if let Some(conn) = self.remove(sock) {
            self.stats.lost += 1;
            let now = conn.last_activity_ns;
            conn.unfinished(PartialReason::Lost, now, None, out);
        }
    }

    /// Makes room for a new generation on `sock`; false if this generation is already known.
    fn replace(&mut self, sock: u64, start_ns: u64, out: &mut Vec<Record>) -> bool {
        if self
            .conns
            .get(sock)
            .is_some_and(|conn| conn.start_ns == start_ns)
        {
            return false;
        }
        self.abandon(sock, out);
        true
    }

    fn on_connect(&mut self, connect: &OpenEvent, out: &mut Vec<Record>) {
        let sock = connect.hdr.sock;
        if self.replace(sock, connect.hdr.start_ns, out) {
            let id = self.next_id();
            let mut conn = Conn::from_event(id, connect);
            conn.link_dns(&self.dns);
            self.insert(sock, conn);
        }
    }

    fn on_open(&mut self, open: &OpenEvent, out: &mut Vec<Record>) {
        let sock = open.hdr.sock;
        if open.deferred != 0 && self.stood_for(sock, open.hdr.start_ns) {
            return;
        }
        if self.replace(sock, open.hdr.start_ns, out) {
            let id = self.next_id();
            self.insert(sock, Conn::from_event(id, open));
        } else if let Some(conn) = self.conns.get(sock) {
            // Established after a connect: the local port is known now. Or adopted with its
            // role unknown and then seeded at start-up: the role is known now.
            let (old_role, state) = (conn.role, conn.state);
            let role = match old_role {
                Role::Unknown => Role::from_kernel(open.role),
                known => known,
            };
            self.counts.remove(old_role, state);
            self.counts.add(role, open.state);
            let conn = self.conns.get_mut(sock).expect("checked above");
            conn.role = role;
            conn.addrs = Addrs::from_kernel(&open.endpoints);
            conn.update_process(&open.task);
            conn.enter(open.state, open.hdr.ts_ns);
            conn.last_activity_ns = open.hdr.ts_ns;
            conn.unstick(open.hdr.ts_ns, out);
        }
        let conn = self.conns.get_mut(sock).expect("inserted or known");
        conn.link_dns(&self.dns);
        if open.flags & FLAG_PARTIAL == 0 {
            Self::established(conn, open.hdr.ts_ns, out);
        }
    }

    /// Whether a deferred open (`OpenEvent::deferred`) comes too late to count: its connection
    /// is known (another copy of the open came first), or closed recently (its close, read
    /// first, stood for it), or a newer connection has the socket (it closed, its close read
    /// first, longer ago than the recent closes go back).
    fn stood_for(&self, sock: u64, start_ns: u64) -> bool {
        self.conns
            .get(sock)
            .is_some_and(|conn| conn.start_ns >= start_ns)
            || self.recent_closes.contains(sock, start_ns)
    }

    /// The connection was established at `ts_ns`: its open is reported.
    fn established(conn: &mut Conn, ts_ns: u64, out: &mut Vec<Record>) {
        conn.established_ns = NonZeroU64::new(ts_ns);
        out.push(Record::Opened(OpenedRecord {
            id: conn.id,
            role: conn.role,
            addrs: conn.addrs,
            process: conn.process(),
            connect_ns: ts_ns.saturating_sub(conn.start_ns),
        }));
    }

    fn on_state(&mut self, state: &StateEvent, out: &mut Vec<Record>) {
        let Some(conn) = self.matching(state.hdr.sock, state.hdr.start_ns) else {
            return;
        };
        let (role, old) = (conn.role, conn.state);
        conn.enter(state.new_state, state.hdr.ts_ns);
        conn.last_activity_ns = conn.last_activity_ns.max(state.hdr.ts_ns);
        // Every way of being stuck belongs to one state: leaving the state ends the episode.
        conn.unstick(state.hdr.ts_ns, out);
        self.counts.remove(role, old);
        self.counts.add(role, state.new_state);
    }

    fn on_close(&mut self, event: &CloseEvent, out: &mut Vec<Record>) {
        let sock = event.hdr.sock;
        let conn = match self.remove(sock) {
            Some(conn) if conn.start_ns == event.hdr.start_ns => conn,
            other => {
                if let Some(other) = other {
                    let older = other.start_ns < event.hdr.start_ns;
                    self.insert(sock, other);
                    // A close of an older generation (spilled, and read after the newer one's
                    // open) leaves the live one alone.
                    if older {
                        self.abandon(sock, out);
                    }
                }
                let id = self.next_id();
                let mut conn = if event.record.open_deferred == deferral::PENDING {
                    // Closed while its open was deferred: the close stands for the open.
                    let open = OpenEvent::stood_for_by(event);
                    let mut conn = Conn::from_event(id, &open);
                    Self::established(&mut conn, open.hdr.ts_ns, out);
                    conn
                } else {
                    let conn = Conn::from_close(id, event);
                    if conn.partial == Some(PartialReason::MissedOpen) {
                        self.stats.unmatched += 1;
                    }
                    conn
                };
                conn.link_dns(&self.dns);
                conn
            }
        };
        let rec = &event.record;
        let index = role_index(conn.role);
        // The kernel counted every completed burst; the one in progress is the close's.
        match rec.burst.dir {
            direction::OUT => {
                let sent = &mut self.counts.bytes[index][0];
                *sent = sent.saturating_add(rec.burst.bytes);
            }
            direction::IN => {
                let received = &mut self.counts.bytes[index][1];
                *received = received.saturating_add(rec.burst.bytes);
            }
            _ => {}
        }
        self.counts.retransmits[index] += u64::from(close::retransmits_of(rec));
        self.recent_closes.remember(sock, &conn);
        conn.closed(rec, &self.facts, out);
    }

    /// Reports every live connection as partial (tcpobs is stopping) and forgets them.
    /// `lookup` reads the kernel's record of a socket: its exchanges and byte totals complete
    /// what the events said so far.
    pub(crate) fn flush(
        &mut self,
        now_ns: u64,
        mut lookup: impl FnMut(u64) -> Option<SockRecord>,
        out: &mut Vec<Record>,
    ) {
        let mut socks: Vec<(u64, u64)> = self.conns.iter().map(|(s, c)| (c.id, s)).collect();
        socks.sort_unstable();
        for (_, sock) in socks {
            let Some(conn) = self.remove(sock) else {
                continue;
            };
            let rec = lookup(sock).filter(|rec| rec.start_ns == conn.start_ns);
            conn.unfinished(PartialReason::Shutdown, now_ns, rec.as_ref(), out);
        }
    }
}
