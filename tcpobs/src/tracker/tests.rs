//! Tracker scenarios, spelled out as the event sequences the kernel programs produce.
//!
//! [`Sock`] mimics the kernel side (tcpobs-ebpf): it keeps a `SockRecord`, coalesces data
//! calls into bursts and emits `Burst` on a direction flip, `Open` at establishment, `State`
//! on teardown transitions and `Close` with the final record.

use tcpobs_common::{
    Burst, BurstEvent, CloseEvent, EventHeader, FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, FLAG_PARTIAL,
    FLAG_RST_RECV, FLAG_RST_SENT, OpenEvent, SockRecord, StateEvent, Task, direction, kind, role,
    tcp_state, teardown,
};

mod phases;

use super::*;
use crate::{
    decode::OwnedEvent,
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

    /// One send/recv call completing at `at`.
    fn data(mut self, dir: u8, at: u64, bytes: u64) -> Self {
        if self.rec.burst.dir == dir {
            self.rec.burst.last_ns = at;
            self.rec.burst.bytes += bytes;
            self.rec.burst.calls += 1;
        } else {
            if self.rec.burst.dir != direction::NONE {
                if self.rec.held.dir == direction::NONE {
                    self.rec.held = self.rec.burst;
                } else {
                    self.events.push(OwnedEvent::Burst(BurstEvent {
                        hdr: self.hdr(kind::BURST, at),
                        first: self.rec.held,
                        second: self.rec.burst,
                        task: self.rec.task,
                    }));
                    self.rec.held.dir = direction::NONE;
                }
            }
            self.rec.burst = Burst {
                first_ns: at,
                last_ns: at,
                bytes,
                calls: 1,
                dir,
                _pad: [0; 3],
            };
        }
        if dir == direction::OUT {
            self.rec.bytes_sent += bytes;
        } else {
            self.rec.bytes_recv += bytes;
        }
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

/// Seed scenario 1, client end: `Connection: close`; the server sends the response and FIN.
#[test]
fn connection_close_is_unique_and_closed_by_the_server() {
    let events = Sock::client(0)
        .established(70 * US)
        .send(144 * US, 78)
        .recv(6 * MS, 600)
        .state(tcp_state::CLOSE_WAIT, 6 * MS + 400 * US)
        .recv(6 * MS + 500 * US, 12)
        .state(tcp_state::LAST_ACK, 7 * MS)
        .close(7 * MS + 100 * US, 0);
    let (exchanges, connections, tracker) = run(&events);
    assert_eq!(classes(&exchanges), [ExchangeClass::Unique]);
    let exchange = &exchanges[0];
    assert_eq!(exchange.seq, 1);
    assert_eq!(exchange.connect_ns, Some(70 * US));
    assert_eq!(exchange.idle_before_ns, Some(74 * US));
    assert_eq!(exchange.request_ns, Some(0));
    assert_eq!(exchange.response_begin_ns, Some(6 * MS - 144 * US));
    assert_eq!(exchange.response_end_ns, Some(500 * US));
    assert_eq!(exchange.response_ns, Some(6 * MS + 500 * US - 144 * US));
    // The response was read after the FIN arrived: no idle gap, not a negative one.
    assert_eq!(exchange.idle_after_ns, Some(0));
    assert_eq!(exchange.session_ns, 7 * MS + 100 * US);
    assert_eq!((exchange.request_bytes, exchange.response_bytes), (78, 612));
    assert_eq!(exchange.close_originator, Some(CloseOriginator::Server));
    assert_eq!(exchange.process.as_ref().unwrap().comm, "app");

    assert_eq!(connections.len(), 1);
    let connection = &connections[0];
    let close = connection.close.as_ref().unwrap();
    assert_eq!(close.originator, CloseOriginator::Server);
    assert_eq!(close.closed_by, Some(Side::Peer));
    assert_eq!(close.kind, CloseKind::Fin);
    assert_eq!(close.final_state, tcp_state::LAST_ACK);
    assert_eq!(close.close_wait_ns, Some(600 * US));
    assert!(!close.close_wait_unclosed);
    assert_eq!(connection.exchanges, 1);
    assert_eq!(connection.connect_ns, Some(70 * US));
    assert_eq!(connection.lifetime_ns, 7 * MS + 100 * US);
    assert_eq!(
        (connection.bytes_sent, connection.bytes_received),
        (78, 612)
    );
    assert_eq!(connection.partial, None);
    assert_eq!(connection.id, exchange.conn_id);
    assert_eq!(tracker.stats(), TrackerStats::default());
    assert_eq!(tracker.live().count(), 0);
}

/// Seed scenario 1, server end: the server closes after responding.
#[test]
fn connection_close_seen_from_the_server() {
    let events = Sock::server(0)
        .established(50 * US)
        .recv(200 * US, 78)
        .send(5 * MS, 612)
        .state(tcp_state::FIN_WAIT1, 5 * MS + 300 * US)
        .state(tcp_state::FIN_WAIT2, 5 * MS + 350 * US)
        .close(6 * MS, 0);
    let (exchanges, connections, _) = run(&events);
    assert_eq!(classes(&exchanges), [ExchangeClass::Unique]);
    assert_eq!(exchanges[0].close_originator, Some(CloseOriginator::Server));
    assert_eq!(exchanges[0].idle_after_ns, Some(300 * US));
    assert_eq!(exchanges[0].response_begin_ns, Some(5 * MS - 200 * US));
    let close = connections[0].close.as_ref().unwrap();
    assert_eq!(
        (close.originator, close.kind),
        (CloseOriginator::Server, CloseKind::Fin)
    );
    assert_eq!(close.teardown_ns, Some(700 * US));
    assert_eq!(
        exchanges[0].addrs.client_server(Role::Server).1.port(),
        8080,
        "server end is the local socket"
    );
}

/// Seed scenario 2: keep-alive asked for, but the client closes after one response.
#[test]
fn client_closing_after_each_response_is_unique_and_client() {
    let client = Sock::client(0)
        .established(60 * US)
        .send(120 * US, 90)
        .recv(5 * MS, 300)
        .state(tcp_state::FIN_WAIT1, 5 * MS + 800 * US)
        .state(tcp_state::FIN_WAIT2, 5 * MS + 900 * US)
        .close(6 * MS, 0);
    let (exchanges, connections, _) = run(&client);
    assert_eq!(classes(&exchanges), [ExchangeClass::Unique]);
    assert_eq!(exchanges[0].close_originator, Some(CloseOriginator::Client));
    assert_eq!(exchanges[0].idle_after_ns, Some(800 * US));
    assert_eq!(connections[0].close.as_ref().unwrap().kind, CloseKind::Fin);

    let server = Sock::server(0)
        .established(60 * US)
        .recv(130 * US, 90)
        .send(4 * MS, 300)
        .state(tcp_state::CLOSE_WAIT, 5 * MS + 810 * US)
        .state(tcp_state::LAST_ACK, 5 * MS + 900 * US)
        .close(6 * MS, 0);
    let (exchanges, connections, _) = run(&server);
    assert_eq!(classes(&exchanges), [ExchangeClass::Unique]);
    assert_eq!(exchanges[0].close_originator, Some(CloseOriginator::Client));
    let close = connections[0].close.as_ref().unwrap();
    assert_eq!(close.closed_by, Some(Side::Peer));
    assert_eq!(close.close_wait_ns, Some(90 * US));
}

/// Seed scenario 3: five requests on one keep-alive connection, then the client closes.
#[test]
fn keep_alive_gives_start_continue_last() {
    let mut sock = Sock::client(0).established(65 * US);
    let mut t = 100 * US;
    let gaps = [1_410 * MS, 1_940 * MS, 1_887 * MS, 466 * MS, 1_417 * MS];
    for gap in gaps {
        sock = sock.send(t, 100).recv(t + 5 * MS, 500);
        t += 5 * MS + gap;
    }
    // The client closes `gap` after the last response.
    let events = sock.state(tcp_state::FIN_WAIT1, t).close(t + MS, 0);
    let (exchanges, connections, _) = run(&events);
    assert_eq!(
        classes(&exchanges),
        [
            ExchangeClass::Start,
            ExchangeClass::Continue,
            ExchangeClass::Continue,
            ExchangeClass::Continue,
            ExchangeClass::Last
        ]
    );
    assert_eq!(
        exchanges.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    // Only the first exchange pays for (and reports) the handshake and the first idle gap.
    assert_eq!(exchanges[0].connect_ns, Some(65 * US));
    assert_eq!(exchanges[0].idle_before_ns, Some(35 * US));
    assert!(
        exchanges[1..]
            .iter()
            .all(|e| e.connect_ns.is_none() && e.idle_before_ns.is_none())
    );
    for (exchange, gap) in exchanges.iter().zip(gaps) {
        assert_eq!(exchange.idle_after_ns, Some(gap));
        assert_eq!(exchange.response_begin_ns, Some(5 * MS));
    }
    // Session time grows with the connection: end of each exchange, close for the last.
    assert_eq!(exchanges[0].session_ns, 100 * US + 5 * MS);
    assert!(
        exchanges
            .windows(2)
            .all(|w| w[0].session_ns < w[1].session_ns)
    );
    assert_eq!(exchanges[4].session_ns, t + MS);
    assert!(exchanges[..4].iter().all(|e| e.close_originator.is_none()));
    assert_eq!(exchanges[4].close_originator, Some(CloseOriginator::Client));
    assert_eq!(connections[0].exchanges, 5);
}

/// The server's keep-alive timeout ends an idle connection: originator server.
#[test]
fn server_keep_alive_timeout_is_closed_by_the_server() {
    let events = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 80)
        .recv(2 * MS, 200)
        .send(500 * MS, 80)
        .recv(502 * MS, 200)
        .state(tcp_state::CLOSE_WAIT, 5_502 * MS)
        .state(tcp_state::LAST_ACK, 5_503 * MS)
        .close(5_504 * MS, 0);
    let (exchanges, _, _) = run(&events);
    assert_eq!(
        classes(&exchanges),
        [ExchangeClass::Start, ExchangeClass::Last]
    );
    assert_eq!(exchanges[1].idle_after_ns, Some(5_000 * MS));
    assert_eq!(exchanges[1].close_originator, Some(CloseOriginator::Server));
}

/// SO_LINGER 0: `close()` moves the socket to CLOSE, then sends a reset.
#[test]
fn linger_zero_is_a_reset_from_the_client() {
    let client = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 80)
        .recv(2 * MS, 200)
        .reset_sent(3 * MS)
        .close(3 * MS, 0);
    let (exchanges, connections, _) = run(&client);
    assert_eq!(classes(&exchanges), [ExchangeClass::Unique]);
    assert_eq!(exchanges[0].close_originator, Some(CloseOriginator::Client));
    let close = connections[0].close.as_ref().unwrap();
    assert_eq!((close.kind, close.rst), (CloseKind::Rst, Some(Side::Local)));
    assert_eq!(close.originator, CloseOriginator::Client);

    let server = Sock::server(0)
        .established(50 * US)
        .recv(110 * US, 80)
        .send(MS, 200)
        .reset_received(3 * MS)
        .close(3 * MS, 104);
    let (_, connections, _) = run(&server);
    let close = connections[0].close.as_ref().unwrap();
    assert_eq!((close.kind, close.rst), (CloseKind::Rst, Some(Side::Peer)));
    assert_eq!(close.originator, CloseOriginator::Client);
    assert_eq!(close.errno, 104);
}

#[test]
fn refused_connect_is_a_failure_without_exchanges() {
    let events = Sock::client(0).reset_received(80 * US).close(80 * US, 111);
    let (exchanges, connections, tracker) = run(&events);
    assert!(exchanges.is_empty());
    let connection = &connections[0];
    assert_eq!(connection.connect_failure, Some(ConnectFailure::Refused));
    assert_eq!(connection.connect_ns, None);
    assert_eq!(connection.partial, None);
    assert_eq!(connection.addrs.remote().port(), 8080);
    assert_eq!(
        tracker.stats(),
        TrackerStats::default(),
        "a failed connect has no open"
    );
}

#[test]
fn kernel_timeout_is_its_own_originator() {
    let events = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 80)
        .close(16_000 * MS, 110);
    let (exchanges, connections, _) = run(&events);
    let close = connections[0].close.as_ref().unwrap();
    assert_eq!(
        (close.kind, close.originator),
        (CloseKind::Timeout, CloseOriginator::Timeout)
    );
    assert_eq!(
        exchanges[0].response_ns, None,
        "the request was never answered"
    );
    assert_eq!(
        exchanges[0].idle_after_ns, None,
        "no FIN or RST ended the idle time"
    );
}

/// A socket already open when tcpobs started: role unknown, partial, no exchange guessed.
#[test]
fn already_open_connections_are_partial_and_unclassified() {
    let mut sock = Sock::new(0xffff_0000_0000_3000, role::UNKNOWN, 10 * MS);
    sock.rec.flags = FLAG_PARTIAL;
    let events = sock
        .established(10 * MS)
        .recv(10 * MS, 10)
        .send(11 * MS, 20)
        .recv(12 * MS, 30)
        .state(tcp_state::CLOSE_WAIT, 13 * MS)
        .state(tcp_state::LAST_ACK, 14 * MS)
        .close(15 * MS, 0);
    let (exchanges, connections, tracker) = run(&events);
    assert!(exchanges.is_empty(), "{exchanges:?}");
    let connection = &connections[0];
    assert_eq!(connection.role, Role::Unknown);
    assert_eq!(connection.partial, Some(PartialReason::AlreadyOpen));
    assert_eq!(connection.connect_ns, None);
    let close = connection.close.as_ref().unwrap();
    assert_eq!(close.originator, CloseOriginator::Unknown);
    assert_eq!(close.closed_by, Some(Side::Peer));
    assert_eq!((connection.bytes_sent, connection.bytes_received), (20, 40));
    assert_eq!(tracker.stats(), TrackerStats::default());
}

/// A server that speaks first (SMTP banner): the first exchange has no request.
#[test]
fn response_without_request() {
    let events = Sock::client(0)
        .established(50 * US)
        .recv(MS, 40)
        .send(2 * MS, 10)
        .recv(3 * MS, 40)
        .state(tcp_state::FIN_WAIT1, 4 * MS)
        .close(5 * MS, 0);
    let (exchanges, _, _) = run(&events);
    assert_eq!(
        classes(&exchanges),
        [ExchangeClass::Start, ExchangeClass::Last]
    );
    assert_eq!(exchanges[0].request_ns, None);
    assert_eq!(exchanges[0].response_begin_ns, None);
    assert_eq!(exchanges[0].response_end_ns, Some(0));
    assert_eq!(exchanges[0].idle_before_ns, Some(950 * US));
    assert_eq!(exchanges[1].request_ns, Some(0));
}

#[test]
fn events_for_unknown_connections_are_unmatched() {
    let events = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 80)
        .recv(MS, 80)
        .send(2 * MS, 80)
        .state(tcp_state::FIN_WAIT1, 3 * MS)
        .close(4 * MS, 0);
    // Drop the Open, as a full ring buffer would.
    let (exchanges, connections, tracker) = run(&events[1..]);
    assert_eq!(
        tracker.stats().unmatched,
        3,
        "a pair of bursts, a state change and the close, all without their open"
    );
    assert_eq!(connections[0].partial, Some(PartialReason::MissedOpen));
    // The close record alone still gives the outcome and the last exchange.
    assert_eq!(
        connections[0].close.as_ref().unwrap().originator,
        CloseOriginator::Client
    );
    assert_eq!(
        (connections[0].bytes_sent, connections[0].bytes_received),
        (160, 80)
    );
    assert_eq!(exchanges.len(), 1);
}

/// A new generation on a socket the tracker still holds: the old connection was lost.
#[test]
fn reused_socket_without_close_reports_the_old_connection_lost() {
    let old = Sock::client(0)
        .established(50 * US)
        .send(MS, 10)
        .recv(2 * MS, 10);
    let mut events = old.events;
    let new = Sock::client(10 * MS)
        .established(10 * MS + 50 * US)
        .close(20 * MS, 0);
    events.extend(new);
    let (exchanges, connections, tracker) = run(&events);
    assert_eq!(tracker.stats().lost, 1);
    assert_eq!(connections.len(), 2);
    assert_eq!(connections[0].partial, Some(PartialReason::Lost));
    assert!(connections[0].close.is_none());
    assert_eq!(connections[1].partial, None);
    assert_ne!(connections[0].id, connections[1].id);
    assert!(
        exchanges.is_empty(),
        "the old connection's bursts never left the kernel: {exchanges:?}"
    );
}

#[test]
fn repeated_bursts_in_one_direction_merge() {
    let mut sock = Sock::client(0).established(50 * US).send(100 * US, 10);
    // Forge an event whose response burst was lost: two request bursts arrive back to back.
    let first = OwnedEvent::Burst(BurstEvent {
        hdr: sock.hdr(kind::BURST, 200 * US),
        first: sock.rec.burst,
        second: Burst::default(),
        task: Task::default(),
    });
    sock.events.push(first);
    sock.rec.burst.first_ns = 300 * US;
    sock.rec.burst.last_ns = 400 * US;
    let events = sock.recv(MS, 50).close(2 * MS, 0);
    let (exchanges, _, tracker) = run(&events);
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0].request_bytes, 20);
    assert_eq!(exchanges[0].request_ns, Some(300 * US));
    assert_eq!(tracker.stats(), TrackerStats::default());
}

#[test]
fn shutdown_flushes_live_connections_as_partial() {
    let events = Sock::server(0)
        .established(50 * US)
        .recv(MS, 10)
        .send(2 * MS, 10)
        .recv(3 * MS, 10)
        .events;
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for event in &events {
        tracker.handle(&event.event(), &mut out);
    }
    assert_eq!(tracker.live().count(), 1);
    // The second request is still a burst in progress in the kernel: the first exchange's
    // class is not known yet. Only the establishment was announced.
    assert!(matches!(out[..], [Record::Opened(_)]), "{out:?}");
    tracker.flush(10 * MS, |_| None, &mut out);
    let (exchanges, connections, tracker) = split(out, tracker);
    assert_eq!(tracker.live().count(), 0);
    assert_eq!(classes(&exchanges), [ExchangeClass::Start]);
    assert_eq!(exchanges[0].response_ns, Some(MS));
    assert_eq!(exchanges[0].idle_after_ns, None);
    assert_eq!(connections[0].partial, Some(PartialReason::Shutdown));
    assert_eq!(connections[0].lifetime_ns, 10 * MS);
    assert!(connections[0].close.is_none());
    assert_eq!(connections[0].exchanges, 1);
}

/// A client's connect is known before it is established; the counters follow its states.
#[test]
fn connect_then_establish_is_one_connection_with_live_counts() {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    let sock = Sock::client(0);
    let connect = OwnedEvent::Connect(OpenEvent {
        hdr: sock.hdr(kind::CONNECT, 0),
        endpoints: sock.rec.endpoints,
        role: role::CLIENT,
        state: tcp_state::SYN_SENT,
        ..Default::default()
    });
    tracker.handle(&connect.event(), &mut out);
    let syn_sent = usize::from(tcp_state::SYN_SENT);
    let established = usize::from(tcp_state::ESTABLISHED);
    assert_eq!(tracker.counts().open[0][syn_sent], 1);
    assert!(out.is_empty());
    let mut sock = sock.established(70 * US).send(MS, 10).recv(2 * MS, 20);
    for event in sock.events.drain(..) {
        tracker.handle(&event.event(), &mut out);
    }
    assert_eq!(
        tracker.live().count(),
        1,
        "the connect and the open are one connection"
    );
    assert_eq!(tracker.counts().open[0][syn_sent], 0);
    assert_eq!(tracker.counts().open[0][established], 1);
    let Record::Opened(opened) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(opened.connect_ns, 70 * US);
    assert_eq!(
        tracker.counts().bytes[0],
        [0, 0],
        "both bursts are still in the kernel"
    );
    let close = sock.close(3 * MS, 0);
    let mut closed = Vec::new();
    tracker.handle(&close[0].event(), &mut closed);
    assert_eq!(tracker.counts().open[0][established], 0);
    assert_eq!(
        tracker.counts().bytes[0],
        [10, 20],
        "the close brings the bytes"
    );
    assert_eq!(tracker.stats(), TrackerStats::default());
}

/// The live table holds one `Conn` per traced socket: 200,000 of them must fit the daemon's
/// 64 MiB (BENCHMARKS.md, scale). Growing it is a decision, not an accident.
#[test]
fn a_live_connection_stays_small() {
    assert!(
        std::mem::size_of::<super::Conn>() <= 216,
        "{}",
        std::mem::size_of::<super::Conn>()
    );
}
