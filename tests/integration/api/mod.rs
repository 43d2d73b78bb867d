//! The HTTP API as a security review tries it: a hostile local user (uid 65534, no
//! capabilities) who can no longer change anything; TLS and basic auth from a web config in the
//! exporter-toolkit format (every file checked by `promtool check web-config`), re-read on
//! SIGHUP; client certificates; plain HTTP to the TLS port; the admin API over TCP with basic
//! auth and the Host/Origin checks against DNS rebinding; 2,000 idle sockets that do not starve
//! `/healthz`; content negotiation for promtool; `--log-level loud` refused from every source;
//! and a real Prometheus scraping over TLS with basic auth ([`tls`]).

mod tls;

use std::{
    fs,
    io::Read as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs_tests::{
    PATIENCE, closed_port,
    daemon::{Daemon, curl_with, sample_value},
    listen,
    phases::Scratch,
    tcpobs_binary,
    traffic::{client, serve},
};

/// Writes a web config and checks that promtool (the exporter-toolkit's own parser) accepts it.
pub(super) fn web_config(scratch: &Scratch, name: &str, yaml: &str) -> PathBuf {
    let path = scratch.write(name, yaml);
    let output = Command::new("promtool")
        .args(["check", "web-config"])
        .arg(&path)
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        output.status.success(),
        "promtool check web-config {name}:\n{yaml}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

/// A bcrypt hash of `password` (cost 10, as htpasswd -B makes them).
pub(super) fn hash(password: &str) -> String {
    bcrypt::hash(password, 10).unwrap()
}

pub(super) fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Waits until `check` holds (the daemon acts on a signal a moment after it is sent).
pub(super) fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The issue's hostile test: as uid 65534 with no capabilities, one `PUT /config` that would
/// turn the events off, filter every port out and silence the log. It reaches only the metrics
/// API, which answers 404; the admin socket does not let it connect. Nothing changed, tracing
/// goes on, and the attempt is in the log. A change by root through the admin socket is logged
/// at WARN with its uid and pid.
#[test]
fn a_hostile_local_user_can_change_nothing() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let daemon = Daemon::start(&["--port", &port]);
    let socket = daemon.admin.clone().unwrap();
    let hostile = r#"{"events":"none","filters":{"ports":{"include":[1]}},"log_level":"off"}"#;
    let as_nobody = |args: &[&str]| {
        let output = Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--inh-caps=-all",
                "curl",
                "--silent",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .output()
            .expect("setpriv (util-linux) and curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), text)
    };
    let metrics_api = format!("http://{}/config", daemon.api);
    let (code, answer) = as_nobody(&["-X", "PUT", "-d", hostile, &metrics_api]);
    assert_eq!(code, Some(0), "{answer}");
    assert!(
        answer.ends_with("\n404"),
        "the metrics API has no /config: {answer}"
    );
    assert!(answer.contains("--admin-listen"), "{answer}");
    let (code, answer) = as_nobody(&[
        "--unix-socket",
        path(&socket),
        "-X",
        "PUT",
        "-d",
        hostile,
        "http://localhost/config",
    ]);
    // curl exit 7: could not connect (the socket is 0600, root's).
    assert_eq!(code, Some(7), "the admin socket let uid 65534 in: {answer}");
    let (_, answer) = as_nobody(&[&format!("http://{}/connections", daemon.api)]);
    assert!(answer.ends_with("\n404"), "{answer}");

    let (status, body) = daemon.api("GET", "/config", None, None);
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["runtime"]["events"], "connections", "{body}");
    assert_eq!(config["runtime"]["log_level"], "info", "{body}");
    assert_eq!(
        config["runtime"]["filters"]["ports"]["include"][0].as_u64(),
        Some(u64::from(addr.port())),
        "{body}"
    );
    // Tracing goes on: a connection on the traced port is reported from both ends.
    let server = serve(listener, 1);
    client(addr, 1);
    server.join().unwrap();
    daemon.wait_events("both ends of the traced connection", |events| {
        events.iter().filter(|e| e["type"] == "connection").count() >= 2
    });
    let line = daemon.wait_log("the attempt", |line| {
        line.contains("PUT /config asked of the metrics API")
    });
    assert!(
        line.contains("WARN"),
        "the attempt is logged at WARN: {line}"
    );

    // Root, through the admin socket: applied, and logged at WARN with who.
    let (status, body) = daemon.api("PUT", "/config", Some(r#"{"events":"anomalies"}"#), None);
    assert_eq!(status, 200, "{body}");
    let change = daemon.wait_log("the change", |line| {
        line.contains("runtime settings changed")
    });
    assert!(
        change.contains("WARN") && change.contains("by=unix socket uid 0 pid "),
        "{change}"
    );
    assert!(change.contains(r#""events":"anomalies""#), "{change}");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(!socket.exists(), "the admin socket is removed at exit");
}

/// The admin API over TCP needs a web config with users; it refuses requests that come from a
/// browser (an Origin) or through a DNS name (a rebinding page's Host), and logs who changed
/// what.
#[test]
fn the_admin_api_over_tcp_needs_credentials_and_refuses_rebinding() {
    let scratch = Scratch::new("api-admin");
    let web = web_config(
        &scratch,
        "web.yml",
        &format!("basic_auth_users:\n  admin: {}\n", hash("hunter2")),
    );
    let refused = Command::new(tcpobs_binary())
        .args(["--admin-listen", "127.0.0.1:0", "--listen", "none"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("basic_auth_users"), "{stderr}");

    let port = closed_port();
    let admin = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&["--admin-listen", &admin, "--web-config-file", path(&web)]);
    let url = format!("http://{admin}/config");
    let change = r#"{"thresholds":{"idle_s":42}}"#;
    let put = |options: &[&str]| curl_with(options, "PUT", &url, Some(change), None);
    assert_eq!(put(&[]).0, 401, "no credentials");
    for (header, what) in [
        ("Host: tcpobs.attacker.example", "a DNS name"),
        ("Origin: http://attacker.example", "a browser"),
        ("Sec-Fetch-Site: cross-site", "a browser"),
    ] {
        let (status, body) = put(&["--user", "admin:hunter2", "-H", header]);
        assert_eq!(status, 403, "{what}: {body}");
    }
    let (status, body) = curl_with(
        &["--user", "admin:hunter2"],
        "GET",
        &format!("http://{admin}/config"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["runtime"]["thresholds"]["idle_s"], 300.0,
        "unchanged"
    );
    let (status, body) = put(&["--user", "admin:hunter2"]);
    assert_eq!(status, 200, "{body}");
    let line = daemon.wait_log("the change", |line| {
        line.contains("runtime settings changed")
    });
    assert!(
        line.contains("WARN") && line.contains("by=127.0.0.1:") && line.contains(" user admin"),
        "{line}"
    );
    assert!(line.contains(r#""idle_s":42.0"#), "{line}");
    // A web config re-read without users does not open the admin API.
    let no_users = web_config(
        &scratch,
        "web-no-users.yml",
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    );
    fs::copy(&no_users, &web).unwrap();
    daemon.signal(libc::SIGHUP);
    eventually("the web config without users", || {
        daemon
            .log()
            .iter()
            .any(|line| line.contains("web config re-read") && line.contains("basic_auth_users=0"))
    });
    let (status, body) = put(&[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs basic_auth_users"), "{body}");
}

/// With the open-file limit of the issue's test (soft 1,024), 2,000 idle sockets on the metrics
/// API: tcpobs raises its soft limit to the hard one, closes the oldest idle connections past
/// its bound, and `/healthz` and `/metrics` keep answering.
#[test]
fn two_thousand_idle_sockets_do_not_starve_healthz() {
    // This process holds the 2,000 client ends.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(
        limit.rlim_cur >= 2_200,
        "the test needs 2,200 files: {limit:?}"
    );
    let daemon = Daemon::start_with(
        &["prlimit", "--nofile=1024:8192"],
        &["--http-max-connections", "256"],
        &[],
    );
    let log = daemon.log().join("\n");
    assert!(
        log.contains("open-file limit raised to the hard limit from=1024 to=8192"),
        "{log}"
    );
    let idle: Vec<TcpStream> = (0..2_000)
        .map(|_| TcpStream::connect(daemon.api).expect("connect"))
        .collect();
    let (status, body) = daemon.api("GET", "/healthz", None, None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, metrics) = daemon.api("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let dropped = |reason: &str| {
        sample_value(
            &metrics,
            &format!(
                "tcpobs_http_connections_dropped_total{{listener=\"metrics\",reason=\"{reason}\"}}"
            ),
        )
        .unwrap()
    };
    // Closed to make room, or (on a machine slow enough to take 10 s over the 2,000 connects)
    // for sending no request in time.
    let closed = dropped("evicted") + dropped("timeout");
    let open = sample_value(&metrics, "tcpobs_http_connections{listener=\"metrics\"}").unwrap();
    assert!(open <= 256.0, "at most the bound is open: {open}");
    // Every idle socket past the bound made room by closing an older one (the health check and
    // the scrape did too).
    assert!(closed >= 2_000.0 - 256.0, "closed {closed}");
    assert_eq!(dropped("refused"), 0.0, "no request was in progress");
    // The oldest idle sockets were closed by tcpobs: they read end of file.
    let mut first = &idle[0];
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(
        first.read(&mut [0; 1]).unwrap(),
        0,
        "the oldest idle socket was closed"
    );
    assert!(
        daemon
            .log()
            .iter()
            .any(|line| line.contains("WARN") && line.contains("connection limit reached")),
        "{:#?}",
        daemon.log()
    );
    drop(idle);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// A client that never finishes its request headers (one more header line every half second,
/// forever) is closed by tcpobs (header-read timeout: 10 s) and counted.
#[test]
fn headers_that_never_end_are_timed_out() {
    let daemon = Daemon::start(&[]);
    let mut slow = TcpStream::connect(daemon.api).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let closed = loop {
        assert!(Instant::now() < deadline, "tcpobs kept the connection open");
        if std::io::Write::write_all(&mut slow, b"X-Slow: 1\r\n").is_err() {
            break true;
        }
        match slow.read(&mut [0; 512]) {
            Ok(0) => break true,
            Ok(_) => break false,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
    };
    assert!(closed, "tcpobs answered headers that never ended");
    let timeouts = daemon
        .metric("tcpobs_http_connections_dropped_total{listener=\"metrics\",reason=\"timeout\"}");
    assert_eq!(timeouts, 1.0);
}

/// Without an Accept header (curl) the classic text format, which promtool checks; Prometheus's
/// Accept header gets OpenMetrics.
#[test]
fn curl_gets_what_promtool_reads() {
    let daemon = Daemon::start(&[]);
    let (status, body) = daemon.api("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        !body.contains("# EOF") && body.contains("# TYPE tcpobs_build_info gauge"),
        "{body}"
    );
    if let Err(complaints) = tcpobs_tests::promtool_check_metrics(&body) {
        panic!("curl /metrics | promtool check metrics: {complaints}");
    }
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (_, body) = daemon.api("GET", "/metrics", None, Some(prometheus));
    assert!(body.ends_with("# EOF\n"), "OpenMetrics for Prometheus");
}

/// `loud` is not a level: refused from the flag, the environment, the config file (exit 2,
/// naming the setting) and `PUT /config` (400 naming `log_level`).
#[test]
fn log_level_loud_is_refused_from_every_source() {
    let scratch = Scratch::new("api-loglevel");
    let file = scratch.write("tcpobs.toml", "log-level = \"loud\"\n");
    for (args, env) in [
        (vec!["--log-level", "loud"], None),
        (vec![], Some(("TCPOBS_LOG_LEVEL", "loud"))),
        (vec!["--config", path(&file)], None),
    ] {
        let mut command = Command::new(tcpobs_binary());
        command.args(&args).env_remove("TCPOBS_LOG_LEVEL");
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("--log-level") && stderr.contains("`loud` is not a level"),
            "{args:?} {env:?}: {stderr}"
        );
    }
    let daemon = Daemon::start(&[]);
    let (status, body) = daemon.api("PUT", "/config", Some(r#"{"log_level":"loud"}"#), None);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("log_level") && body.contains("`loud` is not a level"),
        "{body}"
    );
    let (_, body) = daemon.api("GET", "/config", None, None);
    assert!(body.contains(r#""log_level":"info""#), "{body}");
}
