//! TLS handshakes with real peers: Python's `ssl` and curl against `openssl s_server`, with
//! a test PKI: each end's handshake on its own connection, a certificate from an unknown
//! authority as a failure, curl's resolution and handshake on one timeline, and a client
//! killed inside its handshake.

use std::{
    io::Read,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use tcpobs::{
    config::live::{Filter, Thresholds},
    export::output::select::{AnomalyLimits, anomalies_of},
    model::Role,
};
use tcpobs_tests::{
    Capture, PATIENCE, closed_port, connections,
    daemon::Daemon,
    listen, options,
    phases::{
        Pki, Scratch, TLS_HOST, TlsServer, client_of, curl_tls_host, python_tls_client,
        python_tls_command, timeline_names, tls_records,
    },
};

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
    let names = timeline_names(&client);
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
    assert_eq!(
        served[0].conn_id,
        Some(server_end.id),
        "{server_end:#?} {:#?} {:#?}",
        served[0],
        tcpobs_tests::connections(&records)
            .iter()
            .filter(
                |c| c.addrs.local().port() == server_end.addrs.local().port()
                    || c.addrs.remote().port() == server_end.addrs.local().port()
            )
            .map(|c| (c.id, c.role, c.start_ns, c.established_ns))
            .collect::<Vec<_>>()
    );
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
    let ran = curl_tls_host(&scratch, &pki, port);
    assert_eq!(ran.stdout(), "200", "{:?}", ran.output);
    let (handshake, client) = capture.wait_for("curl's handshake and connection", |records| {
        let handshake = tls_records(records, ran.pid).into_iter().next()?;
        Some((handshake, client_of(records, ran.pid, port)?))
    });
    assert!(handshake.ok && handshake.calls >= 1, "{handshake:?}");
    assert_eq!(handshake.conn_id, Some(client.id));
    assert_eq!(client.dns().map(|dns| &*dns.host), Some(TLS_HOST));
    assert_eq!(client.tls().and_then(|tls| tls.ok), Some(true));
    let names = timeline_names(&client);
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
    let anomalies = anomalies_of(&client, &AnomalyLimits::of(&Thresholds::default()));
    assert!(anomalies.contains(&"tls_failure"), "{anomalies:?}");
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
    // Blocking, so that the client waits inside SSL_do_handshake rather than in poll(2)
    // between two calls of it.
    let mut client = python_tls_command(addr.port(), &pki.ca)
        .arg("blocking")
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

/// The process filters apply to handshakes, by the process that makes the call: with the
/// server's process excluded, the client's handshake is reported and the server's is not.
#[test]
fn an_excluded_process_handshakes_unreported() {
    let scratch = Scratch::new("pki");
    let pki = Pki::new(&scratch);
    let port = closed_port();
    let server = TlsServer::start(&pki, port, 1, false);
    let mut options = options(&[port]);
    options.filters.pids = Filter::Exclude(vec![server.pid()]);
    let capture = Capture::start_with(options);
    let ran = python_tls_client(port, &pki.ca);
    assert_eq!(ran.stdout().trim(), "ok", "{:?}", ran.output);
    // The client's connection closes after the server has answered its data, so after the
    // server's handshake call returned: its event, had it been sent, came first.
    let (handshake, client) = capture.wait_for("the client's handshake and close", |records| {
        let handshake = tls_records(records, ran.pid).into_iter().next()?;
        Some((handshake, client_of(records, ran.pid, port)?))
    });
    assert!(handshake.ok, "{handshake:?}");
    assert_eq!(handshake.conn_id, Some(client.id), "{client:#?}");
    let (records, _) = capture.stop();
    assert_eq!(tls_records(&records, server.pid()), Vec::new());
    // The server's end of the connection is excluded too (it belongs to the listener).
    assert!(
        connections(&records).iter().all(|c| c.role != Role::Server),
        "{records:#?}"
    );
}
