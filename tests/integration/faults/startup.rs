//! Starting and restarting: `kill -9` leaves no program, link or map of the dead instance, and
//! the next one starts cleanly; what is missing when tcpobs cannot start is named in one line
//! (capabilities, BTF, tracefs), and a bad config file names its line and key.

use std::{fs, io::Write as _, os::fd::FromRawFd as _, process::Command};

use tcpobs_tests::{daemon::Daemon, listen, tcpobs_binary};

use super::{Scrape, churn, json_lines, of_type, wait_until};

/// The ids of the BPF programs, links and maps a process holds, from its fdinfo.
#[derive(Debug, Default)]
struct BpfObjects {
    progs: Vec<u32>,
    links: Vec<u32>,
    maps: Vec<u32>,
}

impl BpfObjects {
    fn of(pid: u32) -> Self {
        let mut objects = Self::default();
        for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
            let Ok(info) = fs::read_to_string(entry.unwrap().path()) else {
                continue;
            };
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|value| value.trim().parse::<u32>().ok())
            };
            // A link's fdinfo names its program too: count the link only.
            if let Some(id) = field("link_id:") {
                objects.links.push(id);
            } else if let Some(id) = field("prog_id:") {
                objects.progs.push(id);
            } else if let Some(id) = field("map_id:") {
                objects.maps.push(id);
            }
        }
        objects
    }

    /// (kind, id) of each object that still exists in the kernel.
    fn alive(&self) -> Vec<(&'static str, u32)> {
        // BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID, BPF_LINK_GET_FD_BY_ID.
        [
            ("prog", 13, &self.progs),
            ("map", 14, &self.maps),
            ("link", 30, &self.links),
        ]
        .into_iter()
        .flat_map(|(kind, command, ids)| {
            ids.iter()
                .filter(move |&&id| exists(command, id))
                .map(move |&id| (kind, id))
        })
        .collect()
    }
}

/// Whether the kernel still has the BPF object `id` (`command`: a `*_GET_FD_BY_ID`).
fn exists(command: libc::c_long, id: u32) -> bool {
    // The id, `next_id` and `open_flags` of `union bpf_attr`.
    let attr = [id, 0, 0];
    // SAFETY: the bpf syscall reads `size_of_val(&attr)` bytes of a valid attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "id {id}: {err}");
        return false;
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    drop(unsafe { fs::File::from_raw_fd(fd as i32) });
    true
}

#[test]
fn kill_9_leaves_nothing_attached_and_a_restart_is_clean() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let out = std::env::temp_dir().join(format!("tcpobs-kill9-{}.json", std::process::id()));
    let _ = fs::remove_file(&out);
    let args = ["--port", &port, "--output", out.to_str().unwrap()];
    let mut first = Daemon::start(&args);
    churn(&listener, addr, 1);
    wait_until("2 events", || Scrape::of(&first).written() == 2.0);
    let objects = BpfObjects::of(first.pid());
    assert!(
        !objects.progs.is_empty() && !objects.links.is_empty() && !objects.maps.is_empty(),
        "{objects:?}"
    );
    assert_eq!(
        objects.alive().len(),
        objects.progs.len() + objects.links.len() + objects.maps.len()
    );
    first.signal(libc::SIGKILL);
    wait_until("the first instance dead", || !first.running());
    // Links are file descriptors: they die with the process, and the programs and maps with
    // them (the kernel frees them a moment later).
    wait_until("no program, link or map of it left", || {
        objects.alive().is_empty()
    });
    let uprobes = fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    assert!(
        !uprobes.contains(&format!("aya_{}", first.pid())),
        "no uprobe event of it left: {uprobes}"
    );
    drop(first);
    // As if the kill had cut a line short (`Restart=` then starts the next instance).
    let broken = "{\"type\":\"connection\",\"schema_ver";
    fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .unwrap()
        .write_all(broken.as_bytes())
        .unwrap();

    let second = Daemon::start(&args);
    let fresh = BpfObjects::of(second.pid());
    assert!(
        fresh.progs.iter().all(|id| !objects.progs.contains(id)),
        "new programs: {fresh:?}"
    );
    churn(&listener, addr, 2);
    wait_until("4 events", || Scrape::of(&second).written() == 4.0);
    let stopped = second.terminate_within_patience();
    assert!(
        stopped
            .log
            .iter()
            .any(|line| line.contains("ends in the middle of a line")),
        "{:#?}",
        stopped.log
    );
    // The broken line stands alone; every other line is whole.
    let text = fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[2], broken, "{text}");
    let mut rest = lines[..2].join("\n") + "\n";
    rest += &(lines[3..].join("\n") + "\n");
    let events = json_lines(&rest);
    let connections = of_type(&events, "connection");
    assert_eq!(connections.len(), 6, "{events:#?}");
    for event in connections {
        assert_eq!(event["partial"], false, "{event}");
    }
    let stats = events.last().unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["events_lost"], 0);
    assert_eq!(stats["unmatched_events"], 0);
    fs::remove_file(&out).unwrap();
}

/// Runs tcpobs through `wrapper` (empty for none); returns the exit code, stdout and stderr.
fn run(wrapper: &[&str], args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = match wrapper.split_first() {
        Some((program, options)) => {
            let mut command = Command::new(program);
            command.args(options).arg(tcpobs_binary());
            command
        }
        None => Command::new(tcpobs_binary()),
    };
    // No admin socket at the default path: another tcpobs on this host may hold it.
    let output = command
        .args(args)
        .args(["--admin-listen", "none"])
        .env_remove("TCPOBS_PROBE_STRATEGY")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (
        output.status.code(),
        text(output.stdout),
        text(output.stderr),
    )
}

/// One line on stderr besides INFO log lines (start-up progress), with exit code 1.
fn one_error_line(code: Option<i32>, stderr: &str) -> String {
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .trim()
        .lines()
        .filter(|line| !line.contains("  INFO "))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn root_without_capabilities_is_told_which_are_missing() {
    // As in a container or unit that drops every capability: uid 0, no CAP_BPF, CAP_PERFMON.
    let (code, _, stderr) = run(
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"],
        &["--listen", "127.0.0.1:0"],
    );
    let line = one_error_line(code, &stderr);
    assert!(
        line.contains("runs as root but without the capabilities")
            && line.contains("missing: CAP_BPF, CAP_PERFMON")
            && line.contains("CapabilityBoundingSet="),
        "{line}"
    );
    // One of the two.
    let (code, _, stderr) = run(
        &[
            "setpriv",
            "--bounding-set=-all,+bpf",
            "--inh-caps=-all",
            "--",
        ],
        &["--listen", "127.0.0.1:0"],
    );
    assert!(one_error_line(code, &stderr).contains("(missing: CAP_PERFMON)"));
}

#[test]
fn a_file_that_is_not_btf_is_named() {
    let path = std::env::temp_dir().join(format!("tcpobs-not-btf-{}", std::process::id()));
    fs::write(&path, "not BTF\n").unwrap();
    let (code, _, stderr) = run(&[], &["--btf", path.to_str().unwrap(), "--listen", "none"]);
    let line = one_error_line(code, &stderr);
    assert!(
        line.contains(&format!("{} is not usable kernel BTF", path.display()))
            && line.contains("--btf")
            && line.contains("CONFIG_DEBUG_INFO_BTF"),
        "{line}"
    );
    fs::remove_file(&path).unwrap();
}

/// tcpobs in a mount namespace of its own where tracefs is not mounted (`capabilities`: the
/// bounding set, e.g. `-all,+bpf,+perfmon`, or `None` to keep root's).
fn without_tracefs(capabilities: Option<&str>, args: &[&str]) -> (Option<i32>, String, String) {
    let drop_caps = capabilities
        .map(|set| format!("setpriv --bounding-set={set} --inh-caps=-all --"))
        .unwrap_or_default();
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         test ! -e /sys/kernel/tracing/events && exec {drop_caps} \"$0\" \"$@\""
    );
    let mut wrapped = vec!["--check", "--phases", "off"];
    wrapped.extend_from_slice(args);
    run(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
        &wrapped,
    )
}

#[test]
fn without_tracefs_classic_tracepoints_name_it_and_tp_btf_needs_none() {
    // No tracefs and no right to mount it (CAP_BPF and CAP_PERFMON only, as the unit runs).
    let (code, stdout, stderr) =
        without_tracefs(Some("-all,+bpf,+perfmon"), &["--tracepoints", "classic"]);
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if code == Some(0) {
        // The state family falls back to kprobes where the kernel has them.
        assert!(kprobes, "{stdout}{stderr}");
        assert!(stdout.contains("family=state strategy=kprobe"), "{stdout}");
    } else {
        let line = one_error_line(code, &stderr);
        assert!(
            line.contains("tracefs is not mounted at /sys/kernel/tracing")
                && line.contains("mount -t tracefs nodev /sys/kernel/tracing"),
            "{line}"
        );
    }
    // tp_btf programs need no tracefs.
    let (code, stdout, stderr) = without_tracefs(Some("-all,+bpf,+perfmon"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let families: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("family=") && l.contains("strategy="))
        .collect();
    for family in [
        "data",
        "resets",
        "retransmits",
        "drops",
        "close",
        "errors",
        "connect",
        "state",
    ] {
        assert!(
            families.iter().any(|l| {
                l.starts_with(&format!("family={family} strategy=tracepoint programs="))
            }),
            "the {family} family attached without tracefs: {stdout}"
        );
    }
    // The optional families whose hooks here are a system call tracepoint (accept, which
    // needs tracefs) or fentry/kprobes (probes) are named, and where missing, with why.
    for family in ["accept", "probes"] {
        assert!(
            families.iter().any(|l| {
                l.starts_with(&format!("family={family} strategy="))
                    && (!l.contains("strategy=none") || l.contains("why=\"cannot attach"))
            }),
            "the {family} family: {stdout}"
        );
    }
    assert_eq!(families.len(), 10, "every kernel family: {stdout}");
    // With the right to, tcpobs mounts tracefs itself (in its own mount namespace here).
    let (code, stdout, stderr) = without_tracefs(None, &["--tracepoints", "classic"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("family=state strategy=tracepoint programs=tracepoint"),
        "{stdout}"
    );
}

#[test]
fn config_file_errors_name_the_line_and_the_key() {
    let path = std::env::temp_dir().join(format!("tcpobs-bad-{}.toml", std::process::id()));
    for (content, needles) in [
        (
            "events = \"exchanges\"\n\n# the ring\nringbuf_bytes = \"big\"\n",
            &["line 4: `ringbuf_bytes`", "--ringbuf-bytes", "big"][..],
        ),
        (
            "events = \"exchanges\"\nport = [80,\nx = = 1\n",
            &["line 3"],
        ),
        ("\nmax_sockets = 10\n", &["line 2: `max_sockets`", "64..="]),
    ] {
        fs::write(&path, content).unwrap();
        let (code, _, stderr) = run(
            &[],
            &["--config", path.to_str().unwrap(), "--listen", "none"],
        );
        assert_eq!(code, Some(2), "{content}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{content}: {needle}: {stderr}");
        }
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    }
    fs::remove_file(&path).unwrap();
    // A bad environment value names its setting too.
    let output = Command::new(tcpobs_binary())
        .env("TCPOBS_OUTPUT_QUEUE_BYTES", "lots")
        .args(["--listen", "none"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--output-queue-bytes"));
}
