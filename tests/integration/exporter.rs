//! The exporter end to end: a real Prometheus scrapes the daemon while the test drives known
//! traffic; promtool checks a real exposition; the hang detector; sampling; the HTTP port in
//! use. The kernel-side filters, runtime reconfiguration and SIGHUP are in `runtime.rs`.

use std::{
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs::kernel::loader::Strategy;
use tcpobs_tests::{
    PATIENCE, closed_port,
    daemon::Daemon,
    listen, private_loopback,
    prometheus::Prometheus,
    read_n,
    traffic::{client, serve},
    write_all,
};

#[test]
fn prometheus_scrapes_what_the_traffic_did() {
    let (listener, addr) = listen("127.0.0.1:0");
    let refused = closed_port();
    let ports = format!("{},{refused}", addr.port());
    let daemon = Daemon::start(&["--port", &ports]);
    let prometheus = Prometheus::start(daemon.api);
    let server = serve(listener, 5);
    for _ in 0..4 {
        client(addr, 1);
    }
    client(addr, 3);
    assert!(TcpStream::connect(("127.0.0.1", refused)).is_err());
    server.join().unwrap();

    for role in ["client", "server"] {
        let sel = |extra: &str| format!("{{role=\"{role}\"{extra}}}");
        prometheus.expect(&format!("tcpobs_connections_opened_total{}", sel("")), 5.0);
        prometheus.expect(
            &format!("tcpobs_handshake_duration_seconds_count{}", sel("")),
            5.0,
        );
        prometheus.expect(
            &format!(
                "tcpobs_connections_closed_total{}",
                sel(",close_originator=\"client\",close_kind=\"fin\"")
            ),
            5.0,
        );
        prometheus.expect(
            &format!("tcpobs_connection_duration_seconds_count{}", sel("")),
            5.0,
        );
        prometheus.expect(
            &format!("tcpobs_exchanges_per_connection_count{}", sel("")),
            5.0,
        );
        prometheus.expect(
            &format!("tcpobs_exchanges_per_connection_sum{}", sel("")),
            7.0,
        );
        prometheus.expect(
            &format!("tcpobs_exchanges_total{}", sel(",class=\"unique\"")),
            4.0,
        );
        for class in ["start", "continue", "last"] {
            prometheus.expect(
                &format!(
                    "tcpobs_exchanges_total{}",
                    sel(&format!(",class=\"{class}\""))
                ),
                1.0,
            );
        }
        prometheus.expect(
            &format!("tcpobs_request_duration_seconds_count{}", sel("")),
            7.0,
        );
        prometheus.expect(
            &format!("tcpobs_response_first_byte_seconds_count{}", sel("")),
            7.0,
        );
        prometheus.expect(
            &format!("tcpobs_idle_before_request_seconds_count{}", sel("")),
            5.0,
        );
        prometheus.expect(
            &format!("tcpobs_idle_after_response_seconds_count{}", sel("")),
            7.0,
        );
    }
    prometheus.expect(
        "tcpobs_bytes_total{role=\"client\",direction=\"sent\"}",
        28.0,
    );
    prometheus.expect(
        "tcpobs_bytes_total{role=\"server\",direction=\"sent\"}",
        14.0,
    );
    prometheus.expect("tcpobs_connect_failures_total{reason=\"refused\"}", 1.0);
    prometheus.expect("tcpobs_events_lost_total", 0.0);
    prometheus.expect("tcpobs_unmatched_events_total", 0.0);
    // Each family says how it is attached: the state family by tracepoint (tp_btf on this
    // host), unless the suite runs with kprobes forced (the kernel matrix).
    let state = match tcpobs_tests::strategy().all {
        Some(Strategy::Kprobe) => "strategy=\"kprobe\",programs=\"kprobe\"",
        _ => "strategy=\"tracepoint\"",
    };
    prometheus.expect(
        &format!("tcpobs_probe_info{{family=\"state\",{state}}}"),
        1.0,
    );
    // Every family that tcpobs cannot do without attaches; optional ones depend on the kernel
    // (fentry or kprobes for the probes family) and, where missing, have no series.
    let required: Vec<&str> = tcpobs::kernel::loader::FAMILIES
        .iter()
        .filter(|f| !f.optional)
        .map(|f| f.name)
        .collect();
    prometheus.expect(
        &format!(
            "count(tcpobs_probe_info{{family=~\"{}\"}})",
            required.join("|")
        ),
        required.len() as f64,
    );
    prometheus.expect("tcpobs_build_info{version=\"0.1.0\"}", 1.0);
    prometheus.expect("up{job=\"tcpobs\"}", 1.0);

    // promtool accepts a real exposition, in the format it reads.
    let (status, classic) = daemon.api("GET", "/metrics", None, Some("text/plain; version=0.0.4"));
    assert_eq!(status, 200);
    if let Err(complaints) = tcpobs_tests::promtool_check_metrics(&classic) {
        panic!("promtool check metrics: {complaints}");
    }
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// A server that never closes (CLOSE_WAIT leak) and an idle connection are each flagged.
#[test]
fn close_wait_leaks_and_idle_connections_are_flagged() {
    let (listener, addr) = listen("127.0.0.1:0");
    let daemon = Daemon::start(&[
        "--port",
        &addr.port().to_string(),
        "--threshold-close-wait",
        "1s",
        "--threshold-idle",
        "1s",
        "--sweep-interval",
        "250ms",
    ]);
    // The leak: the client closes, the server keeps its socket open.
    let leaking_client = TcpStream::connect(addr).unwrap();
    let (leaked, _) = listener.accept().unwrap();
    drop(leaking_client);
    // The zombie: one exchange, then silence.
    let mut idle_client = TcpStream::connect(addr).unwrap();
    let (mut idle_server, _) = listener.accept().unwrap();
    write_all(&mut idle_client, b"ping");
    assert_eq!(read_n(&mut idle_server, 4), b"ping");
    write_all(&mut idle_server, b"ok");
    assert_eq!(read_n(&mut idle_client, 2), b"ok");

    let events = daemon.wait_events("close_wait and idle anomalies", |events| {
        let phases: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "anomaly")
            .filter_map(|e| e["phase"].as_str())
            .collect();
        phases.contains(&"close_wait") && phases.iter().filter(|p| **p == "idle").count() >= 2
    });
    let anomalies: Vec<&Value> = events.iter().filter(|e| e["type"] == "anomaly").collect();
    let close_wait: Vec<_> = anomalies
        .iter()
        .filter(|e| e["phase"] == "close_wait")
        .collect();
    assert_eq!(
        close_wait.len(),
        1,
        "once per connection and phase: {anomalies:#?}"
    );
    let leak = close_wait[0];
    assert_eq!(leak["role"], "server");
    assert_eq!(leak["state"], "CLOSE_WAIT");
    assert_eq!(leak["local_port"], addr.port());
    assert!(
        leak["hint"]
            .as_str()
            .unwrap()
            .contains("never called close()"),
        "{leak}"
    );
    let age = leak["age_s"].as_f64().unwrap();
    assert!(
        (1.0..30.0).contains(&age),
        "flagged at {age}s for a 1 s threshold"
    );
    for zombie in anomalies.iter().filter(|e| e["phase"] == "idle") {
        assert_eq!(zombie["state"], "ESTABLISHED");
        assert!(
            zombie["hint"].as_str().unwrap().contains("zombie"),
            "{zombie}"
        );
        assert!(zombie["age_s"].as_f64().unwrap() >= 1.0);
    }
    // The same in the gauge and the live table.
    let deadline = Instant::now() + PATIENCE;
    while daemon.metric("tcpobs_stuck_connections{phase=\"close_wait\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the close_wait gauge stays at 0");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.metric("tcpobs_stuck_connections{phase=\"idle\"}") >= 2.0);
    // Sweeps have run over a table with these connections in it, so they took some time.
    assert!(daemon.metric("tcpobs_sweep_duration_seconds") > 0.0);
    assert_eq!(
        daemon.metric("tcpobs_anomalies_total{phase=\"close_wait\"}"),
        1.0
    );
    let (status, body) = daemon.api("GET", "/connections?state=close_wait", None, None);
    assert_eq!(status, 200);
    let table: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(table["total"], 1, "{body}");
    assert_eq!(table["connections"][0]["stuck"][0], "close_wait");
    let (_, body) = daemon.api("GET", "/connections?min_idle_s=1", None, None);
    let idle: Value = serde_json::from_str(&body).unwrap();
    assert!(idle["total"].as_u64().unwrap() >= 3, "{body}");
    drop((leaked, idle_client, idle_server));
}

/// One ping/pong, then 6 s of silence, with a 2 s idle threshold and the default 30 s no-data
/// one (issue 15 §3). The kernel folds the exchange and sends no event for it, so only its
/// record knows the data: the idle anomaly comes from it, 2 s after the pong rather than after
/// the no-data threshold, and the live table shows the bytes and the exchange of both ends,
/// as their connection events do at the close.
#[test]
fn an_idle_connection_is_flagged_and_listed_from_the_kernel_record() {
    let ip = private_loopback();
    let (listener, addr) = listen(&format!("{ip}:0"));
    let port = addr.port();
    let daemon = Daemon::start(&[
        "--port",
        &port.to_string(),
        "--cidr",
        &format!("{ip}/32"),
        "--threshold-idle",
        "2s",
    ]);
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    write_all(&mut client, b"ping");
    assert_eq!(read_n(&mut server, 4), b"ping");
    write_all(&mut server, b"pong");
    assert_eq!(read_n(&mut client, 4), b"pong");
    let idle_since = Instant::now();
    let ours = |e: &&Value| e["local_port"] == port || e["remote_port"] == port;

    let events = daemon.wait_events("an idle anomaly for both ends", |events| {
        events
            .iter()
            .filter(ours)
            .filter(|e| e["type"] == "anomaly" && e["phase"] == "idle")
            .count()
            == 2
    });
    let anomalies: Vec<&Value> = events
        .iter()
        .filter(ours)
        .filter(|e| e["type"] == "anomaly")
        .collect();
    assert_eq!(
        anomalies.len(),
        2,
        "idle only, once per end: {anomalies:#?}"
    );
    let mut roles: Vec<&str> = anomalies
        .iter()
        .map(|e| e["role"].as_str().unwrap())
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, ["client", "server"]);
    for idle in &anomalies {
        assert_eq!(idle["state"], "ESTABLISHED", "{idle}");
        assert_eq!(idle["threshold_s"], 2.0, "{idle}");
        // Idle since the pong (kernel timestamps): flagged on a sweep (1 s apart) after the
        // idle threshold passed, not after the no-data threshold.
        let age = idle["age_s"].as_f64().unwrap();
        assert!((2.0..30.0).contains(&age), "age_s {age}: {idle}");
    }

    // During the silence, the live table: 4 bytes each way and one exchange for both ends.
    let (status, body) = daemon.api("GET", &format!("/connections?port={port}"), None, None);
    assert_eq!(status, 200, "{body}");
    let table: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(table["total"], 2, "{body}");
    let live: Vec<(String, u64, u64, u64, Value)> = table["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["role"].as_str().unwrap().to_owned(),
                c["bytes_sent"].as_u64().unwrap(),
                c["bytes_received"].as_u64().unwrap(),
                c["exchanges"].as_u64().unwrap(),
                c["stuck"].clone(),
            )
        })
        .collect();
    let mut live = live;
    live.sort_by(|a, b| a.0.cmp(&b.0));
    let idle_stuck = serde_json::json!(["idle"]);
    assert_eq!(
        live,
        [
            ("client".to_owned(), 4, 4, 1, idle_stuck.clone()),
            ("server".to_owned(), 4, 4, 1, idle_stuck),
        ],
        "{body}"
    );
    for c in table["connections"].as_array().unwrap() {
        // Idle since the pong, not since the connection opened: the kernel's last data.
        let (idle_s, age_s) = (c["idle_s"].as_f64().unwrap(), c["age_s"].as_f64().unwrap());
        assert!(idle_s >= 2.0 && idle_s <= age_s, "{c}");
    }
    // Only connections quiet that long.
    let (_, body) = daemon.api(
        "GET",
        &format!("/connections?port={port}&min_idle_s=3600"),
        None,
        None,
    );
    let none: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(none["total"], 0, "{body}");

    // The rest of the 6 s of silence, then the close: the connection events say the same.
    thread::sleep(Duration::from_secs(6).saturating_sub(idle_since.elapsed()));
    drop((client, server));
    let events = daemon.wait_events("both connection events", |events| {
        events
            .iter()
            .filter(ours)
            .filter(|e| e["type"] == "connection")
            .count()
            == 2
    });
    for closed in events
        .iter()
        .filter(ours)
        .filter(|e| e["type"] == "connection")
    {
        assert_eq!(
            (
                &closed["bytes_sent"],
                &closed["bytes_received"],
                &closed["exchanges"]
            ),
            (&Value::from(4), &Value::from(4), &Value::from(1)),
            "{closed}"
        );
    }
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// The live table shows the teardown states no event reports, from the kernel's record: a
/// client that half-closes behind data the server never reads stays in `FIN_WAIT1` (its FIN
/// waits behind the unsent data), and `?state=FIN_WAIT1` finds it.
#[test]
fn the_live_table_shows_a_client_stuck_in_fin_wait1() {
    let ip = private_loopback();
    let (listener, addr) = listen(&format!("{ip}:0"));
    let port = addr.port();
    let daemon = Daemon::start(&["--port", &port.to_string(), "--cidr", &format!("{ip}/32")]);
    let mut client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    // Fill the server's receive buffer and the client's send buffer: the server never reads.
    client.set_nonblocking(true).unwrap();
    let chunk = [7u8; 64 * 1024];
    let mut queued = 0usize;
    loop {
        match std::io::Write::write(&mut client, &chunk) {
            Ok(n) => queued += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("write: {err}"),
        }
    }
    assert!(queued > 0);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let state_of = |query: &str| {
        let (status, body) = daemon.api(
            "GET",
            &format!("/connections?port={port}{query}"),
            None,
            None,
        );
        assert_eq!(status, 200, "{body}");
        let table: Value = serde_json::from_str(&body).unwrap();
        let rows: Vec<(String, String)> = table["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["role"].as_str().unwrap().into(),
                    c["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        (table["total"].as_u64().unwrap(), rows)
    };
    // Both ends are listed once their opens are read.
    let deadline = Instant::now() + PATIENCE;
    while state_of("").0 < 2 {
        assert!(Instant::now() < deadline, "{:?}", state_of(""));
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        state_of("&state=FIN_WAIT1"),
        (1, vec![("client".to_owned(), "FIN_WAIT1".to_owned())])
    );
    // The server has not seen the FIN: it is still established.
    assert_eq!(
        state_of("&state=ESTABLISHED"),
        (1, vec![("server".to_owned(), "ESTABLISHED".to_owned())])
    );
    drop((client, server));
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn the_http_port_in_use_is_an_error() {
    let (_taken, addr) = listen("127.0.0.1:0");
    let output = Command::new(tcpobs_tests::tcpobs_binary())
        .args(["--listen", &addr.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Sampling keeps the first event of each second and counts what it leaves out; nothing is
/// lost silently: written + sampled out = every connection event.
#[test]
fn sampling_counts_what_it_leaves_out() {
    // An address of the test's own as well as its port: the counters are host-wide.
    let ip = private_loopback();
    let (listener, addr) = listen(&format!("{ip}:0"));
    let daemon = Daemon::start(&[
        "--port",
        &addr.port().to_string(),
        "--cidr",
        &format!("{ip}/32"),
        "--sample",
        "first=1,thereafter=1000000",
    ]);
    let server = serve(listener, 6);
    for _ in 0..6 {
        client(addr, 1);
    }
    server.join().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let (written, sampled_out) = loop {
        let written = daemon.metric("tcpobs_output_events_total{type=\"connection\"}");
        let sampled_out =
            daemon.metric("tcpobs_output_events_sampled_out_total{type=\"connection\"}");
        if written + sampled_out >= 12.0 {
            break (written, sampled_out);
        }
        assert!(
            Instant::now() < deadline,
            "{written} written, {sampled_out} sampled out"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        written + sampled_out,
        12.0,
        "six connections, two ends each"
    );
    assert!(sampled_out >= 1.0, "one per second kept: {written} written");
    // The output is flushed after each batch: wait for it, then it must hold exactly those.
    let lines = daemon.wait_lines("the written events", |lines| lines.len() as f64 >= written);
    assert_eq!(
        lines.len() as f64,
        written,
        "the output holds exactly the written events"
    );
}
