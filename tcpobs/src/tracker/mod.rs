//! The Tracker: a pure state machine from kernel events to connection and exchange records.
//!
//! It knows nothing of aya, tokio or output formats: [`Tracker::handle`] takes one decoded
//! event and appends whatever records it completes. Times are the kernel's monotonic
//! nanoseconds; the caller supplies "now" when it needs one ([`Tracker::flush`]).
//!
//! # Connection states
//!
//! A connection is keyed by socket address *and* generation (`start_ns`): socket memory is
//! reused within milliseconds.
//!
//! - *live*: an `Open` event arrived (at `ESTABLISHED`, or at first sighting for a socket that
//!   was already open, which is marked partial with role `unknown`). `Burst` events build
//!   exchanges ([`exchange`]); `State` events track teardown.
//! - *closed*: the `Close` event carries the whole final record, so a connection is reported
//!   even if its earlier events were lost. Connect failures have no `Open` at all.
//! - *lost*: an `Open` for a new generation on a socket whose previous generation never closed
//!   means the kernel evicted that record or its close was dropped; the old connection is
//!   reported partial (`lost`) and counted.
//!
//! Events for connections the tracker does not know are counted as unmatched, never guessed.

mod close;
mod exchange;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use tcpobs_common::{
    Burst, CloseEvent, FLAG_PARTIAL, OpenEvent, SockRecord, StateEvent, direction, tcp_state,
};

use self::{
    close::{close_of, connect_failure_of},
    exchange::{ExchangeEnd, Pending},
};
use crate::{
    decode::KernelEvent,
    model::{Addrs, ConnectionRecord, PartialReason, Process, Record, Role},
};

/// Data-loss counters kept by the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Events for a connection the tracker never saw open.
    pub unmatched: u64,
    /// Connections abandoned because a newer one appeared on the same socket before they were
    /// seen to close (kernel record evicted, or close event dropped).
    pub lost: u64,
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
    process: Option<Process>,
    established_ns: Option<u64>,
    state: u8,
    exchanges: u32,
    pending: Option<Pending>,
    bytes_sent: u64,
    bytes_received: u64,
    /// Last event seen for this connection (ns).
    last_event_ns: u64,
}

impl Conn {
    fn new(id: u64, start_ns: u64, role: Role, partial: bool) -> Self {
        Self {
            id,
            start_ns,
            role,
            partial: partial.then_some(PartialReason::AlreadyOpen),
            addrs: Addrs {
                local: ([0, 0, 0, 0], 0).into(),
                remote: ([0, 0, 0, 0], 0).into(),
            },
            process: None,
            established_ns: None,
            state: tcp_state::ESTABLISHED,
            exchanges: 0,
            pending: None,
            bytes_sent: 0,
            bytes_received: 0,
            last_event_ns: start_ns,
        }
    }

    fn from_open(id: u64, event: &OpenEvent) -> Self {
        let partial = event.flags & FLAG_PARTIAL != 0;
        let mut conn = Self::new(
            id,
            event.hdr.start_ns,
            Role::from_kernel(event.role),
            partial,
        );
        conn.addrs = Addrs::from_kernel(&event.endpoints);
        conn.process = Process::from_kernel(&event.task);
        conn.established_ns = (!partial).then_some(event.hdr.ts_ns);
        conn.last_event_ns = event.hdr.ts_ns;
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
        conn.established_ns = (rec.established_ns != 0).then_some(rec.established_ns);
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

    pub fn state(&self) -> u8 {
        self.state
    }

    pub fn last_event_ns(&self) -> u64 {
        self.last_event_ns
    }

    fn update_process(&mut self, task: &tcpobs_common::Task) {
        if self.process.is_none() {
            self.process = Process::from_kernel(task);
        }
    }

    fn apply_burst(&mut self, burst: &Burst, out: &mut Vec<Record>) {
        match burst.dir {
            direction::OUT => self.bytes_sent += burst.bytes,
            direction::IN => self.bytes_received += burst.bytes,
            _ => return,
        }
        self.last_event_ns = self.last_event_ns.max(burst.last_ns);
        self.on_burst(burst, out);
    }

    /// The record of a connection that is not closing normally.
    fn unfinished(mut self, reason: PartialReason, now: u64, out: &mut Vec<Record>) {
        self.finish_exchange(ExchangeEnd::Flushed { now }, out);
        let connect_ns = self.connect_ns();
        out.push(Record::Connection(ConnectionRecord {
            id: self.id,
            role: self.role,
            partial: Some(reason),
            addrs: self.addrs,
            process: self.process,
            start_ns: self.start_ns,
            established_ns: self.established_ns,
            connect_ns,
            connect_failure: None,
            lifetime_ns: now.saturating_sub(self.start_ns),
            exchanges: self.exchanges,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            retransmits: 0,
            close: None,
        }));
    }

    fn connect_ns(&self) -> Option<u64> {
        match self.partial {
            None => self
                .established_ns
                .map(|at| at.saturating_sub(self.start_ns)),
            Some(_) => None,
        }
    }

    /// The final record of a closed connection, after its last exchange.
    fn closed(mut self, rec: &SockRecord, out: &mut Vec<Record>) {
        if rec.burst.dir != direction::NONE {
            self.on_burst(&rec.burst, out);
        }
        let role = Role::from_kernel(rec.role);
        if role != Role::Unknown {
            self.role = role;
        }
        if let Some(process) = Process::from_kernel(&rec.task) {
            self.process = Some(process);
        }
        let close = close_of(rec, self.role);
        self.finish_exchange(
            ExchangeEnd::Closed {
                idle_end: (rec.teardown_ns != 0).then_some(rec.teardown_ns),
                session_end: rec.close_ns,
                originator: close.originator,
            },
            out,
        );
        out.push(Record::Connection(ConnectionRecord {
            connect_ns: self.connect_ns(),
            id: self.id,
            role: self.role,
            partial: self.partial,
            addrs: self.addrs,
            process: self.process,
            start_ns: self.start_ns,
            established_ns: self.established_ns,
            connect_failure: connect_failure_of(rec),
            lifetime_ns: rec.close_ns.saturating_sub(self.start_ns),
            exchanges: self.exchanges,
            bytes_sent: rec.bytes_sent,
            bytes_received: rec.bytes_recv,
            retransmits: rec.retransmits,
            close: Some(close),
        }));
    }
}

/// Live connections and the rules that turn events into records.
#[derive(Debug, Default)]
pub struct Tracker {
    conns: HashMap<u64, Conn>,
    next_id: u64,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Live connections, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Applies one kernel event, appending the records it completes to `out`.
    pub fn handle(&mut self, event: &KernelEvent, out: &mut Vec<Record>) {
        match event {
            KernelEvent::Open(open) => self.on_open(open, out),
            KernelEvent::Burst(burst) => {
                if let Some(conn) = self.matching(burst.hdr.sock, burst.hdr.start_ns) {
                    conn.update_process(&burst.task);
                    conn.apply_burst(&burst.burst, out);
                }
            }
            KernelEvent::State(state) => self.on_state(state),
            KernelEvent::Close(close) => self.on_close(close, out),
        }
    }

    /// The live connection for this socket and generation; counts a miss as unmatched.
    fn matching(&mut self, sock: u64, start_ns: u64) -> Option<&mut Conn> {
        match self.conns.get_mut(&sock) {
            Some(conn) if conn.start_ns == start_ns => Some(conn),
            _ => {
                self.stats.unmatched += 1;
                None
            }
        }
    }

    /// Reports a connection that never closed as lost.
    fn abandon(&mut self, sock: u64, out: &mut Vec<Record>) {
        if let Some(conn) = self.conns.remove(&sock) {
            self.stats.lost += 1;
            let now = conn.last_event_ns;
            conn.unfinished(PartialReason::Lost, now, out);
        }
    }

    fn on_open(&mut self, open: &OpenEvent, out: &mut Vec<Record>) {
        let sock = open.hdr.sock;
        if self
            .conns
            .get(&sock)
            .is_some_and(|conn| conn.start_ns == open.hdr.start_ns)
        {
            return;
        }
        self.abandon(sock, out);
        let id = self.next_id();
        self.conns.insert(sock, Conn::from_open(id, open));
    }

    fn on_state(&mut self, state: &StateEvent) {
        if let Some(conn) = self.matching(state.hdr.sock, state.hdr.start_ns) {
            conn.state = state.new_state;
            conn.last_event_ns = conn.last_event_ns.max(state.hdr.ts_ns);
        }
    }

    fn on_close(&mut self, event: &CloseEvent, out: &mut Vec<Record>) {
        let sock = event.hdr.sock;
        let conn = match self.conns.remove(&sock) {
            Some(conn) if conn.start_ns == event.hdr.start_ns => conn,
            other => {
                if let Some(other) = other {
                    self.conns.insert(sock, other);
                    self.abandon(sock, out);
                }
                let id = self.next_id();
                let conn = Conn::from_close(id, event);
                if conn.partial == Some(PartialReason::MissedOpen) {
                    self.stats.unmatched += 1;
                }
                conn
            }
        };
        conn.closed(&event.record, out);
    }

    /// Reports every live connection as partial (tcpobs is stopping) and forgets them.
    pub fn flush(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        let mut conns: Vec<Conn> = self.conns.drain().map(|(_, conn)| conn).collect();
        conns.sort_by_key(|conn| conn.id);
        for conn in conns {
            conn.unfinished(PartialReason::Shutdown, now_ns, out);
        }
    }
}
