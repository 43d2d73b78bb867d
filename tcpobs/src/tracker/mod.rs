//! The Tracker: a pure state machine from kernel events to connection and exchange records.
//!
//! It knows nothing of aya, tokio or output formats: [`Tracker::handle`] takes one decoded
//! event and appends whatever records it completes. Times are the kernel's monotonic
//! nanoseconds; the caller supplies "now" when it needs one ([`Tracker::flush`],
//! [`Tracker::sweep`]).
//!
//! # Connection states
//!
//! A connection is keyed by socket address *and* generation (`start_ns`): socket memory is
//! reused within milliseconds.
//!
//! - *connecting*: a `Connect` event (a client entered `SYN_SENT`).
//! - *live*: an `Open` event arrived (at `ESTABLISHED`, or at first sighting for a socket that
//!   was already open, which is marked partial with role `unknown`). `Burst` events build
//!   exchanges ([`exchange`]); `State` events track teardown.
//! - *closed*: the `Close` event carries the whole final record, so a connection is reported
//!   even if its earlier events were lost.
//! - *lost*: an event for a new generation on a socket whose previous generation never closed
//!   means the kernel evicted that record or its close was dropped; the old connection is
//!   reported partial (`lost`) and counted.
//!
//! Events for connections the tracker does not know are counted as unmatched, never guessed.
//! The tracker also keeps the live counts behind the gauges (open connections by role and
//! state, bytes by role and direction) and runs the hang detector's sweep ([`hang`]).
//! Name resolutions and TLS handshakes are tied to connections in [`phases`].

mod close;
mod exchange;
mod hang;
mod phases;
mod table;
#[cfg(test)]
mod tests;

use std::num::NonZeroU64;

use tcpobs_common::{
    Burst, CloseEvent, FLAG_PARTIAL, OpenEvent, SockRecord, StateEvent, Task, direction, tcp_state,
};

/// A cheap hasher for integer keys, shared with the container metadata cache.
pub(crate) use self::table::SockHasher;
use self::{
    close::{close_of, connect_failure_of},
    exchange::{ExchangeEnd, Pending},
    table::Table,
};
pub use self::{
    hang::{KernelView, StuckThresholds, SweepReport},
    phases::{DNS_WINDOW_NS, DnsCache, dns_record},
};
use crate::{
    decode::KernelEvent,
    model::{
        Addrs, Comm, ConnPhases, ConnectionRecord, OpenedRecord, PartialReason, Phase, PhaseSet,
        Process, Record, Role, TcpCounters,
    },
};

/// Data-loss counters kept by the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Events for a connection the tracker never saw open.
    pub unmatched: u64,
    /// Connections abandoned because a newer one appeared on the same socket before they were
    /// seen to close (kernel record evicted, or close event dropped).
    pub lost: u64,
    /// Resolutions dropped from the DNS correlation cache before their window ended.
    pub dns_evicted: u64,
}

/// Index of a role in the per-role counters.
pub fn role_index(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Server => 1,
        Role::Unknown => 2,
    }
}

/// Counters the gauges and byte counters read at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Live connections by [`role_index`] and TCP state.
    pub open: [[u64; 16]; 3],
    /// Payload bytes by [`role_index`]: `[sent, received]`.
    pub bytes: [[u64; 2]; 3],
    /// Retransmitted segments of closed connections, by [`role_index`].
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

/// A live connection.
#[derive(Clone, Debug)]
pub struct Conn {
    id: u64,
    /// Generation: the kernel record's `start_ns`.
    start_ns: u64,
    role: Role,
    partial: Option<PartialReason>,
    addrs: Addrs,
    /// The owning process, as loose fields (a `Process`, or an `Option` of one, would pad):
    /// pid 0 while unknown.
    pid: u32,
    comm: Comm,
    cgroup: u64,
    /// (`NonZeroU64`s keep the table's per-connection footprint down: `None` costs no tag.)
    established_ns: Option<NonZeroU64>,
    state: u8,
    /// When the connection entered `state` (ns).
    state_since_ns: u64,
    exchanges: u32,
    pending: Pending,
    /// Resolution, TLS handshake and earlier exchanges, for the timeline; allocated only for
    /// connections that have one.
    phases: Option<Box<ConnPhases>>,
    /// Bytes seen in bursts so far.
    bytes_sent: u64,
    bytes_received: u64,
    /// Data has moved (from bursts, or the kernel's record for a burst in progress).
    saw_data: bool,
    /// Last data (or lifecycle event) known to the tracker (ns).
    last_activity_ns: u64,
    /// Longest time to first byte and idle gap so far (a 0 ns value counts as none).
    max_response_begin_ns: Option<NonZeroU64>,
    max_idle_ns: Option<NonZeroU64>,
    /// Phases already reported by the hang detector.
    flagged: PhaseSet,
    /// The stuck episode in progress: phase, and when it began (two fields rather than an
    /// `Option` of a pair, which would pad the phase to 8 bytes).
    stuck_phase: Option<Phase>,
    stuck_since_ns: u64,
    /// Audits in a row that found no kernel record for this connection.
    missing: u8,
}

impl Conn {
    fn new(id: u64, start_ns: u64, role: Role, partial: bool) -> Self {
        Self {
            id,
            start_ns,
            role,
            partial: partial.then_some(PartialReason::AlreadyOpen),
            addrs: Addrs::new(([0, 0, 0, 0], 0).into(), ([0, 0, 0, 0], 0).into()),
            pid: 0,
            comm: Comm::default(),
            cgroup: 0,
            established_ns: None,
            state: tcp_state::ESTABLISHED,
            state_since_ns: start_ns,
            exchanges: 0,
            pending: Pending::default(),
            phases: None,
            bytes_sent: 0,
            bytes_received: 0,
            saw_data: false,
            last_activity_ns: start_ns,
            max_response_begin_ns: None,
            max_idle_ns: None,
            flagged: PhaseSet::default(),
            stuck_phase: None,
            stuck_since_ns: 0,
            missing: 0,
        }
    }

    fn from_event(id: u64, event: &OpenEvent) -> Self {
        let partial = event.flags & FLAG_PARTIAL != 0;
        let mut conn = Self::new(
            id,
            event.hdr.start_ns,
            Role::from_kernel(event.role),
            partial,
        );
        conn.addrs = Addrs::from_kernel(&event.endpoints);
        conn.set_process(Process::from_kernel(&event.task));
        conn.state = event.state;
        conn.state_since_ns = event.hdr.ts_ns;
        conn.last_activity_ns = event.hdr.ts_ns;
        conn
    }

    /// A connection known only from its close: a connect failure, or one whose open was lost.
    fn from_close(id: u64, event: &CloseEvent) -> Self {
        let rec = &event.record;
        let mut conn = Self::new(
            id,
            event.hdr.start_ns,
            Role::from_kernel(rec.role),
            rec.flags & FLAG_PARTIAL != 0,
        );
        if conn.partial.is_none() && rec.established_ns != 0 {
            conn.partial = Some(PartialReason::MissedOpen);
        }
        conn.addrs = Addrs::from_kernel(&rec.endpoints);
        conn.set_process(Process::from_kernel(&rec.task));
        conn.established_ns = NonZeroU64::new(rec.established_ns);
        conn.state = rec.final_state;
        conn
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    pub fn process(&self) -> Option<Process> {
        (self.pid != 0).then_some(Process {
            pid: self.pid,
            comm: self.comm,
            cgroup: self.cgroup,
        })
    }

    pub fn state(&self) -> u8 {
        self.state
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    pub fn partial(&self) -> bool {
        self.partial.is_some()
    }

    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_sent, self.bytes_received)
    }

    pub fn last_activity_ns(&self) -> u64 {
        self.last_activity_ns
    }

    /// Phases the hang detector has flagged.
    pub fn flagged(&self) -> PhaseSet {
        self.flagged
    }

    /// Applies one completed burst: exchanges, bytes, activity. Returns the direction's slot
    /// (0 sent, 1 received) and the bytes, for the counters.
    fn take_burst(&mut self, burst: &Burst, out: &mut Vec<Record>) -> Option<(usize, u64)> {
        let slot = match burst.dir {
            direction::OUT => 0,
            direction::IN => 1,
            _ => return None,
        };
        self.on_burst(burst, out);
        if slot == 0 {
            self.bytes_sent += burst.bytes;
        } else {
            self.bytes_received += burst.bytes;
        }
        self.saw_data = true;
        self.last_activity_ns = self.last_activity_ns.max(burst.last_ns);
        Some((slot, burst.bytes))
    }

    /// Applies the bursts a kernel record still holds: the held one, then the one in progress.
    fn take_pending(&mut self, rec: &SockRecord, out: &mut Vec<Record>) {
        for burst in [&rec.held, &rec.burst] {
            self.take_burst(burst, out);
        }
    }

    /// Ends the stuck episode in progress, if any (the connection moved on).
    fn unstick(&mut self, now: u64, out: &mut Vec<Record>) {
        if let Some((phase, since)) = self.stuck() {
            self.stuck_phase = None;
            out.push(Record::Unstuck(phase, now.saturating_sub(since)));
        }
    }

    fn set_process(&mut self, process: Option<Process>) {
        if let Some(process) = process {
            (self.pid, self.comm, self.cgroup) = (process.pid, process.comm, process.cgroup);
        }
    }

    fn update_process(&mut self, task: &Task) {
        if self.pid == 0 {
            self.set_process(Process::from_kernel(task));
        }
    }

    fn established_ns(&self) -> Option<u64> {
        self.established_ns.map(NonZeroU64::get)
    }

    fn connect_ns(&self) -> Option<u64> {
        match self.partial {
            None => self
                .established_ns()
                .map(|at| at.saturating_sub(self.start_ns)),
            Some(_) => None,
        }
    }

    /// The stuck episode in progress: phase and when it began.
    fn stuck(&self) -> Option<(Phase, u64)> {
        self.stuck_phase.map(|phase| (phase, self.stuck_since_ns))
    }

    /// The stuck episode in progress at `end_ns`, as (phase, duration).
    fn stuck_at(&self, end_ns: u64) -> Option<(Phase, u64)> {
        self.stuck()
            .map(|(phase, since)| (phase, end_ns.saturating_sub(since)))
    }

    /// The connection record; takes the phases along.
    fn record(&mut self, partial: Option<PartialReason>, lifetime_ns: u64) -> ConnectionRecord {
        ConnectionRecord {
            id: self.id,
            role: self.role,
            partial,
            addrs: self.addrs,
            process: self.process(),
            start_ns: self.start_ns,
            established_ns: self.established_ns(),
            connect_ns: self.connect_ns(),
            connect_failure: None,
            lifetime_ns,
            exchanges: self.exchanges,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            retransmits: 0,
            close: None,
            tcp: None,
            max_response_begin_ns: self.max_response_begin_ns.map(NonZeroU64::get),
            max_idle_ns: self.max_idle_ns.map(NonZeroU64::get),
            stuck: self.flagged,
            stuck_at_end: self.stuck_at(self.start_ns + lifetime_ns),
            phases: self.phases.take(),
            last_exchange: None,
        }
    }

    /// The record of a connection that is not closing normally.
    /// `retransmits` comes from the kernel's record, if it was read.
    fn unfinished(
        mut self,
        reason: PartialReason,
        now: u64,
        retransmits: u32,
        out: &mut Vec<Record>,
    ) {
        let last = self.finish_exchange(ExchangeEnd::Flushed { now }, out);
        let mut record = self.record(Some(reason), now.saturating_sub(self.start_ns));
        record.retransmits = retransmits;
        record.last_exchange = last;
        out.push(Record::Connection(record));
    }

    /// The final record of a closed connection, after its last exchange.
    fn closed(mut self, rec: &SockRecord, out: &mut Vec<Record>) {
        self.take_pending(rec, out);
        // The kernel's record has the final word on addresses: a connect announced before its
        // local port was bound learns it here.
        if rec.endpoints.lport != 0 || rec.endpoints.rport != 0 {
            self.addrs = Addrs::from_kernel(&rec.endpoints);
        }
        let role = Role::from_kernel(rec.role);
        if role != Role::Unknown {
            self.role = role;
        }
        if let Some(process) = Process::from_kernel(&rec.task) {
            self.set_process(Some(process));
        }
        let close = close_of(rec, self.role);
        let last = self.finish_exchange(
            ExchangeEnd::Closed {
                idle_end: (rec.teardown_ns != 0).then_some(rec.teardown_ns),
                session_end: rec.close_ns,
                originator: close.originator,
            },
            out,
        );
        self.settle_tls(out);
        let mut record = self.record(self.partial, rec.close_ns.saturating_sub(self.start_ns));
        record.last_exchange = last;
        record.connect_failure = connect_failure_of(rec);
        record.bytes_sent = rec.bytes_sent;
        record.bytes_received = rec.bytes_recv;
        record.retransmits = rec.retransmits;
        record.tcp = TcpCounters::from_kernel(&rec.tcp);
        record.close = Some(close);
        out.push(Record::Connection(record));
    }
}

/// Live connections and the rules that turn events into records.
#[derive(Debug, Default)]
pub struct Tracker {
    conns: Table,
    next_id: u64,
    stats: TrackerStats,
    counts: LiveCounts,
    sweeps: u64,
    /// Recent resolutions, for tying them to connections.
    dns: DnsCache,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            dns_evicted: self.dns.evicted(),
            ..self.stats
        }
    }

    pub fn counts(&self) -> &LiveCounts {
        &self.counts
    }

    /// Live connections, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
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
    pub fn handle(&mut self, event: &KernelEvent, out: &mut Vec<Record>) {
        match event {
            KernelEvent::Connect(connect) => self.on_connect(connect, out),
            KernelEvent::Open(open) => self.on_open(open, out),
            KernelEvent::Burst(bursts) => {
                let Some(conn) = self.matching(bursts.hdr.sock, bursts.hdr.start_ns) else {
                    return;
                };
                conn.update_process(&bursts.task);
                conn.last_activity_ns = conn.last_activity_ns.max(bursts.hdr.ts_ns);
                conn.unstick(bursts.hdr.ts_ns, out);
                let role = role_index(conn.role);
                let mut moved = [0u64; 2];
                for burst in [&bursts.first, &bursts.second] {
                    if let Some((slot, bytes)) = conn.take_burst(burst, out) {
                        moved[slot] += bytes;
                    }
                }
                for (total, bytes) in self.counts.bytes[role].iter_mut().zip(moved) {
                    *total += bytes;
                }
            }
            KernelEvent::State(state) => self.on_state(state, out),
            KernelEvent::Close(close) => self.on_close(close, out),
            KernelEvent::Dns(dns) => self.on_dns(dns, out),
            KernelEvent::Tls(tls) => self.on_tls(tls, out),
        }
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
            conn.unfinished(PartialReason::Lost, now, 0, out);
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
        if self.replace(sock, open.hdr.start_ns, out) {
            let id = self.next_id();
            self.insert(sock, Conn::from_event(id, open));
        } else if let Some(conn) = self.conns.get(sock) {
            // Established after a connect: the local port is known now.
            let (role, state) = (conn.role, conn.state);
            self.counts.remove(role, state);
            self.counts.add(role, open.state);
            let conn = self.conns.get_mut(sock).expect("checked above");
            conn.addrs = Addrs::from_kernel(&open.endpoints);
            conn.update_process(&open.task);
            conn.state = open.state;
            conn.state_since_ns = open.hdr.ts_ns;
            conn.last_activity_ns = open.hdr.ts_ns;
            conn.unstick(open.hdr.ts_ns, out);
        }
        let conn = self.conns.get_mut(sock).expect("inserted or known");
        conn.link_dns(&self.dns);
        if open.flags & FLAG_PARTIAL == 0 {
            conn.established_ns = NonZeroU64::new(open.hdr.ts_ns);
            out.push(Record::Opened(OpenedRecord {
                id: conn.id,
                role: conn.role,
                addrs: conn.addrs,
                process: conn.process(),
                connect_ns: open.hdr.ts_ns.saturating_sub(conn.start_ns),
            }));
        }
    }

    fn on_state(&mut self, state: &StateEvent, out: &mut Vec<Record>) {
        let Some(conn) = self.matching(state.hdr.sock, state.hdr.start_ns) else {
            return;
        };
        let (role, old) = (conn.role, conn.state);
        conn.state = state.new_state;
        conn.state_since_ns = state.hdr.ts_ns;
        conn.last_activity_ns = conn.last_activity_ns.max(state.hdr.ts_ns);
        // Every phase belongs to one state: leaving the state ends the episode.
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
                    self.insert(sock, other);
                    self.abandon(sock, out);
                }
                let id = self.next_id();
                let mut conn = Conn::from_close(id, event);
                if conn.partial == Some(PartialReason::MissedOpen) {
                    self.stats.unmatched += 1;
                }
                conn.link_dns(&self.dns);
                conn
            }
        };
        let role = conn.role;
        let (counted_sent, counted_received) = conn.bytes();
        let rec = &event.record;
        let index = role_index(role);
        self.counts.bytes[index][0] += rec.bytes_sent.saturating_sub(counted_sent);
        self.counts.bytes[index][1] += rec.bytes_recv.saturating_sub(counted_received);
        self.counts.retransmits[index] += u64::from(rec.retransmits);
        conn.closed(rec, out);
    }

    /// Reports every live connection as partial (tcpobs is stopping) and forgets them.
    /// `lookup` reads the kernel's record of a socket: the burst in progress and the byte
    /// totals there complete what the events said so far.
    pub fn flush(
        &mut self,
        now_ns: u64,
        mut lookup: impl FnMut(u64) -> Option<SockRecord>,
        out: &mut Vec<Record>,
    ) {
        let mut socks: Vec<(u64, u64)> = self.conns.iter().map(|(s, c)| (c.id, s)).collect();
        socks.sort_unstable();
        for (_, sock) in socks {
            let Some(mut conn) = self.remove(sock) else {
                continue;
            };
            let mut retransmits = 0;
            if let Some(rec) = lookup(sock).filter(|rec| rec.start_ns == conn.start_ns) {
                conn.take_pending(&rec, out);
                conn.bytes_sent = conn.bytes_sent.max(rec.bytes_sent);
                conn.bytes_received = conn.bytes_received.max(rec.bytes_recv);
                retransmits = rec.retransmits;
            }
            conn.unfinished(PartialReason::Shutdown, now_ns, retransmits, out);
        }
    }
}
