//! The seed's troubleshooting scenarios against a real nginx, with curl and raw sockets.
//! Every traced connection has two ends on loopback: the client socket and nginx's.

use std::{io::Read, net::TcpStream, thread, time::Duration};

use tcpobs::model::{
    CloseKind, CloseOriginator, ConnectionRecord, ExchangeClass, ExchangeRecord, Record, Role, Side,
};
use tcpobs_tests::{
    Capture, closed_port, connections, exchanges_of,
    nginx::{Nginx, curl, http_get},
    secs, set_linger_zero,
};

const MS: u64 = 1_000_000;

/// Each closed connection with its exchanges, once `n` connections have closed. nginx's end
/// of the readiness probe may still be closing when tracing starts; it shows up as an
/// already-open (partial) connection and is left out.
fn closed(capture: &Capture, n: usize) -> Vec<(ConnectionRecord, Vec<ExchangeRecord>)> {
    let connections = capture.wait_for(&format!("{n} closed connections"), |records| {
        let closed: Vec<_> = connections(records)
            .into_iter()
            .filter(|c| c.close.is_some() && c.partial.is_none())
            .collect();
        (closed.len() >= n).then_some(closed)
    });
    let records: Vec<Record> = capture.records();
    connections
        .into_iter()
        .map(|connection| {
            let exchanges = exchanges_of(&records, connection.id);
            (connection, exchanges)
        })
        .collect()
}

fn assert_unique(seen: &[(ConnectionRecord, Vec<ExchangeRecord>)], originator: CloseOriginator) {
    for (connection, exchanges) in seen {
        let close = connection.close.as_ref().unwrap();
        assert_eq!(close.originator, originator, "{connection:#?}");
        assert_eq!(close.kind, CloseKind::Fin, "{connection:#?}");
        assert_eq!(connection.exchanges, 1, "{connection:#?} {exchanges:#?}");
        assert_eq!(exchanges.len(), 1);
        assert_eq!(exchanges[0].class, ExchangeClass::Unique);
        assert_eq!(exchanges[0].close_originator, Some(originator));
        assert!(
            exchanges[0].connect_ns.is_some(),
            "every connection pays a handshake"
        );
        assert!(exchanges[0].response_bytes > 0 && exchanges[0].request_bytes > 0);
    }
    let servers = seen.iter().filter(|(c, _)| c.role == Role::Server).count();
    assert_eq!(
        servers * 2,
        seen.len(),
        "each connection seen from both ends"
    );
    for (connection, _) in seen.iter().filter(|(c, _)| c.role == Role::Server) {
        assert_eq!(connection.process.as_ref().unwrap().comm, "nginx");
    }
}

/// Scenario 1: `Connection: close` on every request: churn, closed by the server.
///
/// Which end closes first is a race when the response has a `Content-Length`: the client may
/// close as soon as it has the body, before the server's FIN (tcpobs then rightly says
/// `client`). Here the server always closes first: curl speaks HTTP/1.0 to a response without
/// a length, and the raw client reads until the server closes.
#[test]
fn connection_close_is_unique_and_closed_by_the_server() {
    let nginx = Nginx::start(closed_port(), "75s");
    let capture = Capture::start(&[nginx.port]);
    for _ in 0..2 {
        let body = curl(&[
            "--http1.0",
            "-H",
            "Connection: close",
            &nginx.url("/close-delimited"),
        ]);
        assert_eq!(body, tcpobs_tests::nginx::BODY);
    }
    let mut raw = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let head = http_get(&mut raw, Some("close"));
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).unwrap();
    drop(raw);
    let seen = closed(&capture, 6);
    assert_unique(&seen, CloseOriginator::Server);
    for (connection, _) in &seen {
        let side = connection.close.as_ref().unwrap().closed_by;
        let expected = if connection.role == Role::Server {
            Side::Local
        } else {
            Side::Peer
        };
        assert_eq!(side, Some(expected));
    }
}

/// Scenario 2: keep-alive asked for, but the client closes after each response.
#[test]
fn keep_alive_without_reuse_is_unique_and_closed_by_the_client() {
    let nginx = Nginx::start(closed_port(), "75s");
    let capture = Capture::start(&[nginx.port]);
    for _ in 0..2 {
        curl(&["-H", "Connection: keep-alive", &nginx.url("/")]);
    }
    let mut raw = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let head = http_get(&mut raw, Some("keep-alive"));
    assert!(!head.contains("Connection: close"), "{head}");
    drop(raw);
    let seen = closed(&capture, 6);
    assert_unique(&seen, CloseOriginator::Client);
}

/// Scenario 3: five requests on one keep-alive connection: start, continue x3, last.
#[test]
fn five_requests_on_one_connection() {
    let nginx = Nginx::start(closed_port(), "75s");
    let capture = Capture::start(&[nginx.port]);
    let url = nginx.url("/");
    let output = curl(&[&url, &url, &url, &url, &url]);
    assert_eq!(output.matches("hello from nginx").count(), 5);
    let seen = closed(&capture, 2);
    assert_eq!(seen.len(), 2, "curl reused one connection: {seen:#?}");
    for (connection, exchanges) in &seen {
        let classes: Vec<_> = exchanges.iter().map(|e| e.class).collect();
        assert_eq!(
            classes,
            [
                ExchangeClass::Start,
                ExchangeClass::Continue,
                ExchangeClass::Continue,
                ExchangeClass::Continue,
                ExchangeClass::Last
            ],
            "{:?} end",
            connection.role
        );
        assert_eq!(connection.exchanges, 5);
        assert_eq!(
            connection.close.as_ref().unwrap().originator,
            CloseOriginator::Client
        );
        assert_eq!(exchanges[4].close_originator, Some(CloseOriginator::Client));
        assert!(exchanges[..4].iter().all(|e| e.close_originator.is_none()));
        assert!(exchanges[1..].iter().all(|e| e.connect_ns.is_none()));
    }
}

/// Scenario 3 with pauses: the idle gaps between requests are what the client waited.
#[test]
fn keep_alive_idle_gaps_follow_the_client() {
    let nginx = Nginx::start(closed_port(), "75s");
    let capture = Capture::start(&[nginx.port]);
    let mut raw = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    for pause in [300, 600, 0] {
        http_get(&mut raw, Some("keep-alive"));
        thread::sleep(Duration::from_millis(pause));
    }
    thread::sleep(Duration::from_millis(400));
    drop(raw);
    for (connection, exchanges) in closed(&capture, 2) {
        assert_eq!(exchanges.len(), 3, "{connection:#?}");
        for (exchange, pause) in exchanges.iter().zip([300, 600, 400]) {
            let idle = exchange.idle_after_ns.unwrap();
            assert!(
                (pause * MS..pause * MS + 2_000 * MS).contains(&idle),
                "{:?} exchange {}: idle_after {}s after a {pause} ms pause",
                connection.role,
                exchange.seq,
                secs(idle)
            );
        }
    }
}

/// Scenario 4: the server's keep-alive timeout ends an idle connection.
#[test]
fn server_keep_alive_timeout_is_closed_by_the_server() {
    let nginx = Nginx::start(closed_port(), "1s");
    let capture = Capture::start(&[nginx.port]);
    let mut raw = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    http_get(&mut raw, Some("keep-alive"));
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).unwrap();
    drop(raw);
    let seen = closed(&capture, 2);
    for (connection, exchanges) in &seen {
        assert_eq!(
            connection.close.as_ref().unwrap().originator,
            CloseOriginator::Server
        );
        assert_eq!(exchanges[0].class, ExchangeClass::Unique);
        let idle = exchanges[0].idle_after_ns.unwrap();
        assert!(
            (900 * MS..5_000 * MS).contains(&idle),
            "{:?}: idle {}s before a 1 s keep-alive timeout",
            connection.role,
            secs(idle)
        );
    }
}

/// Scenario 5: SO_LINGER 0 makes the client's close a reset.
#[test]
fn linger_zero_resets_from_the_client() {
    let nginx = Nginx::start(closed_port(), "75s");
    let capture = Capture::start(&[nginx.port]);
    let mut raw = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    set_linger_zero(&raw);
    http_get(&mut raw, Some("keep-alive"));
    drop(raw);
    let seen = closed(&capture, 2);
    for (connection, exchanges) in &seen {
        let close = connection.close.as_ref().unwrap();
        assert_eq!(close.kind, CloseKind::Rst, "{connection:#?}");
        assert_eq!(close.originator, CloseOriginator::Client);
        let rst = if connection.role == Role::Client {
            Side::Local
        } else {
            Side::Peer
        };
        assert_eq!(close.rst, Some(rst));
        assert_eq!(exchanges[0].close_originator, Some(CloseOriginator::Client));
    }
}
