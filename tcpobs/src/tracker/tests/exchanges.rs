//! Exchange scenarios: the seed's `Connection: close` and keep-alive cases from both ends, a
//! server's keep-alive timeout, a server that speaks first, and bursts that merge.

use super::*;

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

/// An exchange event lost on the way (a full ring buffer): the exchanges around it and the
/// connection record stand, with the kernel's count.
#[test]
fn a_lost_exchange_event_leaves_the_rest_exact() {
    let mut events = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 10)
        .recv(MS, 50)
        .send(2 * MS, 10)
        .recv(3 * MS, 50)
        .send(4 * MS, 10)
        .recv(5 * MS, 50)
        .state(tcp_state::FIN_WAIT1, 6 * MS)
        .close(7 * MS, 0);
    let lost = events
        .iter()
        .position(|event| matches!(event, OwnedEvent::Burst(_)))
        .unwrap();
    events.remove(lost);
    let (exchanges, connections, tracker) = run(&events[..]);
    assert_eq!(
        exchanges.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3],
        "the second and the last"
    );
    assert_eq!(
        classes(&exchanges),
        [ExchangeClass::Continue, ExchangeClass::Last]
    );
    assert_eq!(connections[0].exchanges, 3, "the kernel counted all three");
    assert_eq!(connections[0].timeline_omitted(), 0);
    assert_eq!(
        connections[0].spans.as_ref().unwrap().exchanges(0).count(),
        2,
        "the timeline has the first two from the kernel"
    );
    assert_eq!(tracker.stats(), TrackerStats::default());
}
