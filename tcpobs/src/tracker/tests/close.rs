//! Connections that end badly: a reset from `SO_LINGER` 0, a refused connect, the kernel
//! giving up on retransmissions.

use super::*;

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
