//! The running daemon's filters and settings: kernel-side filters (their effect read from the
//! daemon's own events counter), `--pid`, runtime reconfiguration through `PUT /config`, and
//! SIGHUP re-reading the config file.

use std::{
    fs,
    io::Read,
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs_tests::{
    PATIENCE, closed_port,
    daemon::{Daemon, sample_value},
    listen, private_loopback, read_n,
    traffic::{client, serve},
    write_all,
};

/// Events the daemon counted of the kinds every traced connection end sends a fixed number
/// of: its close (one), its exchanges (none, unless asked for) and its connect (none without a
/// SYN retransmit). Opens and state events depend on timing: the kernel defers each open, and
/// a connection that closes at once needs none, unless the reader was idle then.
fn events_total(daemon: &Daemon) -> f64 {
    let (_, body) = daemon.api("GET", "/metrics", None, None);
    ["burst", "close", "connect"]
        .iter()
        .map(|kind| {
            sample_value(&body, &format!("tcpobs_events_total{{kind=\"{kind}\"}}")).unwrap()
        })
        .sum()
}

/// Events counted for one traced connection (one exchange, client closes), measured as the
/// counter's growth until both its connection events are out. The ring buffer is ordered, so
/// anything sent before it has been counted by then too.
fn marker(daemon: &Daemon, addr: std::net::SocketAddr) -> f64 {
    let before = events_total(daemon);
    let seen = daemon
        .events()
        .iter()
        .filter(|e| e["type"] == "connection")
        .count();
    client(addr, 1);
    daemon.wait_events("the marker connection", |events| {
        events.iter().filter(|e| e["type"] == "connection").count() >= seen + 2
    });
    events_total(daemon) - before
}

/// Filtered sockets produce no events at all (read from the daemon's own events counter),
/// for the exclude and include forms, and when the filter changes at runtime.
#[test]
fn kernel_filters_keep_other_ports_out_of_the_ring_buffer() {
    // Both listeners on an address of the test's own, and only that address traced: the
    // events counter is host-wide, and other processes' traffic must not move it.
    let ip = private_loopback();
    let (traced, traced_addr) = listen(&format!("{ip}:0"));
    let (other, other_addr) = listen(&format!("{ip}:0"));
    let traced_server = serve(traced, 4);
    let other_server = serve(other, 10);
    let daemon = Daemon::start(&[
        "--cidr",
        &format!("{ip}/32"),
        "--exclude-port",
        &other_addr.port().to_string(),
    ]);
    let alone = marker(&daemon, traced_addr);
    // Each end's close, which carries the one exchange's bursts; nothing for the connect,
    // which needed no SYN retransmit. A traced connection on the excluded port would add two.
    assert_eq!(alone, 2.0, "a traced connection's closes, both ends");
    let before = events_total(&daemon);
    for _ in 0..5 {
        client(other_addr, 2);
    }
    let with_excluded = marker(&daemon, traced_addr);
    assert_eq!(
        with_excluded, alone,
        "five connections on the excluded port added events ({before} before)"
    );

    // Switch to an include filter on the traced port at runtime.
    let filter = format!(
        r#"{{"filters": {{"ports": {{"include": [{}]}}}}}}"#,
        traced_addr.port()
    );
    let (status, body) = daemon.api("PUT", "/config", Some(&filter), None);
    assert_eq!(status, 200, "{body}");
    for _ in 0..5 {
        client(other_addr, 1);
    }
    let with_outside = marker(&daemon, traced_addr);
    assert_eq!(
        with_outside, alone,
        "ports outside the include filter added events"
    );
    drop(daemon);
    // Unblock the servers' remaining accepts.
    client(traced_addr, 1);
    traced_server.join().unwrap();
    other_server.join().unwrap();
}

/// `PUT /config` changes the event mode at runtime, keeps tracked connections, and rejects a
/// bad body without changing anything.
#[test]
fn runtime_reconfiguration_keeps_tracked_connections() {
    let (listener, addr) = listen("127.0.0.1:0");
    let daemon = Daemon::start(&["--port", &addr.port().to_string()]);
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let exchange = |client: &mut TcpStream, server: &mut TcpStream| {
        write_all(client, b"ping");
        assert_eq!(read_n(server, 4), b"ping");
        write_all(server, b"ok");
        assert_eq!(read_n(client, 2), b"ok");
    };
    exchange(&mut client, &mut server);
    exchange(&mut client, &mut server);

    let (status, body) = daemon.api("PUT", "/config", Some(r#"{"events": "loud"}"#), None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("events"), "{body}");
    let other = closed_port();
    let change = format!(
        r#"{{"events": "exchanges", "sample": null, "filters": {{"ports": {{"include": [{other}]}}}}}}"#
    );
    let (status, body) = daemon.api("PUT", "/config", Some(&change), None);
    assert_eq!(status, 200, "{body}");
    let (_, body) = daemon.api("GET", "/config", None, None);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["runtime"]["events"], "exchanges");
    assert_eq!(config["runtime"]["filters"]["ports"]["include"][0], other);

    exchange(&mut client, &mut server);
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    drop(server);
    let events = daemon.wait_events("both connection events", |events| {
        events.iter().filter(|e| e["type"] == "connection").count() >= 2
    });
    for connection in events.iter().filter(|e| e["type"] == "connection") {
        assert_eq!(
            connection["exchanges"], 3,
            "still tracked after the change: {connection}"
        );
        assert_eq!(connection["partial"], false);
    }
    let exchanges = events.iter().filter(|e| e["type"] == "exchange").count();
    assert!(
        exchanges >= 2,
        "exchange events after the switch: {events:#?}"
    );
}

#[test]
fn sighup_rereads_the_config_file() {
    let config = std::env::temp_dir().join(format!("tcpobs-sighup-{}.toml", std::process::id()));
    fs::write(
        &config,
        "events = \"connections\"\nthreshold-idle = \"10m\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(&[
        "--config",
        config.to_str().unwrap(),
        "--port",
        &closed_port().to_string(),
    ]);
    let (status, _) = daemon.api("GET", "/readyz", None, None);
    assert_eq!(status, 200);
    fs::write(&config, "events = \"anomalies\"\nthreshold-idle = \"2m\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, body) = daemon.api("GET", "/config", None, None);
        let config: Value = serde_json::from_str(&body).unwrap();
        if config["runtime"]["events"] == "anomalies" {
            assert_eq!(config["runtime"]["thresholds"]["idle_s"], 120.0);
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP not applied: {body}");
        thread::sleep(Duration::from_millis(50));
    }
    // A broken file is refused and changes nothing.
    fs::write(&config, "events = \"sometimes\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    let (_, body) = daemon.api("GET", "/config", None, None);
    assert!(body.contains("\"anomalies\""), "{body}");
    let _ = fs::remove_file(&config);
}

/// `--pid`: a connecting socket belongs to the process that connected, an accepted one to the
/// process that listens. Only this test process's sockets are traced, not a child's.
#[test]
fn pid_filter_follows_connecting_and_listening_processes() {
    let (listener, addr) = listen("127.0.0.1:0");
    let me = std::process::id().to_string();
    let daemon = Daemon::start(&["--pid", &me, "--port", &addr.port().to_string()]);
    let server = serve(listener, 2);
    client(addr, 1);
    // A child process connects: its socket is not ours, but the accepting one is.
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{}; printf ping >&3; head -c 2 <&3 >/dev/null",
            addr.port()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    server.join().unwrap();
    let events = daemon.wait_events("three connection events", |events| {
        events.iter().filter(|e| e["type"] == "connection").count() >= 3
    });
    thread::sleep(Duration::from_millis(200));
    let connections: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| e["type"] == "connection")
        .collect();
    assert_eq!(connections.len(), 3, "{events:#?}");
    let clients: Vec<_> = connections
        .iter()
        .filter(|c| c["role"] == "client")
        .collect();
    assert_eq!(clients.len(), 1, "only our own connect: {connections:#?}");
    assert_eq!(clients[0]["pid"], std::process::id());
    assert_eq!(
        connections.iter().filter(|c| c["role"] == "server").count(),
        2
    );
}

/// Changing one kind of filter leaves the others in force: only the kind that changes is
/// switched off while its set is rewritten. (The filters once forgot what they had written,
/// so every change, and the re-apply at start-up, opened a window in which every socket on
/// the host was traced: churn on other ports then showed up.)
#[test]
fn changing_one_filter_keeps_the_port_filter_in_force() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port();
    let (churn_listener, churn_addr) = listen("127.0.0.1:0");
    let daemon = Daemon::start(&["--port", &port.to_string()]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churning = std::sync::Arc::clone(&stop);
    let churn = thread::spawn(move || {
        churn_listener.set_nonblocking(true).unwrap();
        let mut made = 0;
        while !churning.load(std::sync::atomic::Ordering::Relaxed) {
            let client = TcpStream::connect(churn_addr).unwrap();
            while churn_listener.accept().is_err() {}
            drop(client);
            made += 1;
        }
        made
    });
    // Toggle the CIDR filter (127.0.0.0/8 matches everything here) while the churn runs.
    for round in 0..40 {
        let cidrs = if round % 2 == 0 {
            r#"{"include": ["127.0.0.0/8"]}"#
        } else {
            r#""off""#
        };
        let body =
            format!(r#"{{"filters": {{"ports": {{"include": [{port}]}}, "cidrs": {cidrs}}}}}"#);
        let (status, answer) = daemon.api("PUT", "/config", Some(&body), None);
        assert_eq!(status, 200, "{body}: {answer}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = churn.join().unwrap();
    assert!(made > 0);
    // A marker connection on the traced port: once its events are out, so is everything
    // traced before it.
    let marker = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop((marker, server));
    let events = daemon.wait_events("the marker's two connection events", |events| {
        events
            .iter()
            .filter(|e| {
                e["type"] == "connection" && (e["local_port"] == port || e["remote_port"] == port)
            })
            .count()
            == 2
    });
    let leaked: Vec<_> = events
        .iter()
        .filter(|e| e["local_port"] == churn_addr.port() || e["remote_port"] == churn_addr.port())
        .collect();
    assert!(
        leaked.is_empty(),
        "{} of {made} churn connections traced: {leaked:#?}",
        leaked.len()
    );
}

/// With nothing to read, the daemon stops draining the ring buffer on its timer and the
/// kernel wakes it with the next event: a connection made then is reported although nothing
/// else would drain it (the sweeps, which drain too, are an hour apart). The reader then goes
/// back to waiting.
#[test]
fn an_idle_reader_is_woken_by_the_next_event() {
    let ip = private_loopback();
    let (listener, addr) = listen(&format!("{ip}:0"));
    let server = serve(listener, 1);
    // Only the test's own address is traced, and no library calls (name resolutions and TLS
    // handshakes are sent whatever the filters): other processes would keep the reader busy.
    let daemon = Daemon::start(&[
        "--cidr",
        &format!("{ip}/32"),
        "--phases",
        "off",
        "--sweep-interval",
        "1h",
    ]);
    let idle_waits = || daemon.metric("tcpobs_reader_idle_waits_total");
    let wait_for_idle = |after: f64| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let waits = idle_waits();
            if waits > after {
                return waits;
            }
            assert!(
                Instant::now() < deadline,
                "the reader did not go idle ({waits} waits)"
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    let waits = wait_for_idle(0.0);
    client(addr, 1);
    let events = daemon.wait_events("both ends of the connection", |events| {
        events
            .iter()
            .filter(|e| e["type"] == "connection" && e["remote_port"] == addr.port())
            .count()
            >= 1
            && events
                .iter()
                .filter(|e| e["type"] == "connection" && e["local_port"] == addr.port())
                .count()
                >= 1
    });
    let server_end = events
        .iter()
        .find(|e| e["type"] == "connection" && e["local_port"] == addr.port())
        .unwrap();
    assert_eq!(server_end["exchanges"], 1, "{server_end}");
    wait_for_idle(waits);
    drop(daemon);
    server.join().unwrap();
}
