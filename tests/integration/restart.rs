//! Connections older than tcpobs (issue 14 §4): opened before tcpobs starts (as after a
//! `kill -9` and restart), they are seeded from the kernel at start-up, with the role their
//! listening port gives them, their owner and byte counters; the exchanges after the start are
//! timed and classified like any other's, and the close says who closed. Only what happened
//! before the start is unknown (`partial_reason: already_open`, no `connect_s`).

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use tcpobs::model::{CloseOriginator, ExchangeClass, PartialReason, Role};
use tcpobs_tests::{
    Capture, by_role, closed_port,
    daemon::Daemon,
    exchanges_of, listen,
    netns::{NetnsPair, in_netns, quiet_port},
    nginx::{Nginx, http_get},
    options, private_loopback, read_n, write_all,
};

/// A client and the server end it reached, both opened before tcpobs, with one exchange
/// ("hello" / "world!") made before it too.
fn open_before_start() -> (TcpListener, SocketAddr, TcpStream, TcpStream) {
    let (listener, addr) = listen(&format!("{}:0", private_loopback()));
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    write_all(&mut client, b"hello");
    assert_eq!(read_n(&mut server, 5), b"hello");
    write_all(&mut server, b"world!");
    assert_eq!(read_n(&mut client, 6), b"world!");
    (listener, addr, client, server)
}

/// Three exchanges ("ping" / "pong!"), then the client closes and the server closes after it.
fn three_exchanges_client_closes(mut client: TcpStream, mut server: TcpStream) {
    for _ in 0..3 {
        write_all(&mut client, b"ping");
        assert_eq!(read_n(&mut server, 4), b"ping");
        write_all(&mut server, b"pong!");
        assert_eq!(read_n(&mut client, 5), b"pong!");
    }
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(server);
}

/// The daemon, started after the connection, with `--events exchanges`: both ends have their
/// role, three exchange events each (`start`, `continue`, `last`), the client as the closer,
/// their owner, and byte totals that count the exchange made before the start, which itself
/// is not counted as an exchange.
#[test]
fn a_connection_older_than_tcpobs_is_seeded() {
    let (_listener, addr, client, server) = open_before_start();
    let cidr = format!("{}/32", addr.ip());
    let daemon = Daemon::start(&["--events", "exchanges", "--cidr", &cidr]);
    // Announced at the seeding, before any traffic: the live table has both ends.
    let entries = daemon.wait_json("both ends in the live table", |table: &Value| {
        table["connections"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    });
    let mut live: Vec<&str> = entries["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["role"].as_str().unwrap())
        .collect();
    live.sort();
    assert_eq!(live, ["client", "server"], "{entries:#}");
    three_exchanges_client_closes(client, server);
    let events = daemon.wait_events("two connection events", |events| {
        events.iter().filter(|e| e["type"] == "connection").count() >= 2
    });
    let connections: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "connection")
        .collect();
    let mut roles: Vec<&str> = connections
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(roles, ["client", "server"], "{connections:#?}");
    let me = u64::from(std::process::id());
    for connection in &connections {
        let role = connection["role"].as_str().unwrap();
        assert_eq!(connection["partial"], true, "{connection:#}");
        assert_eq!(
            connection["partial_reason"], "already_open",
            "{connection:#}"
        );
        assert_eq!(connection["connect_s"], Value::Null, "{connection:#}");
        assert_eq!(connection["exchanges"], 3, "{connection:#}");
        assert_eq!(connection["close_originator"], "client", "{connection:#}");
        assert_eq!(connection["close_kind"], "fin", "{connection:#}");
        assert_eq!(connection["pid"], me, "{connection:#}");
        assert!(
            connection["cgroup"].is_string(),
            "claimed with its cgroup by the first send or receive: {connection:#}"
        );
        // Before the start: "hello" (5) and "world!" (6); after: 3 × ("ping" 4, "pong!" 5).
        let (sent, received) = if role == "client" {
            (5 + 12, 6 + 15)
        } else {
            (6 + 15, 5 + 12)
        };
        assert_eq!(connection["bytes_sent"], sent, "{connection:#}");
        assert_eq!(connection["bytes_received"], received, "{connection:#}");
        let local_port = connection["local_port"].as_u64().unwrap();
        assert_eq!(
            local_port == u64::from(addr.port()),
            role == "server",
            "the server end is the one on the listening port: {connection:#}"
        );
        let id = &connection["id"];
        let mut exchanges: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "exchange" && &e["conn_id"] == id)
            .collect();
        exchanges.sort_by_key(|e| e["seq"].as_u64());
        let classes: Vec<&str> = exchanges
            .iter()
            .map(|e| e["class"].as_str().unwrap())
            .collect();
        assert_eq!(classes, ["start", "continue", "last"], "{exchanges:#?}");
        for (seq, exchange) in exchanges.iter().enumerate() {
            assert_eq!(exchange["seq"], seq as u64 + 1, "{exchange:#}");
            assert_eq!(exchange["role"], role, "{exchange:#}");
            assert_eq!(exchange["request_bytes"], 4, "{exchange:#}");
            assert_eq!(exchange["response_bytes"], 5, "{exchange:#}");
            assert_eq!(exchange["connect_s"], Value::Null, "{exchange:#}");
            assert_eq!(exchange["idle_before_s"], Value::Null, "{exchange:#}");
            assert!(exchange["response_begin_s"].is_number(), "{exchange:#}");
        }
        assert_eq!(exchanges[2]["close_originator"], "client");
    }
    assert_eq!(
        daemon.metric("tcpobs_sockets_seeded_total"),
        2.0,
        "both ends, and no connection the filter leaves out"
    );
    let check = daemon.log().join("\n");
    assert!(
        check.contains("connections open before tcpobs seeded"),
        "the seeding is logged: {check}"
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// The same through the library (the kernel folds nothing: every exchange is a record), with
/// the server closing first: the server is the originator, seen from both ends.
#[test]
fn a_seeded_connection_closed_by_the_server() {
    let (listener, addr, mut client, mut server) = open_before_start();
    let capture = Capture::start(&[addr.port()]);
    for _ in 0..2 {
        write_all(&mut client, b"ping");
        assert_eq!(read_n(&mut server, 4), b"ping");
        write_all(&mut server, b"pong!");
        assert_eq!(read_n(&mut client, 5), b"pong!");
    }
    drop(server);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    drop(client);
    drop(listener);
    let connections = capture.wait_connections(2);
    let records = capture.records();
    for role in [Role::Client, Role::Server] {
        let connection = by_role(&connections, role);
        assert_eq!(connection.partial, Some(PartialReason::AlreadyOpen));
        assert_eq!(connection.exchanges, 2, "{connection:#?}");
        assert_eq!(connection.connect_ns, None);
        let close = connection.close.as_ref().unwrap();
        assert_eq!(close.originator, CloseOriginator::Server, "{connection:#?}");
        assert_eq!(connection.process.as_ref().unwrap().pid, std::process::id());
        let classes: Vec<ExchangeClass> = exchanges_of(&records, connection.id)
            .iter()
            .map(|e| e.class)
            .collect();
        assert_eq!(classes, [ExchangeClass::Start, ExchangeClass::Last]);
    }
    let (_, stats) = capture.stop();
    assert_eq!(stats.kernel.adopted, 0, "seeded, not adopted");
    assert_eq!(stats.kernel.seeded, 2, "both ends");
}

/// A connection no process holds any more (the client closed, the server has not read the
/// FIN yet: `CLOSE_WAIT` is held, the client's `FIN_WAIT2` is an orphan) is seeded on the side
/// that holds it, with the peer as the closer.
#[test]
fn a_seeded_close_wait_knows_the_peer_closed() {
    let (_listener, addr, client, mut server) = open_before_start();
    drop(client);
    let capture = Capture::start_with(options(&[addr.port()]));
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    drop(server);
    let connections = capture.wait_connections(1);
    let server = by_role(&connections, Role::Server);
    assert_eq!(server.partial, Some(PartialReason::AlreadyOpen));
    let close = server.close.as_ref().unwrap();
    assert_eq!(close.originator, CloseOriginator::Client, "{server:#?}");
    assert_eq!(server.exchanges, 0);
}

/// nginx, and a keep-alive client connected (with one request made) before tcpobs starts, with
/// the daemon's defaults (the kernel folds the exchanges): three requests after the start are
/// three exchanges on both ends, the client closes, nginx's end belongs to its worker.
#[test]
fn an_nginx_keep_alive_connection_older_than_tcpobs() {
    let nginx = Nginx::start(closed_port(), "75s");
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let client_port = u64::from(client.local_addr().unwrap().port());
    http_get(&mut client, Some("keep-alive"));
    let port = nginx.port.to_string();
    let daemon = Daemon::start(&["--port", &port]);
    for _ in 0..3 {
        let head = http_get(&mut client, Some("keep-alive"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    drop(client);
    let ours = |event: &&Value| {
        event["type"] == "connection"
            && (event["local_port"] == client_port || event["remote_port"] == client_port)
    };
    let events = daemon.wait_events("both ends of the client's connection", |events| {
        events.iter().filter(ours).count() >= 2
    });
    let connections: Vec<&Value> = events.iter().filter(ours).collect();
    assert_eq!(connections.len(), 2, "{connections:#?}");
    for connection in &connections {
        let server = connection["local_port"] == u64::from(nginx.port);
        assert_eq!(
            connection["role"],
            if server { "server" } else { "client" },
            "{connection:#}"
        );
        assert_eq!(
            connection["partial_reason"], "already_open",
            "{connection:#}"
        );
        assert_eq!(connection["exchanges"], 3, "{connection:#}");
        assert_eq!(connection["close_originator"], "client", "{connection:#}");
        if server {
            assert_eq!(connection["comm"], "nginx", "{connection:#}");
        } else {
            assert_eq!(connection["pid"], u64::from(std::process::id()));
        }
    }
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

trait LiveTable {
    /// Polls `GET /connections` until `check` accepts the table.
    fn wait_json(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value;
}

impl LiveTable for Daemon {
    fn wait_json(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            let (status, body) = self.api("GET", "/connections", None, None);
            assert_eq!(status, 200, "{body}");
            let table: Value = serde_json::from_str(&body).unwrap();
            if check(&table) {
                return table;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }
}

/// The connection events of both ends of the connection whose client end is on `client_port`.
fn both_ends(daemon: &Daemon, client_port: u16) -> Vec<Value> {
    let port = u64::from(client_port);
    let ours = move |event: &Value| {
        event["type"] == "connection"
            && (event["local_port"] == port || event["remote_port"] == port)
    };
    let events = daemon.wait_events("both ends of the connection", |events| {
        events.iter().filter(|e| ours(e)).count() >= 2
    });
    events.into_iter().filter(|e| ours(e)).collect()
}

/// tcpobs killed with SIGKILL while a connection it traces is open, and started again: the new
/// instance seeds the connection and reports its next exchanges, with both roles and the
/// client as the closer.
#[test]
fn a_connection_survives_a_kill_and_restart() {
    let (listener, addr) = listen(&format!("{}:0", private_loopback()));
    let cidr = format!("{}/32", addr.ip());
    let first = Daemon::start(&["--events", "exchanges", "--cidr", &cidr]);
    let mut client = TcpStream::connect(addr).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    write_all(&mut client, b"ping");
    assert_eq!(read_n(&mut server, 4), b"ping");
    write_all(&mut server, b"pong!");
    assert_eq!(read_n(&mut client, 5), b"pong!");
    first.signal(libc::SIGKILL);
    drop(first);
    let second = Daemon::start(&["--events", "exchanges", "--cidr", &cidr]);
    three_exchanges_client_closes(client, server);
    let connections = both_ends(&second, client_port);
    for connection in &connections {
        let server = connection["local_port"] == u64::from(addr.port());
        assert_eq!(
            connection["role"],
            if server { "server" } else { "client" },
            "{connection:#}"
        );
        assert_eq!(
            connection["partial_reason"], "already_open",
            "{connection:#}"
        );
        assert_eq!(connection["exchanges"], 3, "{connection:#}");
        assert_eq!(connection["close_originator"], "client", "{connection:#}");
        let total = connection["bytes_sent"].as_u64().unwrap()
            + connection["bytes_received"].as_u64().unwrap();
        assert_eq!(total, 9 * 4, "one exchange before the restart, three after");
    }
    let (code, _) = second.terminate();
    assert_eq!(code, Some(0));
}

/// Both ends in network namespaces of their own (the server's listener there too, unknown to
/// tcpobs's own `/proc`): the listener iterator finds the port in the server's namespace, and
/// the client's end, whose port listens nowhere in its namespace, is the client.
#[test]
fn seeded_roles_follow_each_namespace_listeners() {
    let pair = NetnsPair::create();
    let port = quiet_port();
    let server_addr: SocketAddr = format!("{}:{port}", pair.addr_b()).parse().unwrap();
    let listener = in_netns(&pair.b, move || TcpListener::bind(server_addr).unwrap())
        .join()
        .unwrap();
    let accept = thread::spawn(move || {
        let (server, _) = listener.accept().unwrap();
        (listener, server)
    });
    let client = in_netns(&pair.a, move || TcpStream::connect(server_addr).unwrap())
        .join()
        .unwrap();
    let (_listener, server) = accept.join().unwrap();
    let capture = Capture::start(&[port]);
    three_exchanges_client_closes(client, server);
    let connections = capture.wait_connections(2);
    let records = capture.records();
    for role in [Role::Client, Role::Server] {
        let connection = by_role(&connections, role);
        assert_eq!(connection.exchanges, 3, "{connection:#?}");
        assert_eq!(
            connection.close.as_ref().unwrap().originator,
            CloseOriginator::Client
        );
        assert_eq!(exchanges_of(&records, connection.id).len(), 3);
    }
    assert_eq!(
        by_role(&connections, Role::Server).addrs.local().port(),
        port
    );
}

/// A connection busy all through tcpobs's start-up (an exchange every millisecond): whether the
/// seeding or a data hook sees it first (a hook adopts it with its role unknown in the moment
/// between the attach and the seeding, and the seeding then gives it its role), both ends
/// have their role, their exchanges after that are classified, and the client closes.
#[test]
fn a_connection_busy_during_start_up_gets_its_role() {
    let (listener, addr) = listen(&format!("{}:0", private_loopback()));
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let serving = thread::spawn(move || {
        let mut request = [0; 4];
        while server.read_exact(&mut request).is_ok() {
            write_all(&mut server, b"pong!");
        }
    });
    let started = Arc::new(AtomicBool::new(false));
    let busy = {
        let started = Arc::clone(&started);
        thread::spawn(move || {
            let mut after = 0;
            while after < 200 {
                // Paced, so that the ring buffer holds every exchange event sent before the
                // tracer reads it (a full one loses them, counted).
                thread::sleep(Duration::from_millis(1));
                write_all(&mut client, b"ping");
                assert_eq!(read_n(&mut client, 5), b"pong!");
                if started.load(Ordering::Relaxed) {
                    after += 1;
                }
            }
        })
    };
    let capture = Capture::start(&[addr.port()]);
    started.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    serving.join().unwrap();
    let connections = capture.wait_connections(2);
    let records = capture.records();
    for role in [Role::Client, Role::Server] {
        let connection = by_role(&connections, role);
        assert_eq!(connection.partial, Some(PartialReason::AlreadyOpen));
        assert_eq!(
            connection.close.as_ref().unwrap().originator,
            CloseOriginator::Client
        );
        let classes: Vec<ExchangeClass> = exchanges_of(&records, connection.id)
            .iter()
            .map(|e| e.class)
            .collect();
        assert!(
            classes.len() >= 200,
            "{role:?}: {} exchanges",
            classes.len()
        );
        assert_eq!(classes.len() as u32, connection.exchanges);
        assert_eq!(classes[0], ExchangeClass::Start);
        assert_eq!(classes[classes.len() - 1], ExchangeClass::Last);
        assert!(
            classes[1..classes.len() - 1]
                .iter()
                .all(|c| *c == ExchangeClass::Continue)
        );
    }
    let (_, stats) = capture.stop();
    eprintln!(
        "ends adopted before the seeding (then given their role): {}",
        stats.kernel.adopted
    );
}

/// A server whose listener closed before tcpobs started (a reload that keeps its connections),
/// on a port below the ephemeral range: its end is not taken for a client but left unknown (no
/// exchanges, like an adopted socket); the client end, on an ephemeral port, is the client.
#[test]
fn a_server_end_without_its_listener_is_unknown() {
    let port = quiet_port();
    let addr: SocketAddr = format!("{}:{port}", private_loopback()).parse().unwrap();
    let listener = TcpListener::bind(addr).unwrap();
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(listener);
    let capture = Capture::start(&[port]);
    three_exchanges_client_closes(client, server);
    let connections = capture.wait_connections(2);
    let server = by_role(&connections, Role::Unknown);
    assert_eq!(server.addrs.local().port(), port);
    assert_eq!(server.exchanges, 0);
    let client = by_role(&connections, Role::Client);
    assert_eq!(client.exchanges, 3);
    assert_eq!(
        client.close.as_ref().unwrap().originator,
        CloseOriginator::Client
    );
}
