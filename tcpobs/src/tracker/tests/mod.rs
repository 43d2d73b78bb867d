//! Tracker scenarios, spelled out as the event sequences the kernel programs produce.
//!
//! [`Sock`] mimics the kernel side (tcpobs-ebpf): it keeps a `SockRecord`, coalesces data
//! calls into bursts and exchanges with the kernel's own code (`SockRecord::add_data`,
//! `SockRecord::fold_exchange`) and emits `Open` at establishment, `State` on teardown
//! transitions, `Close` with the final record, and a `Burst` event for each exchange the next
//! request ended, as the kernel does while every exchange is wanted. It also keeps what the
//! kernel folds meanwhile (each exchange's timings and class, each burst's bytes).
//!
//! [`run`] plays a scenario both ways: with every exchange sent (the records the tests check)
//! and with none sent, the kernel folding them, as by default; it checks that the connection
//! records are the same, and that the metrics would be (what the kernel folded plus the
//! exchange records of the second run observe the same values as the first run's records).
//!
//! The scenarios are grouped by family: exchanges and who closed (`exchanges`), resets,
//! refused connects and kernel timeouts (`close`), connections seen only in part and the live
//! counts (`tracking`), the library calls around connections (`libcalls`), why a
//! connection was slow or stuck (`stalls`), and what the live table and the hang detector take
//! from the kernel's record while a connection is open (`live`).

use std::ops::{Deref, DerefMut};

use tcpobs_common::{
    BurstEvent, CloseEvent, DataSink, EventHeader, FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, FLAG_PARTIAL,
    FLAG_RST_RECV, FLAG_RST_SENT, OpenEvent, SockRecord, StateEvent, Task, direction, folds::hist,
    kind, role, tcp_state, teardown,
};

mod close;
mod deferred;
mod exchanges;
mod libcalls;
mod live;
mod stalls;
mod tracking;

use super::*;
use crate::{
    kernel::decode::OwnedEvent,
    model::{
        CloseKind, CloseOriginator, ConnectFailure, ConnectionRecord, ExchangeClass,
        ExchangeRecord, Side,
    },
};

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

struct Sock {
    sock: u64,
    rec: SockRecord,
    events: Vec<OwnedEvent>,
    folded: Folded,
}

/// What the kernel folded: observations as (role index, [`hist`] or `CLASS + class`, value),
/// and bytes of completed bursts by role, `[sent, received]`.
#[derive(Clone, Debug, Default)]
struct Folded {
    observed: Vec<(usize, usize, u64)>,
    bytes: Vec<(Role, [u64; 2])>,
}

/// Exchange classes among the observations, after the histograms.
const CLASS: usize = 100;

/// The kernel's data hooks, for the scenarios.
struct KernelPart<'a> {
    sock: u64,
    events: &'a mut Vec<OwnedEvent>,
    folded: &'a mut Folded,
}

impl DataSink for KernelPart<'_> {
    fn burst_done(&mut self, rec: &SockRecord) {
        let mut bytes = [0; 2];
        bytes[usize::from(rec.burst.dir == direction::IN)] = rec.burst.bytes;
        self.folded.bytes.push((Role::from_kernel(rec.role), bytes));
    }

    fn exchange_done(&mut self, rec: &mut SockRecord, next_ns: u64) {
        let role = role_index(Role::from_kernel(rec.role));
        let observed = &mut self.folded.observed;
        let seq = rec.fold_exchange(next_ns, |hist, value| observed.push((role, hist, value)));
        let class = if seq == 1 {
            ExchangeClass::Start
        } else {
            ExchangeClass::Continue
        };
        observed.push((role, CLASS + class as usize, 0));
        self.events.push(OwnedEvent::Burst(BurstEvent {
            hdr: EventHeader {
                kind: kind::BURST,
                _pad: 0,
                ts_ns: next_ns,
                sock: self.sock,
                start_ns: rec.start_ns,
            },
            request: rec.held,
            response: rec.burst,
            task: rec.task,
            seq,
            // As the kernel does by default; `run_events` says otherwise when asked.
            folded: 1,
            _pad: [0; 3],
        }));
    }
}

/// A scenario's events, with what the kernel folded meanwhile.
struct Script {
    events: Vec<OwnedEvent>,
    folded: Folded,
}

impl Deref for Script {
    type Target = Vec<OwnedEvent>;

    fn deref(&self) -> &Self::Target {
        &self.events
    }
}

impl DerefMut for Script {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.events
    }
}

impl IntoIterator for Script {
    type Item = OwnedEvent;
    type IntoIter = std::vec::IntoIter<OwnedEvent>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

impl Sock {
    fn new(sock: u64, role: u8, start_ns: u64) -> Self {
        let mut rec = SockRecord {
            start_ns,
            role,
            state: if role == role::CLIENT {
                tcp_state::SYN_SENT
            } else {
                tcp_state::SYN_RECV
            },
            ..Default::default()
        };
        rec.endpoints.family = 2;
        rec.endpoints.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        rec.endpoints.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        (rec.endpoints.lport, rec.endpoints.rport) = if role == role::CLIENT {
            (40_000, 8080)
        } else {
            (8080, 40_000)
        };
        Self {
            sock,
            rec,
            events: Vec::new(),
            folded: Folded::default(),
        }
    }

    fn client(start_ns: u64) -> Self {
        Self::new(0xffff_0000_0000_1000, role::CLIENT, start_ns)
    }

    fn server(start_ns: u64) -> Self {
        Self::new(0xffff_0000_0000_2000, role::SERVER, start_ns)
    }

    fn hdr(&self, kind: u32, ts_ns: u64) -> EventHeader {
        EventHeader {
            kind,
            _pad: 0,
            ts_ns,
            sock: self.sock,
            start_ns: self.rec.start_ns,
        }
    }

    fn established(mut self, at: u64) -> Self {
        self.rec.established_ns = at;
        self.rec.state = tcp_state::ESTABLISHED;
        self.events.push(OwnedEvent::Open(OpenEvent {
            hdr: self.hdr(kind::OPEN, at),
            endpoints: self.rec.endpoints,
            task: self.rec.task,
            role: self.rec.role,
            flags: self.rec.flags,
            state: self.rec.state,
            deferred: 0,
            _pad: [0; 4],
        }));
        self
    }

    /// One send/recv call completing at `at`, coalesced by the kernel's own rules.
    fn data(mut self, dir: u8, at: u64, bytes: u64) -> Self {
        let mut kernel = KernelPart {
            sock: self.sock,
            events: &mut self.events,
            folded: &mut self.folded,
        };
        self.rec.add_data(at, bytes, dir, &mut kernel);
        if self.rec.task.pid == 0 {
            self.rec.task = Task {
                pid: 4242,
                tid: 4242,
                comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
                cgroup: 99,
            };
        }
        self
    }

    fn send(self, at: u64, bytes: u64) -> Self {
        self.data(direction::OUT, at, bytes)
    }

    fn recv(self, at: u64, bytes: u64) -> Self {
        self.data(direction::IN, at, bytes)
    }

    fn state(mut self, new: u8, at: u64) -> Self {
        let old = self.rec.state;
        match new {
            tcp_state::FIN_WAIT1 => {
                self.first_teardown(teardown::LOCAL_FIN, at);
                self.rec.flags |= FLAG_APP_CLOSED;
                self.rec.app_close_ns = at;
            }
            tcp_state::CLOSE_WAIT => {
                self.first_teardown(teardown::PEER_FIN, at);
                self.rec.flags |= FLAG_CLOSE_WAIT;
                self.rec.close_wait_ns = at;
            }
            tcp_state::LAST_ACK => {
                self.rec.flags |= FLAG_APP_CLOSED;
                self.rec.app_close_ns = at;
            }
            _ => {}
        }
        self.rec.state = new;
        self.events.push(OwnedEvent::State(StateEvent {
            hdr: self.hdr(kind::STATE, at),
            old_state: old,
            new_state: new,
            _pad: [0; 6],
        }));
        self
    }

    fn first_teardown(&mut self, how: u8, at: u64) {
        if self.rec.first_teardown == teardown::NONE {
            self.rec.first_teardown = how;
            self.rec.teardown_ns = at;
        }
    }

    fn reset_sent(mut self, at: u64) -> Self {
        self.rec.flags |= FLAG_RST_SENT | FLAG_APP_CLOSED;
        self.rec.app_close_ns = at;
        self.first_teardown(teardown::LOCAL_RST, at);
        self
    }

    fn reset_received(mut self, at: u64) -> Self {
        self.rec.flags |= FLAG_RST_RECV;
        self.first_teardown(teardown::PEER_RST, at);
        self
    }

    fn close(mut self, at: u64, sk_err: u32) -> Script {
        self.rec.final_state = self.rec.state;
        self.rec.state = tcp_state::CLOSE;
        self.rec.close_ns = at;
        self.rec.sk_err = sk_err;
        self.events.push(OwnedEvent::Close(CloseEvent {
            hdr: self.hdr(kind::CLOSE, at),
            record: self.rec,
        }));
        Script {
            events: self.events,
            folded: self.folded,
        }
    }
}

/// Events for the tracker: a whole scenario (checked both ways, see the module docs), or
/// events taken out of one.
trait Scenario {
    fn events(&self) -> &[OwnedEvent];

    fn folded(&self) -> Option<&Folded> {
        None
    }
}

impl Scenario for Script {
    fn events(&self) -> &[OwnedEvent] {
        &self.events
    }

    fn folded(&self) -> Option<&Folded> {
        Some(&self.folded)
    }
}

impl Scenario for [OwnedEvent] {
    fn events(&self) -> &[OwnedEvent] {
        self
    }
}

impl Scenario for Vec<OwnedEvent> {
    fn events(&self) -> &[OwnedEvent] {
        self
    }
}

fn run_events(
    events: impl IntoIterator<Item = OwnedEvent>,
    kernel_folds: bool,
) -> (Vec<ExchangeRecord>, Vec<ConnectionRecord>, Tracker) {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for mut event in events {
        if let OwnedEvent::Burst(exchange) = &mut event {
            exchange.folded = u8::from(kernel_folds);
        }
        tracker.handle(&event.event(), &mut out);
    }
    split(out, tracker)
}

/// Plays the events with every exchange sent; for a whole scenario, also without exchange
/// events (the kernel folding them), and checks that nothing the outputs say differs.
fn run(
    scenario: &(impl Scenario + ?Sized),
) -> (Vec<ExchangeRecord>, Vec<ConnectionRecord>, Tracker) {
    let events = scenario.events();
    let sent = run_events(events.iter().copied(), false);
    if let Some(folded) = scenario.folded() {
        let quiet = events
            .iter()
            .filter(|event| !matches!(event, OwnedEvent::Burst(_)))
            .copied();
        let (exchanges, connections, tracker) = run_events(quiet, true);
        assert_eq!(
            connections, sent.1,
            "connection records without exchange events"
        );
        let mut expected = observations(&sent.0);
        let mut got = folded.observed.clone();
        got.extend(observations(&exchanges));
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(
            got, expected,
            "folded and observed by the daemon, against one record per exchange"
        );
        // Bytes: the kernel's completed bursts and the tracker's (the bursts in progress at
        // the close) make the connections' totals.
        for (mode, counts) in [("sent", sent.2.counts()), ("folded", tracker.counts())] {
            let mut bytes = counts.bytes;
            for (role, more) in &folded.bytes {
                let total = &mut bytes[role_index(*role)];
                total[0] += more[0];
                total[1] += more[1];
            }
            for connection in sent.1.iter().filter(|c| c.close.is_some()) {
                let total = &mut bytes[role_index(connection.role)];
                total[0] -= connection.bytes_sent;
                total[1] -= connection.bytes_received;
            }
            assert_eq!(bytes, [[0; 2]; 3], "bytes counted, {mode}");
        }
    }
    sent
}

/// What the metrics observe of these exchange records (see [`Folded`]).
fn observations(exchanges: &[ExchangeRecord]) -> Vec<(usize, usize, u64)> {
    let mut observed = Vec::new();
    for exchange in exchanges.iter().filter(|exchange| !exchange.folded) {
        let role = role_index(exchange.role);
        for (hist, value) in [
            (hist::REQUEST, exchange.request_ns),
            (hist::FIRST_BYTE, exchange.response_begin_ns),
            (hist::RESPONSE, exchange.response_ns),
            (hist::IDLE_BEFORE, exchange.idle_before_ns),
            (hist::IDLE_AFTER, exchange.idle_after_ns),
            (hist::TRANSFER, exchange.response_end_ns),
            (hist::SESSION, Some(exchange.session_ns)),
        ] {
            if let Some(value) = value {
                observed.push((role, hist, value));
            }
        }
        observed.push((role, CLASS + exchange.class as usize, 0));
    }
    observed
}

fn split(
    out: Vec<Record>,
    tracker: Tracker,
) -> (Vec<ExchangeRecord>, Vec<ConnectionRecord>, Tracker) {
    let (mut exchanges, mut connections) = (Vec::new(), Vec::new());
    for record in out {
        match record {
            Record::Exchange(exchange) => exchanges.push(exchange),
            Record::Connection(connection) => connections.push(connection),
            Record::Opened(_)
            | Record::Anomaly(_)
            | Record::Unstuck(..)
            | Record::Dns(_)
            | Record::Tls(_) => {}
        }
    }
    (exchanges, connections, tracker)
}

fn classes(exchanges: &[ExchangeRecord]) -> Vec<ExchangeClass> {
    exchanges.iter().map(|exchange| exchange.class).collect()
}
