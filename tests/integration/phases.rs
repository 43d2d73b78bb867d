//! The daemon's phase outputs: `dns` and `tls` events, the connection event's phase fields
//! and the metrics; `--phases off`; and a library root without the libraries.

use std::process::Command;

use tcpobs_tests::{
    closed_port,
    daemon::Daemon,
    listen,
    phases::{
        CONNECT_BY_NAME, Pki, Scratch, TLS_HOST, TlsServer, accept_one, in_namespace, python, run,
    },
};

/// The daemon's own outputs: `dns` and `tls` events, the connection event's phase fields,
/// and the metrics.
#[test]
fn the_daemon_writes_phase_events_and_metrics() {
    let scratch = Scratch::new("daemon");
    let pki = Pki::new(&scratch);
    let port = closed_port();
    let daemon = Daemon::start(&["--port", &port.to_string(), "--events", "exchanges"]);
    let _server = TlsServer::start(&pki, port, 1, true);
    let url = format!("https://{TLS_HOST}:{port}/");
    let ca = pki.ca.display().to_string();
    let etc = [
        ("hosts", format!("127.0.0.1 {TLS_HOST}\n")),
        ("nsswitch.conf", "hosts: files\n".to_owned()),
    ];
    let etc: Vec<(&str, &str)> = etc.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let curl = in_namespace(
        &scratch,
        &etc,
        false,
        &[
            "curl",
            "--silent",
            "--cacert",
            &ca,
            "--output",
            "/dev/null",
            &url,
        ],
    );
    assert!(curl.output.status.success(), "{:?}", curl.output);
    let invalid = in_namespace(
        &scratch,
        &etc,
        false,
        &["getent", "ahosts", "nothing.invalid"],
    );
    let pid_is = |event: &serde_json::Value, pid: u32| event["pid"] == u64::from(pid);
    let events = daemon.wait_events("phase events", |events| {
        events
            .iter()
            .any(|e| e["type"] == "connection" && pid_is(e, curl.pid))
            && events
                .iter()
                .any(|e| e["type"] == "dns" && pid_is(e, invalid.pid))
    });
    let connection = events
        .iter()
        .find(|e| e["type"] == "connection" && pid_is(e, curl.pid) && e["role"] == "client")
        .unwrap();
    assert_eq!(connection["dns_host"], TLS_HOST, "{connection}");
    assert!(connection["dns_s"].as_f64().unwrap() > 0.0, "{connection}");
    assert!(
        connection["tls_handshake_s"].as_f64().unwrap() > 0.0,
        "{connection}"
    );
    assert_eq!(connection["tls_ok"], true, "{connection}");
    let phases: Vec<&str> = connection["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|phase| phase["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases[..4],
        ["dns", "connect", "tls", "exchange"],
        "{connection}"
    );
    let tls = events
        .iter()
        .find(|e| e["type"] == "tls" && pid_is(e, curl.pid))
        .unwrap();
    assert_eq!(tls["conn_id"], connection["id"], "{tls}");
    assert_eq!(tls["ok"], true);
    let resolved = events
        .iter()
        .find(|e| e["type"] == "dns" && pid_is(e, curl.pid))
        .unwrap();
    assert_eq!(resolved["host"], TLS_HOST);
    assert_eq!(resolved["addresses"], serde_json::json!(["127.0.0.1"]));
    let failed = events
        .iter()
        .find(|e| e["type"] == "dns" && pid_is(e, invalid.pid))
        .unwrap();
    assert_eq!(failed["host"], "nothing.invalid");
    assert_eq!(failed["result"], "permanent");
    assert_eq!(failed["error"], "EAI_NONAME");
    // Other processes on the machine may resolve and handshake too: at least ours.
    for sample in [
        "tcpobs_dns_duration_seconds_count{result=\"ok\"}",
        "tcpobs_dns_failures_total{kind=\"permanent\"}",
        "tcpobs_tls_handshake_duration_seconds_count{result=\"ok\"}",
        "tcpobs_events_total{kind=\"dns\"}",
        "tcpobs_events_total{kind=\"tls\"}",
        "tcpobs_phase_libraries{family=\"dns\"}",
        "tcpobs_phase_libraries{family=\"tls\"}",
        "tcpobs_probe_info{family=\"tls\",strategy=\"uprobe\",programs=\"uprobe+uretprobe\"}",
    ] {
        assert!(daemon.metric(sample) >= 1.0, "{sample}");
    }
    assert_eq!(daemon.metric("tcpobs_dns_cache_evicted_total"), 0.0);
    let (code, lines) = daemon.terminate();
    assert_eq!(code, Some(0));
    let stats: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["tls_untracked"], 0);
}

/// With no C library and no libssl to attach to, the daemon says so once per family and
/// traces connections as ever.
#[test]
fn without_the_libraries_the_daemon_says_so_and_keeps_tracing() {
    let empty = Scratch::new("no-libraries");
    let (listener, addr) = listen("127.0.0.1:0");
    let root = empty.0.display().to_string();
    let daemon = Daemon::start(&[
        "--port",
        &addr.port().to_string(),
        "--phases-lib-root",
        &root,
    ]);
    let log = daemon.log();
    for (family, library) in [("dns", "libc.so.6"), ("tls", "libssl.so.3")] {
        let said: Vec<_> = log
            .iter()
            .filter(|line| line.contains(&format!("family=\"{family}\"")) && line.contains(library))
            .collect();
        assert_eq!(said.len(), 1, "{family}: {log:#?}");
        assert!(
            said[0].contains("WARN") && said[0].contains(&root),
            "{}",
            said[0]
        );
        assert_eq!(
            daemon.metric(&format!("tcpobs_phase_libraries{{family=\"{family}\"}}")),
            0.0
        );
        assert_eq!(
            daemon.metric(&format!(
                "tcpobs_probe_info{{family=\"{family}\",strategy=\"uprobe\",programs=\"none\"}}"
            )),
            1.0
        );
    }
    let server = accept_one(listener);
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut client, b"still here").unwrap();
    drop(client);
    assert_eq!(server.join().unwrap(), b"still here");
    daemon.wait_events("the connection", |events| {
        events
            .iter()
            .filter(|e| e["type"] == "connection" && e["bytes_sent"] == 10)
            .count()
            == 1
    });
}

/// `--phases off`: no uprobes, no `dns` or `tls` events, whatever the host does.
#[test]
fn phases_off_attaches_nothing() {
    let (listener, addr) = listen("127.0.0.1:0");
    let daemon = Daemon::start(&[
        "--port",
        &addr.port().to_string(),
        "--events",
        "exchanges",
        "--phases",
        "off",
    ]);
    let server = accept_one(listener);
    let mut command = Command::new(python());
    command.args(["-c", CONNECT_BY_NAME, "localhost", &addr.port().to_string()]);
    let ran = run(command);
    assert!(ran.output.status.success(), "{:?}", ran.output);
    assert_eq!(server.join().unwrap(), b"hello");
    let events = daemon.wait_events("the connection", |events| {
        events.iter().any(|e| {
            e["type"] == "connection" && e["pid"] == u64::from(ran.pid) && e["open"] == false
        })
    });
    assert!(
        events
            .iter()
            .all(|e| e["type"] != "dns" && e["type"] != "tls"),
        "{events:#?}"
    );
    let connection = events
        .iter()
        .find(|e| e["type"] == "connection" && e["pid"] == u64::from(ran.pid))
        .unwrap();
    assert_eq!(connection["dns_host"], serde_json::Value::Null);
    assert!(
        daemon
            .log()
            .iter()
            .all(|line| !line.contains("tcpobs::kernel::libcalls"))
    );
    let (status, metrics) = daemon.api("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        !metrics.contains("tcpobs_probe_info{family=\"dns\""),
        "{metrics}"
    );
}
