//! The phases around connections, with real resolvers and real TLS peers on loopback:
//! `getaddrinfo` through the C library (`localhost` with glibc and with musl, a container
//! root with its own C library, a hosts file the test writes, a `.invalid` name, a resolver
//! nobody answers for), OpenSSL handshakes by Python and curl
//! against `openssl s_server` (a good certificate, and one from an unknown authority), and the
//! daemon with the phases on, off, and without the libraries.
//!
//! The phase probes see every process on the host: records are picked by the pids of the
//! processes each test starts.

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tcpobs::{
    model::{ConnectionRecord, DnsFailure, DnsRecord, Record, Role, TlsRecord},
    output::select::anomalies_of,
    runtime::Thresholds,
    uprobes::RESCAN_INTERVAL,
};
use tcpobs_tests::{
    Capture, PATIENCE, closed_port, connections,
    daemon::Daemon,
    listen,
    phases::{
        CONNECT_BY_NAME, Pki, Ran, Scratch, TLS_HOST, TlsServer, in_namespace, musl_resolver,
        python, python_tls_client, python_tls_command, run,
    },
};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn dns_records(records: &[Record], pid: u32) -> Vec<DnsRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Dns(dns) if dns.process.pid == pid => Some(dns.clone()),
            _ => None,
        })
        .collect()
}

fn tls_records(records: &[Record], pid: u32) -> Vec<TlsRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Tls(tls) if tls.process.is_some_and(|p| p.pid == pid) => Some(tls.clone()),
            _ => None,
        })
        .collect()
}

/// The closed, established client connection of `pid` to 127.0.0.1:`port`.
fn client_of(records: &[Record], pid: u32, port: u16) -> Option<ConnectionRecord> {
    connections(records).into_iter().find(|c| {
        c.role == Role::Client
            && c.close.is_some()
            && c.connect_failure.is_none()
            && c.process.is_some_and(|p| p.pid == pid)
            && c.addrs.remote() == (LOOPBACK, port).into()
    })
}

fn names(connection: &ConnectionRecord) -> Vec<&'static str> {
    connection
        .timeline()
        .entries()
        .iter()
        .map(|entry| entry.name)
        .collect()
}

/// A resolution and the connection it led to, by one process: the connection carries it.
fn assert_resolved_and_tied(ran: &Ran, capture: &Capture, host: &str, port: u16) {
    assert!(ran.output.status.success(), "{:?}", ran.output);
    let (dns, client) = capture.wait_for(&format!("{host} resolved and connected"), |records| {
        let dns = dns_records(records, ran.pid)
            .into_iter()
            .find(|dns| &*dns.host == host)?;
        Some((dns, client_of(records, ran.pid, port)?))
    });
    assert_eq!((dns.code, dns.failure()), (0, None), "{dns:?}");
    assert!(dns.addrs.contains(LOOPBACK), "{dns:?}");
    assert!(
        dns.duration_ns > 0 && u128::from(dns.duration_ns) <= ran.elapsed.as_nanos(),
        "the resolution took {} ns of the process's {:?}",
        dns.duration_ns,
        ran.elapsed
    );
    let link = client
        .dns()
        .unwrap_or_else(|| panic!("no dns on {client:#?}"));
    assert_eq!(&*link.host, host);
    assert_eq!(
        (link.start_ns, link.duration_ns),
        (dns.start_ns, dns.duration_ns)
    );
    assert!(
        dns.start_ns + dns.duration_ns <= client.start_ns,
        "resolved before connecting"
    );
    assert_eq!(names(&client)[..2], ["dns", "connect"], "{client:#?}");
}

/// Accepts one connection and reads it to the end, in the background.
fn accept_one(listener: std::net::TcpListener) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        stream.read_to_end(&mut data).unwrap();
        data
    })
}

#[test]
fn localhost_resolves_and_its_connection_carries_the_resolution() {
    let (listener, addr) = listen("127.0.0.1:0");
    let capture = Capture::start(&[addr.port()]);
    let server = accept_one(listener);
    let mut command = Command::new(python());
    command.args(["-c", CONNECT_BY_NAME, "localhost", &addr.port().to_string()]);
    let ran = run(command);
    assert_eq!(server.join().unwrap(), b"hello");
    assert_resolved_and_tied(&ran, &capture, "localhost", addr.port());
    // The accepting end (this process) resolved nothing.
    let (records, _) = capture.stop();
    let server = connections(&records)
        .into_iter()
        .find(|c| c.role == Role::Server && c.process.is_some_and(|p| p.pid == std::process::id()))
        .unwrap();
    assert!(server.dns().is_none(), "{server:#?}");
}

/// musl's C library is probed too: a program linked against it is seen resolving.
#[test]
fn a_program_linked_against_musl_is_seen_resolving() {
    let scratch = Scratch::new("musl");
    let binary = musl_resolver(&scratch);
    let capture = Capture::start(&[closed_port()]);
    let ran = run(Command::new(&binary));
    assert_eq!(ran.stdout().trim(), "0", "{:?}", ran.output);
    let dns = capture.wait_for("musl's resolution", |records| {
        dns_records(records, ran.pid).into_iter().next()
    });
    assert_eq!((&*dns.host, dns.code), ("localhost", 0), "{dns:?}");
    assert!(dns.addrs.contains(LOOPBACK), "{dns:?}");
    assert!(u128::from(dns.duration_ns) <= ran.elapsed.as_nanos());
}

/// A container: a root filesystem with its own copy of the C library (musl's, so that one
/// file is the whole C library), entered in a mount namespace of its own. The daemon finds
/// the copy at its next scan, sees the container's process resolve through it, and detaches
/// once the container is gone.
#[test]
fn a_containers_own_c_library_is_found_probed_and_released() {
    let scratch = Scratch::new("container");
    let binary = musl_resolver(&scratch);
    let root = scratch.path("root");
    let arch = std::env::consts::ARCH;
    for dir in ["lib", "bin", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let musl = std::fs::canonicalize(format!("/lib/ld-musl-{arch}.so.1")).unwrap();
    std::fs::copy(&musl, root.join(format!("lib/ld-musl-{arch}.so.1"))).unwrap();
    std::fs::copy(&binary, root.join("bin/resolve")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 container-test.example\n").unwrap();

    let daemon = Daemon::start(&[
        "--port",
        &closed_port().to_string(),
        "--events",
        "exchanges",
    ]);
    let libraries = || daemon.metric("tcpobs_phase_libraries{family=\"dns\"}");
    let before = libraries();
    let mut container = Command::new("unshare")
        .arg("--mount")
        .arg("chroot")
        .arg(&root)
        .args(["/bin/resolve", "container-test.example", "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = container.id();
    until_a_scan("the container's C library attached", &daemon, || {
        libraries() > before
    });
    let copy = format!("/proc/{pid}/root/lib/ld-musl-{arch}.so.1");
    assert!(
        daemon
            .log()
            .iter()
            .any(|line| line.contains("attached") && line.contains(&copy)),
        "{:#?}",
        daemon.log()
    );
    std::io::Write::write_all(&mut container.stdin.take().unwrap(), b"go\n").unwrap();
    let output = container.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");
    let events = daemon.wait_events("the container's resolution", |events| {
        events
            .iter()
            .any(|e| e["type"] == "dns" && e["pid"] == u64::from(pid))
    });
    let resolved = events
        .iter()
        .find(|e| e["type"] == "dns" && e["pid"] == u64::from(pid))
        .unwrap();
    assert_eq!(resolved["host"], "container-test.example");
    assert_eq!(resolved["addresses"], serde_json::json!(["127.0.0.1"]));
    // Gone with its container, at a later scan.
    until_a_scan("the container's C library detached", &daemon, || {
        libraries() == before
    });
}

/// Polls `done` for as long as two library scans and the usual patience take.
fn until_a_scan(what: &str, daemon: &Daemon, done: impl Fn() -> bool) {
    let deadline = Instant::now() + 2 * RESCAN_INTERVAL + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_name_from_a_hosts_file_resolves_and_is_tied_to_the_connection() {
    let (listener, addr) = listen("127.0.0.1:0");
    let capture = Capture::start(&[addr.port()]);
    let server = accept_one(listener);
    let scratch = Scratch::new("hosts");
    let ran = in_namespace(
        &scratch,
        &[
            ("hosts", "127.0.0.1 phases-test.example\n"),
            ("nsswitch.conf", "hosts: files\n"),
        ],
        false,
        &[
            python(),
            "-c",
            CONNECT_BY_NAME,
            "phases-test.example",
            &addr.port().to_string(),
        ],
    );
    assert_eq!(server.join().unwrap(), b"hello");
    assert_resolved_and_tied(&ran, &capture, "phases-test.example", addr.port());
}

#[test]
fn an_invalid_name_is_a_permanent_failure() {
    let capture = Capture::start(&[closed_port()]);
    let scratch = Scratch::new("invalid");
    // Files only: the answer comes from this test's hosts file, not the network.
    let ran = in_namespace(
        &scratch,
        &[
            ("hosts", "127.0.0.1 localhost\n"),
            ("nsswitch.conf", "hosts: files\n"),
        ],
        false,
        &["getent", "ahosts", "nothing.invalid"],
    );
    assert_eq!(ran.output.status.code(), Some(2), "getent: not found");
    let dns = capture.wait_for("the failed resolution", |records| {
        dns_records(records, ran.pid)
            .into_iter()
            .find(|dns| &*dns.host == "nothing.invalid")
    });
    assert_eq!(dns.code, -2, "EAI_NONAME: {dns:?}");
    assert_eq!(dns.failure(), Some(DnsFailure::Permanent));
    assert!(dns.addrs.is_empty());
    assert!(u128::from(dns.duration_ns) <= ran.elapsed.as_nanos());
}

#[test]
fn a_resolver_on_a_closed_port_is_a_transient_failure() {
    let capture = Capture::start(&[closed_port()]);
    let scratch = Scratch::new("resolver");
    // A network namespace of its own, loopback only: nothing listens on 127.0.0.1:53, the
    // query is refused at once.
    let ran = in_namespace(
        &scratch,
        &[
            (
                "resolv.conf",
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            ),
            ("nsswitch.conf", "hosts: dns\n"),
        ],
        true,
        &["getent", "ahosts", "phases-test.example"],
    );
    assert_eq!(ran.output.status.code(), Some(2), "{:?}", ran.output);
    let dns = capture.wait_for("the failed resolution", |records| {
        dns_records(records, ran.pid)
            .into_iter()
            .find(|dns| &*dns.host == "phases-test.example")
    });
    assert_eq!(dns.code, -3, "EAI_AGAIN: {dns:?}");
    assert_eq!(dns.failure(), Some(DnsFailure::Transient));
    assert!(u128::from(dns.duration_ns) <= ran.elapsed.as_nanos());
}

#[test]
fn a_tls_handshake_is_tied_to_its_connection() {
    let scratch = Scratch::new("pki");
    let pki = Pki::new(&scratch);
    let port = closed_port();
    let capture = Capture::start(&[port]);
    let server = TlsServer::start(&pki, port, 1, false);
    let ran = python_tls_client(port, &pki.ca);
    assert_eq!(ran.stdout().trim(), "ok", "{:?}", ran.output);
    let (handshake, client) = capture.wait_for("the handshake and its connection", |records| {
        let handshake = tls_records(records, ran.pid).into_iter().next()?;
        Some((handshake, client_of(records, ran.pid, port)?))
    });
    assert!(handshake.ok, "{handshake:?}");
    assert_eq!(handshake.conn_id, Some(client.id), "{client:#?}");
    let tls = client.tls().unwrap_or_else(|| panic!("{client:#?}"));
    assert_eq!(tls.ok, Some(true));
    assert_eq!(tls.duration_ns, handshake.duration_ns);
    assert!(tls.duration_ns > 0 && tls.duration_ns <= client.lifetime_ns);
    assert!(
        tls.start_ns >= client.established_ns.unwrap(),
        "the handshake starts once connected"
    );
    let names = names(&client);
    assert_eq!(names[..3], ["connect", "tls", "exchange"], "{client:#?}");
    assert_eq!(names.last(), Some(&"close"));
    // The server's end (`SSL_accept` in s_server) is its own handshake, on its own end of
    // the connection: each end's handshake lands on that end's record, not the other's.
    let server_end = capture.wait_for("the server's end", |records| {
        connections(records).into_iter().find(|c| {
            c.role == Role::Server && c.close.is_some() && c.addrs.remote() == client.addrs.local()
        })
    });
    let (records, _) = capture.stop();
    let served = tls_records(&records, server.pid());
    assert_eq!(served.len(), 1, "{served:#?}");
    assert!(served[0].ok);
    assert_eq!(served[0].conn_id, Some(server_end.id), "{server_end:#?}");
    assert_eq!(server_end.tls().and_then(|tls| tls.ok), Some(true));
    assert_eq!(
        tls_records(&records, ran.pid).len(),
        1,
        "one handshake by the client"
    );
}

#[test]
fn curl_resolves_connects_and_handshakes_on_one_timeline() {
    let scratch = Scratch::new("curl");
    let pki = Pki::new(&scratch);
    let port = closed_port();
    let capture = Capture::start(&[port]);
    let _server = TlsServer::start(&pki, port, 1, true);
    // curl (its own resolver code around getaddrinfo, a non-blocking socket, SSL_connect):
    // the resolution and the handshake land on its connection.
    let url = format!("https://{TLS_HOST}:{port}/");
    let ca = pki.ca.display().to_string();
    let ran = in_namespace(
        &scratch,
        &[
            ("hosts", &format!("127.0.0.1 {TLS_HOST}\n")),
            ("nsswitch.conf", "hosts: files\n"),
        ],
        false,
        &[
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            &url,
        ],
    );
    assert_eq!(ran.stdout(), "200", "{:?}", ran.output);
    let (handshake, client) = capture.wait_for("curl's handshake and connection", |records| {
        let handshake = tls_records(records, ran.pid).into_iter().next()?;
        Some((handshake, client_of(records, ran.pid, port)?))
    });
    assert!(handshake.ok && handshake.calls >= 1, "{handshake:?}");
    assert_eq!(handshake.conn_id, Some(client.id));
    assert_eq!(client.dns().map(|dns| &*dns.host), Some(TLS_HOST));
    assert_eq!(client.tls().and_then(|tls| tls.ok), Some(true));
    let names = names(&client);
    assert_eq!(
        names[..4],
        ["dns", "connect", "tls", "exchange"],
        "{client:#?}"
    );
}

#[test]
fn a_certificate_from_an_unknown_authority_fails_the_handshake() {
    let scratch = Scratch::new("pki");
    let pki = Pki::new(&scratch);
    let port = closed_port();
    let capture = Capture::start(&[port]);
    let _server = TlsServer::start(&pki, port, 1, false);
    let ran = python_tls_client(port, &pki.other_ca);
    assert_eq!(
        ran.stdout().trim(),
        "failed SSLCertVerificationError",
        "{:?}",
        ran.output
    );
    let (handshake, client) = capture.wait_for("the failed handshake", |records| {
        let handshake = tls_records(records, ran.pid).into_iter().next()?;
        Some((handshake, client_of(records, ran.pid, port)?))
    });
    assert!(!handshake.ok, "{handshake:?}");
    assert_eq!(handshake.conn_id, Some(client.id));
    assert_eq!(client.tls().and_then(|tls| tls.ok), Some(false));
    let anomalies = anomalies_of(&client, &Thresholds::default());
    assert!(anomalies.contains(&"tls_failure"), "{anomalies:?}");
}

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

/// A thread killed inside a handshake call never returns from it: the daemon finds its
/// kernel entry and counts it, so the data hooks stop looking threads up for it.
#[test]
fn a_thread_killed_inside_a_handshake_is_reaped() {
    let scratch = Scratch::new("killed");
    let pki = Pki::new(&scratch);
    let (listener, addr) = listen("127.0.0.1:0");
    let daemon = Daemon::start(&["--port", &addr.port().to_string()]);
    let before = daemon.metric("tcpobs_tls_abandoned_total");
    let mut client = python_tls_command(addr.port(), &pki.ca)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // A server that never answers: once its ClientHello is here, the client waits inside
    // SSL_do_handshake.
    let (mut accepted, _) = listener.accept().unwrap();
    let mut hello = [0u8; 5];
    accepted.read_exact(&mut hello).unwrap();
    assert_eq!(hello[0], 22, "a TLS handshake record");
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while daemon.metric("tcpobs_tls_abandoned_total") < before + 1.0 {
        assert!(Instant::now() < deadline, "{:#?}", daemon.log());
        thread::sleep(Duration::from_millis(100));
    }
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
            .all(|line| !line.contains("tcpobs::uprobes"))
    );
    let (status, metrics) = daemon.api("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        !metrics.contains("tcpobs_probe_info{family=\"dns\""),
        "{metrics}"
    );
}
