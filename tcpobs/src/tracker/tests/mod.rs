//! Tracker scenarios, spelled out as the event sequences the kernel programs produce.
//!
//! [`Sock`] mimics the kernel side (tcpobs-ebpf): it keeps a `SockRecord`, coalesces data
//! calls into bursts with the kernel's own code (`SockRecord::add_data`) and emits `Burst` for
//! each pair, `Open` at establishment, `State` on teardown transitions and `Close` with the
//! final record.
//!
//! The scenarios are grouped by family: exchanges and who closed (`exchanges`), resets,
//! refused connects and kernel timeouts (`close`), connections seen only in part and the live
//! counts (`tracking`), the library calls around connections (`libcalls`), and why a
//! connection was slow or stuck (`stalls`).

use tcpobs_common::{
    Burst, BurstEvent, CloseEvent, EventHeader, FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, FLAG_PARTIAL,
    FLAG_RST_RECV, FLAG_RST_SENT, OpenEvent, SockRecord, StateEvent, Task, direction, kind, role,
    tcp_state, teardown,
};

mod close;
mod exchanges;
mod libcalls;
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
            _pad: [0; 5],
        }));
        self
    }

    /// One send/recv call completing at `at`, coalesced by the kernel's own rules.
    fn data(mut self, dir: u8, at: u64, bytes: u64) -> Self {
        let (sock, events) = (self.sock, &mut self.events);
        self.rec.add_data(at, bytes, dir, |rec| {
            events.push(OwnedEvent::Burst(BurstEvent {
                hdr: EventHeader {
                    kind: kind::BURST,
                    _pad: 0,
                    ts_ns: at,
                    sock,
                    start_ns: rec.start_ns,
                },
                first: rec.held,
                second: rec.burst,
                task: rec.task,
            }));
        });
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

    fn close(mut self, at: u64, sk_err: u32) -> Vec<OwnedEvent> {
        self.rec.final_state = self.rec.state;
        self.rec.state = tcp_state::CLOSE;
        self.rec.close_ns = at;
        self.rec.sk_err = sk_err;
        self.events.push(OwnedEvent::Close(CloseEvent {
            hdr: self.hdr(kind::CLOSE, at),
            record: self.rec,
        }));
        self.events
    }
}

fn run(events: &[OwnedEvent]) -> (Vec<ExchangeRecord>, Vec<ConnectionRecord>, Tracker) {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for event in events {
        tracker.handle(&event.event(), &mut out);
    }
    split(out, tracker)
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
