//! Name resolution with real resolvers: `getaddrinfo` through glibc and musl on
//! `localhost`, a container root with its own C library, a name from a hosts file the test
//! writes (in a mount namespace of its own), a `.invalid` name, and a resolver nobody answers
//! for; each resolution is tied to the connection that followed it.
//!
//! The phase probes see every process on the host: records are picked by the pids of the
//! processes each test starts.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tcpobs::{
    config::live::Filter,
    kernel::libcalls::RESCAN_INTERVAL,
    model::{DnsFailure, Role},
};
use tcpobs_tests::{
    Capture, PATIENCE, closed_port, connections,
    daemon::Daemon,
    listen, options,
    phases::{
        CONNECT_BY_NAME, LOOPBACK, Ran, Scratch, accept_one, client_of, dns_records, in_namespace,
        musl_resolver, python, run, timeline_names,
    },
};

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
    assert_eq!(
        timeline_names(&client)[..2],
        ["dns", "connect"],
        "{client:#?}"
    );
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

/// The process filters apply to resolutions, by the process that makes the call: with
/// `--pid` one process, its resolutions are reported and another's, made between them, is not.
#[test]
fn the_pid_filter_picks_whose_resolutions_are_reported() {
    // Resolves `localhost` once per line read, and says so: its pid is known before it
    // resolves anything.
    const RESOLVE_PER_LINE: &str = "import socket, sys\n\
        for _ in range(2):\n    \
            sys.stdin.readline()\n    \
            socket.getaddrinfo('localhost', 80)\n    \
            print('resolved', flush=True)\n";
    let mut chosen = Command::new(python())
        .args(["-c", RESOLVE_PER_LINE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut options = options(&[closed_port()]);
    options.filters.pids = Filter::Include(vec![chosen.id()]);
    let capture = Capture::start_with(options);
    let mut stdin = chosen.stdin.take().unwrap();
    let mut stdout = BufReader::new(chosen.stdout.take().unwrap());
    let mut resolve = |count| {
        stdin.write_all(b"go\n").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "resolved");
        capture.wait_for(
            &format!("resolution {count} of the chosen process"),
            |records| {
                let mine = dns_records(records, chosen.id());
                (mine.len() == count).then_some(())
            },
        );
    };
    // The probes are in place once the first is seen.
    resolve(1);
    // Another process, resolving the same way (the same interpreter, the same C library, whose
    // resolutions the chosen one's show are seen).
    let mut command = Command::new(python());
    command.args(["-c", "import socket; socket.getaddrinfo('localhost', 80)"]);
    let other = run(command);
    assert!(other.output.status.success(), "{:?}", other.output);
    // Its event, had it been sent, came before this one.
    resolve(2);
    drop(stdin);
    assert!(
        chosen.wait().unwrap().success(),
        "the chosen process failed"
    );
    let (records, _) = capture.stop();
    assert_eq!(
        dns_records(&records, chosen.id()).len(),
        2,
        "the chosen process's two resolutions"
    );
    assert_eq!(
        dns_records(&records, other.pid),
        Vec::new(),
        "the other process is not in the pid filter"
    );
}
