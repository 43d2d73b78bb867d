//! A live connection: what the tracker keeps of one socket generation (role, addresses,
//! process, state, the exchange in progress, activity and stuck episodes), and how its record
//! is built when it closes or is given up.

use std::num::NonZeroU64;

use tcpobs_common::{CloseEvent, FLAG_PARTIAL, OpenEvent, SockRecord, Task, tcp_state};

use super::{
    KernelFacts,
    close::{close_of, connect_failure_of, diagnosis_of, retransmits_of},
    exchange::{ExchangeEnd, Pending, last_data_ns},
};
use crate::model::{
    Addrs, Comm, ConnectionRecord, Diagnosis, PartialReason, Process, Record, Role, Stuck,
    StuckSet, TcpCounters, TimelineSpans,
};

/// A live connection.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub(super) id: u64,
    /// Generation: the kernel record's `start_ns`.
    pub(super) start_ns: u64,
    pub(super) role: Role,
    pub(super) partial: Option<PartialReason>,
    pub(super) addrs: Addrs,
    /// The owning process, as loose fields (a `Process`, or an `Option` of one, would pad):
    /// pid 0 while unknown.
    pub(super) pid: u32,
    pub(super) comm: Comm,
    pub(super) cgroup: u64,
    /// (`NonZeroU64`s keep the table's per-connection footprint down: `None` costs no tag.)
    pub(super) established_ns: Option<NonZeroU64>,
    pub(super) state: u8,
    /// When the connection entered `state` (ns).
    pub(super) state_since_ns: u64,
    /// Exchanges known so far: from exchange events while they are sent, from the kernel's
    /// summary at the close.
    pub(super) exchanges: u32,
    /// Resolution, TLS handshake and earlier exchanges, for the timeline; allocated only for
    /// connections that have one.
    pub(super) spans: Option<Box<TimelineSpans>>,
    /// Bytes seen in exchange events so far (the kernel's record has them all).
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    /// Data has moved (from exchange events, or the kernel's record).
    pub(super) saw_data: bool,
    /// Last data (or lifecycle event) known to the tracker (ns).
    pub(super) last_activity_ns: u64,
    /// Ways of being stuck already reported by the hang detector.
    pub(super) flagged: StuckSet,
    /// The stuck episode in progress: how, and since when (two fields rather than an
    /// `Option` of a pair, which would pad the `Stuck` to 8 bytes).
    pub(super) stuck: Option<Stuck>,
    pub(super) stuck_since_ns: u64,
    /// Audits in a row that found no kernel record for this connection.
    pub(super) missing: u8,
    /// Readings in a row that found its kernel record outliving the socket
    /// ([`StallView::Gone`](super::stalls::StallView::Gone)).
    pub(super) gone: u8,
    /// The stall check's last word: [`STALL_IDLE`] when a sample found nothing in flight, so
    /// that it is not sampled again until it moves data.
    pub(super) stall_check: u8,
}

/// What the live table (`GET /connections`) shows of a connection's traffic: the tracker's
/// view brought up to date with the kernel's record, which has every byte and exchange so far
/// (the tracker hears of them from exchange events only while every exchange is wanted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveView {
    /// Exchanges so far, the one in progress included (what the connection event would say
    /// if it closed now).
    pub exchanges: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Last data (or lifecycle event) known (ns).
    pub last_activity_ns: u64,
    /// The TCP state (`tcp_state`): the kernel's record's, which knows the teardown states no
    /// event reports (`FIN_WAIT1`, `LAST_ACK`, `CLOSING`).
    pub state: u8,
}

/// `Conn::stall_check`: not sampled since it last moved data.
pub(super) const STALL_UNKNOWN: u8 = 0;
/// `Conn::stall_check`: sampled since, with nothing in flight (idle).
pub(super) const STALL_IDLE: u8 = 1;

impl Conn {
    /// The connection entered `state` at `since_ns`. What the stall check last read of it
    /// belonged to the old state: it is read afresh.
    pub(super) fn enter(&mut self, state: u8, since_ns: u64) {
        self.state = state;
        self.state_since_ns = since_ns;
        self.stall_check = STALL_UNKNOWN;
    }

    pub(super) fn new(id: u64, start_ns: u64, role: Role, partial: bool) -> Self {
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
            spans: None,
            bytes_sent: 0,
            bytes_received: 0,
            saw_data: false,
            last_activity_ns: start_ns,
            flagged: StuckSet::default(),
            stuck: None,
            stuck_since_ns: 0,
            missing: 0,
            gone: 0,
            stall_check: STALL_UNKNOWN,
        }
    }

    pub(super) fn from_event(id: u64, event: &OpenEvent) -> Self {
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
    pub(super) fn from_close(id: u64, event: &CloseEvent) -> Self {
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

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    pub(crate) fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    pub(crate) fn process(&self) -> Option<Process> {
        (self.pid != 0).then_some(Process {
            pid: self.pid,
            comm: self.comm,
            cgroup: self.cgroup,
        })
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> u8 {
        self.state
    }

    pub(crate) fn start_ns(&self) -> u64 {
        self.start_ns
    }

    pub(crate) fn partial(&self) -> bool {
        self.partial.is_some()
    }

    pub(crate) fn last_activity_ns(&self) -> u64 {
        self.last_activity_ns
    }

    /// Whether the kernel may have this connection in `state` by now, although the tracker has
    /// it in another: the kernel goes through `FIN_WAIT1`, `CLOSING`, `LAST_ACK` and an
    /// orphan's `FIN_WAIT2` without an event (only its record, [`Conn::live_view`], tells).
    pub(crate) fn may_be_in(&self, state: u8) -> bool {
        use tcpobs_common::tcp_state::*;
        self.state == state
            || matches!(
                (self.state, state),
                (ESTABLISHED, FIN_WAIT1 | FIN_WAIT2 | CLOSING)
                    | (FIN_WAIT1, FIN_WAIT2 | CLOSING)
                    | (CLOSE_WAIT, LAST_ACK)
            )
    }

    /// The live view of this connection, with the kernel's record of its socket if there is
    /// one (a record of another generation is ignored). Exchanges count as at the close: the
    /// kernel's completed ones, and the one in progress if any.
    pub(crate) fn live_view(&self, rec: Option<&SockRecord>) -> LiveView {
        let mut view = LiveView {
            exchanges: self.exchanges,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            last_activity_ns: self.last_activity_ns,
            state: self.state,
        };
        if let Some(rec) = rec.filter(|rec| rec.start_ns == self.start_ns) {
            if super::hang::is_open_state(rec.state) {
                view.state = rec.state;
            }
            let in_progress = !Pending::in_progress(rec, self.role).is_empty();
            let exchanges = rec.exchanges.count.saturating_add(u32::from(in_progress));
            view.exchanges = view.exchanges.max(exchanges);
            view.bytes_sent = view.bytes_sent.max(rec.bytes_sent);
            view.bytes_received = view.bytes_received.max(rec.bytes_recv);
            view.last_activity_ns = view.last_activity_ns.max(last_data_ns(rec));
        }
        view
    }

    /// How the hang detector has found it stuck.
    pub(crate) fn flagged(&self) -> StuckSet {
        self.flagged
    }

    /// Ends the stuck episode in progress, if any (the connection moved on).
    pub(super) fn unstick(&mut self, now: u64, out: &mut Vec<Record>) {
        if let Some((stuck, since)) = self.episode() {
            self.stuck = None;
            out.push(Record::Unstuck(stuck, now.saturating_sub(since)));
        }
    }

    fn set_process(&mut self, process: Option<Process>) {
        if let Some(process) = process {
            (self.pid, self.comm, self.cgroup) = (process.pid, process.comm, process.cgroup);
        }
    }

    pub(super) fn update_process(&mut self, task: &Task) {
        if self.pid == 0 {
            self.set_process(Process::from_kernel(task));
        }
    }

    /// Takes the owner the kernel's record knows, if the tracker has none yet.
    pub(super) fn learn_process(&mut self, process: Option<Process>) {
        if self.pid == 0 {
            self.set_process(process);
        }
    }

    pub(super) fn established_ns(&self) -> Option<u64> {
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

    /// The stuck episode in progress: how, and since when.
    fn episode(&self) -> Option<(Stuck, u64)> {
        self.stuck.map(|stuck| (stuck, self.stuck_since_ns))
    }

    /// The stuck episode in progress at `end_ns`, as (how, duration).
    fn episode_at(&self, end_ns: u64) -> Option<(Stuck, u64)> {
        self.episode()
            .map(|(stuck, since)| (stuck, end_ns.saturating_sub(since)))
    }

    /// The connection record; takes the timeline spans along.
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
            max_response_begin_ns: None,
            max_idle_ns: None,
            stuck: self.flagged,
            stuck_at_end: self.episode_at(self.start_ns + lifetime_ns),
            spans: self.spans.take(),
            last_exchange: None,
            diag: Diagnosis::default(),
        }
    }

    /// The record of a connection that is not closing normally: tcpobs is stopping (`rec` is
    /// the kernel's record, if it could be read), or it was lost (none).
    pub(super) fn unfinished(
        mut self,
        reason: PartialReason,
        now: u64,
        rec: Option<&SockRecord>,
        out: &mut Vec<Record>,
    ) {
        let mut maxima = (None, None);
        let mut last = None;
        let mut retransmits = 0;
        if let Some(rec) = rec {
            let (begin, idle, span) = self.take_exchanges(rec, ExchangeEnd::Flushed { now }, out);
            (maxima, last) = ((begin, idle), span);
            self.bytes_sent = self.bytes_sent.max(rec.bytes_sent);
            self.bytes_received = self.bytes_received.max(rec.bytes_recv);
            retransmits = retransmits_of(rec);
        }
        let mut record = self.record(Some(reason), now.saturating_sub(self.start_ns));
        record.retransmits = retransmits;
        record.last_exchange = last;
        (record.max_response_begin_ns, record.max_idle_ns) = maxima;
        out.push(Record::Connection(record));
    }

    /// The final record of a closed connection, after its last exchange.
    pub(super) fn closed(mut self, rec: &SockRecord, facts: &KernelFacts, out: &mut Vec<Record>) {
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
        let (max_response_begin, max_idle, last) = self.take_exchanges(
            rec,
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
        record.max_response_begin_ns = max_response_begin;
        record.max_idle_ns = max_idle;
        record.connect_failure = connect_failure_of(rec);
        record.bytes_sent = rec.bytes_sent;
        record.bytes_received = rec.bytes_recv;
        record.retransmits = retransmits_of(rec);
        record.tcp = TcpCounters::from_kernel(&rec.tcp);
        record.diag = diagnosis_of(rec, self.role, facts);
        record.close = Some(close);
        out.push(Record::Connection(record));
    }
}
