//! The `tcpobs` binary: flags, exit codes, privilege and kernel-feature errors, the signal
//! path (detach, flush open connections, exit 0), and both output formats from real runs.

use std::{io::Read, net::TcpStream, process::Command};

use serde_json::Value;
use tcpobs::kernel::loader::FAMILIES;
use tcpobs_tests::{
    closed_port,
    daemon::Daemon,
    listen,
    nginx::{Nginx, curl},
    read_n, tcpobs_binary, write_all,
};

fn tcpobs(args: &[&str]) -> std::process::Output {
    Command::new(tcpobs_binary())
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap()
}

#[test]
fn help_explains_every_setting() {
    let output = tcpobs(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--format",
        "--log-format",
        "--output",
        "--events",
        "--port",
        "--tracepoints",
        "--probe-strategy",
        "--check",
        "--max-sockets",
        "--ringbuf-bytes",
        "--drain-interval",
        "--log-level",
        "--phases",
        "--defer-opens",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn invalid_settings_exit_2_and_name_the_setting() {
    for (args, needle) in [
        (&["--format", "xml"][..], "--format"),
        (
            &[
                "--format",
                "justniffer",
                "-l",
                "%dest.port %request.header.host",
            ],
            "%request.header.host",
        ),
        (&["--port", "http"], "--port"),
        (&["--ringbuf-bytes", "1000"], "--ringbuf-bytes"),
        (&["--output", "/nonexistent/dir/out.json"], "--output"),
        (&["--probe-strategy", "uprobe"], "--probe-strategy"),
        (&["--probe-strategy", "state=fentry"], "no fentry strategy"),
        (&["--probe-strategy", "dns=kprobe"], "unknown hook family"),
        (&["--probe-strategy", "state=off"], "cannot be turned off"),
        (
            &["--probe-strategy", "off"],
            "optional families: drops, accept",
        ),
    ] {
        let output = tcpobs(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn unprivileged_user_gets_one_line_and_exit_1() {
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tcpobs_binary())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn missing_btf_names_the_kernel_feature() {
    let output = tcpobs(&["--btf", "/nonexistent/vmlinux"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--check` attaches every family, says how, and exits; the same with every strategy forced
/// either works on this kernel or names what the kernel lacks.
#[test]
fn check_reports_every_family_or_what_is_missing() {
    let output = Command::new(tcpobs_binary())
        .arg("--check")
        .env_remove("TCPOBS_PROBE_STRATEGY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("family="))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    // Every kernel family in attach order, then the optional ones that could not attach here
    // (`strategy=none`, with why), then the phase families: uprobes on the host's C library
    // and libssl.
    let unattached: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(" strategy=none "))
        .filter_map(|line| line.strip_prefix("family="))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    let mut expected: Vec<&str> = FAMILIES
        .iter()
        .map(|family| family.name)
        .filter(|name| !unattached.contains(name))
        .collect();
    expected.extend(&unattached);
    expected.extend(["dns", "tls"]);
    assert_eq!(families, expected, "{stdout}");
    for name in &unattached {
        let family = FAMILIES.iter().find(|f| f.name == *name).unwrap();
        assert!(family.optional, "{name} did not attach: {stdout}");
    }
    assert!(
        stdout.contains("read=live_sockets source=sampler hz="),
        "{stdout}"
    );
    for family in ["dns", "tls"] {
        assert!(
            stdout.contains(&format!(
                "family={family} strategy=uprobe programs=uprobe+uretprobe libraries="
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .all(|line| line.contains(" strategy=") || line.starts_with("read=")),
        "{stdout}"
    );
    // kprobes are not compiled into this host's kernel; fentry is refused by it. Elsewhere
    // (the QEMU kernel matrix) they work.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    for (strategy, available, missing) in [
        ("kprobe", kprobes, "CONFIG_KPROBES"),
        ("fentry", true, "BPF trampolines"),
    ] {
        let output = Command::new(tcpobs_binary())
            .args(["--check", "--probe-strategy", strategy])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        if output.status.success() {
            assert!(available, "{strategy} attached on a kernel without it");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                stdout.contains(&format!("family=data strategy={strategy}")),
                "{stdout}"
            );
        } else {
            assert_eq!(output.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains(missing) && stderr.contains("--probe-strategy"),
                "{strategy}: {stderr}"
            );
        }
    }
}

/// `--probe-strategy accept=off`: the check passes and says the family is off, and which
/// field that leaves empty.
#[test]
fn check_names_a_family_turned_off() {
    let output = tcpobs(&["--check", "--probe-strategy", "accept=off"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let why = "turned off by --probe-strategy accept=off";
    assert!(
        stdout.contains(&format!(
            "family=accept strategy=none programs=none why=\"{why}\""
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "read=accept_wait source=none why=\"{why}: accept_wait_s null or 0\""
        )),
        "{stdout}"
    );
    assert!(stdout.contains("family=state strategy="), "{stdout}");
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
}

#[test]
fn sigterm_flushes_open_connections_and_exits_0() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let daemon = Daemon::start(&["--port", &port, "--events", "exchanges"]);
    // One connection that closes, one left open.
    {
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        write_all(&mut client, b"GET");
        assert_eq!(read_n(&mut server, 3), b"GET");
        write_all(&mut server, b"OK");
        assert_eq!(read_n(&mut client, 2), b"OK");
        // The client closes first.
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).unwrap();
    }
    let mut open_client = TcpStream::connect(addr).unwrap();
    let (mut open_server, _) = listener.accept().unwrap();
    write_all(&mut open_client, b"x");
    assert_eq!(read_n(&mut open_server, 1), b"x");
    daemon.wait_lines("two connection events", |lines| {
        lines
            .iter()
            .filter(|l| l.contains("\"type\":\"connection\""))
            .count()
            >= 2
    });
    let (code, lines) = daemon.terminate();
    assert_eq!(code, Some(0), "{lines:#?}");
    let events: Vec<Value> = lines.iter().map(|line| json(line)).collect();
    for event in &events {
        assert_eq!(event["schema_version"], 1, "{event}");
        assert!(event["type"].is_string(), "{event}");
    }
    let closed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "connection" && e["open"] == false)
        .collect();
    assert_eq!(closed.len(), 2, "{events:#?}");
    for event in &closed {
        assert_eq!(event["close_originator"], "client", "{event}");
        assert_eq!(event["close_kind"], "fin");
        assert_eq!(event["exchanges"], 1);
    }
    let open: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "connection" && e["open"] == true)
        .collect();
    assert_eq!(
        open.len(),
        2,
        "the open connection, from both ends: {events:#?}"
    );
    for event in &open {
        assert_eq!(event["partial"], true);
        assert_eq!(event["partial_reason"], "shutdown");
        assert!(event["close_originator"].is_null());
    }
    let exchanges: Vec<_> = events.iter().filter(|e| e["type"] == "exchange").collect();
    // GET/OK on the closed connection (both ends), and the request "x" on the open one,
    // still a burst in the kernel at SIGTERM, completed from the kernel's record.
    assert_eq!(exchanges.len(), 4, "{events:#?}");
    let unanswered: Vec<_> = exchanges
        .iter()
        .filter(|e| e["response_s"].is_null())
        .collect();
    assert_eq!(unanswered.len(), 2, "{exchanges:#?}");
    for exchange in unanswered {
        assert_eq!(exchange["class"], "start");
        assert_eq!(exchange["request_bytes"], 1);
    }
    let stats = events.last().unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["events_lost"], 0);
    assert_eq!(stats["unmatched_events"], 0);
    drop((open_client, open_server));
}

#[test]
fn justniffer_lines_from_nginx_and_curl() {
    let nginx = Nginx::start(closed_port(), "75s");
    let port = nginx.port.to_string();
    let format = "%request.timestamp %source.ip %dest.port c=%connection.time i=%idle.time.0 \
                  req=%request.time resp=%response.time i2=%idle.time.1 s=%session.time \
                  n=%session.requests %connection %close.originator";
    let daemon = Daemon::start(&["--port", &port, "--format", "justniffer", "-l", format]);
    let url = nginx.url("/");
    curl(&[&url, &url, &url]);
    let lines = daemon.wait_lines("six exchange lines", |lines| lines.len() >= 6);
    let (code, after) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(
        after.len(),
        6,
        "no stats line in justniffer format: {after:#?}"
    );
    for line in &lines {
        eprintln!("{line}");
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 13, "{line}");
        assert_eq!(fields[0].len(), 10, "date: {line}");
        assert_eq!(fields[1].len(), 15, "time with microseconds: {line}");
        assert_eq!(fields[2], "127.0.0.1");
        assert_eq!(fields[3], port);
        let seq: u32 = fields[10].trim_start_matches("n=").parse().unwrap();
        let class = fields[11];
        let expected = match seq {
            1 => "start",
            2 => "continue",
            _ => "last",
        };
        assert_eq!(class, expected, "{line}");
        if seq == 1 {
            assert!(
                fields[4].starts_with("c=0.") && fields[5].starts_with("i=0."),
                "{line}"
            );
        } else {
            assert_eq!((fields[4], fields[5]), ("c=-", "i=-"), "{line}");
        }
        for field in &fields[6..10] {
            let value = field.split('=').nth(1).unwrap();
            let seconds: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{field} in {line}"));
            assert!(value.len() >= 8 && seconds < 10.0, "{field} in {line}");
        }
        assert!(
            line.ends_with(if seq == 3 { "last client" } else { " -" }),
            "{line}"
        );
    }
}

#[test]
fn refused_connections_are_reported() {
    let port = closed_port();
    let daemon = Daemon::start(&["--port", &port.to_string()]);
    let mut buf = [0u8; 1];
    assert!(
        TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| s.read(&mut buf))
            .is_err()
    );
    let lines = daemon.wait_lines("a connection event", |lines| !lines.is_empty());
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let event = json(&lines[0]);
    assert_eq!(event["type"], "connection");
    assert_eq!(event["connect_failure"], "refused");
    assert_eq!(event["error"], "ECONNREFUSED");
    assert_eq!(event["remote_port"], port);
    assert!(event["connect_s"].is_null());
}
