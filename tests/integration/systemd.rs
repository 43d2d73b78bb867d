//! The systemd service: the unit passes `systemd-analyze`, and the daemon runs as the unit
//! runs it (its command line, the shipped configuration, only the unit's capabilities),
//! tells the service manager `READY=1` once attached and `STOPPING=1` when it stops, and
//! needs each capability the unit grants.
//!
//! systemd itself does not run here (PID 1 is not systemd); `setpriv` applies the unit's
//! capability bounding set to a root process as systemd does, and a unix datagram socket in
//! `NOTIFY_SOCKET` stands in for systemd's notification socket.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs_tests::{PATIENCE, daemon::Daemon, listen, repo_file, tcpobs_binary};

const UNIT: &str = "packaging/systemd/tcpobs.service";
const CONFIG: &str = "packaging/tcpobs.toml";

/// The values of `key=` lines in the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    let text = fs::read_to_string(repo_file(UNIT)).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// The unit's capability bounding set, as `setpriv --bounding-set` takes it: `-all,+bpf,...`.
fn bounding_set(without: Option<&str>) -> String {
    let caps = unit_values("CapabilityBoundingSet");
    assert_eq!(caps.len(), 1, "one CapabilityBoundingSet line: {caps:?}");
    let mut set = "-all".to_owned();
    for cap in caps[0].split_whitespace() {
        assert!(cap.starts_with("CAP_"), "{cap}");
        if Some(cap) == without {
            continue;
        }
        set.push_str(",+");
        set.push_str(&cap["CAP_".len()..].to_lowercase());
    }
    set
}

/// `setpriv` options that give a root process the unit's capabilities, as systemd does for
/// `CapabilityBoundingSet=` with `NoNewPrivileges=yes` and no ambient capabilities.
fn as_the_unit(bounding: &str) -> Vec<String> {
    [
        "setpriv",
        "--bounding-set",
        bounding,
        "--inh-caps",
        "-all",
        "--no-new-privs",
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The arguments of the unit's `ExecStart=`, with the installed config path replaced by the
/// repository's copy; checks the paths `cargo xtask install` uses.
fn exec_start_args() -> Vec<String> {
    let exec = unit_values("ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    let mut words = exec[0].split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/tcpobs"));
    words
        .map(|word| {
            if word == "/etc/tcpobs/tcpobs.toml" {
                repo_file(CONFIG).to_str().unwrap().to_owned()
            } else {
                word.to_owned()
            }
        })
        .collect()
}

/// A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tcpobs-{name}-{}.sock", std::process::id()));
        let _ = fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        Self { socket, path }
    }

    fn env(&self) -> (&str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    fn receive(&self, what: &str) -> String {
        let mut buf = [0; 1024];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|err| panic!("no {what} notification: {err}"));
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The live table's entries on `port` once the client end of `marker`, a connection opened
/// after the others were accepted, shows: the kernel reported the others' ends before it, and
/// the daemon reads the kernel's events in order.
fn live_ends(daemon: &Daemon, port: u16, marker: &TcpStream) -> Vec<Value> {
    let client: SocketAddr = marker.local_addr().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = daemon.api("GET", &format!("/connections?port={port}"), None, None);
        assert_eq!(status, 200, "{body}");
        let table: Value = serde_json::from_str(&body).unwrap();
        let entries = table["connections"].as_array().unwrap().clone();
        if entries
            .iter()
            .any(|e| e["role"] == "client" && e["local_port"] == client.port())
        {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "the client end never showed up: {body}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_runs_as_the_unit_runs_it_and_notifies_systemd() {
    // A listener older than tcpobs: only the /proc scan at start-up can tell who owns it.
    let (listener, addr) = listen("127.0.0.1:0");
    let notify = NotifySocket::bind("notify");
    let me = std::process::id().to_string();
    let port = addr.port().to_string();
    let mut args = exec_start_args();
    args.extend(["--pid", &me, "--port", &port].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let wrapper = as_the_unit(&bounding_set(None));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with(&wrapper, &args, &[notify.env()]);

    let ready = notify.receive("READY=1");
    assert!(
        ready.lines().next() == Some("READY=1"),
        "the first notification is READY=1: {ready:?}"
    );
    assert!(
        ready.contains("STATUS=tracing TCP connections"),
        "{ready:?}"
    );
    let (status, body) = daemon.api("GET", "/readyz", None, None);
    assert_eq!(status, 200, "READY=1 means /readyz is ready: {body}");

    // The shipped configuration is in force.
    let (_, body) = daemon.api("GET", "/config", None, None);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["runtime"]["events"], "anomalies", "{body}");
    assert_eq!(config["runtime"]["sample"]["first"], 100, "{body}");
    assert_eq!(config["runtime"]["sample"]["thereafter"], 10, "{body}");
    assert_eq!(config["runtime"]["thresholds"]["idle_s"], 300.0, "{body}");

    // Traced with the unit's capabilities, both ends: the server end through the listener
    // found in /proc (which needs CAP_SYS_PTRACE).
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let marker = TcpStream::connect(addr).unwrap();
    let ends = live_ends(&daemon, addr.port(), &marker);
    let server_port = client.local_addr().unwrap().port();
    assert!(
        ends.iter()
            .any(|e| e["role"] == "server" && e["remote_port"] == server_port),
        "the accepted end is owned by this process: {ends:#?}"
    );
    drop((client, server, marker));

    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let stopping = notify.receive("STOPPING=1");
    assert!(
        stopping.lines().next() == Some("STOPPING=1"),
        "{stopping:?}"
    );
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    for (cap, needed_by) in [
        ("CAP_BPF", "missing: CAP_BPF)"),
        ("CAP_PERFMON", "missing: CAP_PERFMON)"),
    ] {
        let wrapper = as_the_unit(&bounding_set(Some(cap)));
        let output = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(tcpobs_binary())
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "without {cap}: {stderr}");
        assert!(stderr.contains(needed_by), "without {cap}: {stderr}");
    }

    // Without CAP_SYS_PTRACE the daemon runs, but cannot tell who owns a listener older than
    // itself, so the accepted end of a connection fails the --pid filter.
    let (listener, addr) = listen("127.0.0.1:0");
    let me = std::process::id().to_string();
    let port = addr.port().to_string();
    let wrapper = as_the_unit(&bounding_set(Some("CAP_SYS_PTRACE")));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with(&wrapper, &["--pid", &me, "--port", &port], &[]);
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let marker = TcpStream::connect(addr).unwrap();
    let ends = live_ends(&daemon, addr.port(), &marker);
    assert!(
        ends.iter().any(|e| e["role"] == "client"),
        "this process's connects are traced: {ends:#?}"
    );
    assert!(
        ends.iter().all(|e| e["role"] != "server"),
        "without CAP_SYS_PTRACE the listener's owner is unknown: {ends:#?}"
    );
    drop((client, server, marker));
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    // The unit as installed, but for ExecStart's binary, which `verify` checks exists.
    let dir = std::env::temp_dir().join(format!("tcpobs-unit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("tcpobs.service");
    let text = fs::read_to_string(repo_file(UNIT)).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/tcpobs "));
    fs::write(
        &unit,
        text.replace(
            "ExecStart=/usr/local/bin/tcpobs ",
            &format!("ExecStart={} ", tcpobs_binary().display()),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown keys and bad values are only warnings to `verify`: there must be none.
    assert!(
        !stderr.contains("tcpobs.service"),
        "systemd-analyze verify warns: {stderr}"
    );
    for key in [
        "Type",
        "Restart",
        "CapabilityBoundingSet",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
    ] {
        assert_eq!(unit_values(key).len(), 1, "{key}= in the unit");
    }
    assert_eq!(unit_values("Type"), ["notify"]);
    assert_eq!(unit_values("Restart"), ["on-failure"]);
    // Room for the API's connections (the daemon raises its soft limit to this), and the
    // admin socket's directory, writable under ProtectSystem=strict.
    assert_eq!(unit_values("LimitNOFILE"), ["65536"]);
    assert_eq!(unit_values("RuntimeDirectory"), ["tcpobs"]);

    // The hardening keeps the exposure score systemd computes under 3 (of 10).
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "exposure above 3.0: {report}{}",
        String::from_utf8_lossy(&security.stderr)
    );
    fs::remove_dir_all(&dir).unwrap();
}
