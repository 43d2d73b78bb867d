//! Output faults: a full file system, log rotation and removal, a slow, stopped or closed
//! reader of stdout. Tracing and metrics go on; every event is written or counted as dropped.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{ChildStdout, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs_tests::{PATIENCE, daemon::Daemon, listen};

use super::{Scrape, at_most_throttled, churn, json_lines, logged, of_type, wait_until};

/// A small tmpfs, mounted for the test in a directory of its own.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tcpobs-tmpfs-{}", std::process::id()));
        let _ = Command::new("umount")
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tcpobs-test"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Self { dir }
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = fs::File::create(&path).unwrap();
        let chunk = [b'x'; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
                    break;
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_disk_costs_counted_events_and_leaves_only_whole_lines() {
    let tmpfs = Tmpfs::mount("256k");
    let out = tmpfs.dir.join("events.json");
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let since = Instant::now();
    let mut daemon = Daemon::start(&[
        "--port",
        &port,
        "--output",
        out.to_str().unwrap(),
        "--log-level",
        "info,tcpobs::export::output::writer=debug",
    ]);
    churn(&listener, addr, 20);
    wait_until("40 events written", || {
        Scrape::of(&daemon).written() == 40.0
    });

    // The file system is full but for the rest of the file's last page: the first write that
    // does not fit writes what fits, then fails.
    let filler = tmpfs.fill();
    let before = fs::metadata(&out).unwrap().len();
    let slack = 4096 - before % 4096;
    churn(&listener, addr, 200);
    wait_until("440 events written or dropped", || {
        let scrape = Scrape::of(&daemon);
        scrape.written() + scrape.dropped("write_error") == 440.0
    });
    let full = Scrape::of(&daemon);
    assert_eq!(full.opened(), 440.0, "tracing went on");
    assert!(full.dropped("write_error") >= 1.0);
    assert!(full.errors("no_space") >= 1.0);
    assert_eq!(full.dropped("output_slow"), 0.0);
    assert!(daemon.running(), "ENOSPC is survived");
    assert_eq!(daemon.api("GET", "/healthz", None, None).0, 200);
    let text = fs::read_to_string(&out).unwrap();
    let events = json_lines(&text);
    assert_eq!(
        of_type(&events, "connection").len() as f64,
        full.written(),
        "every event counted as written is in the file, whole"
    );
    at_most_throttled(logged(&daemon, "cannot write events"), since);
    // The file can only have grown into its last page. Short of the page's end, the write
    // that filled the page ended inside a line, which was cut back; at the end exactly, it
    // ended on a line boundary and there was nothing to cut.
    let end = before + slack;
    assert!(text.len() as u64 <= end, "{} > {end}", text.len());
    if slack < 4096 && (text.len() as u64) < end {
        assert!(
            logged(&daemon, "a line written in part was cut back") >= 1,
            "the partial write was cut back to whole lines ({} bytes, the page ends at {end})",
            text.len()
        );
    }

    // Space again: writing resumes where the file ends, on a line of its own.
    fs::remove_file(filler).unwrap();
    churn(&listener, addr, 20);
    wait_until("480 events written or dropped", || {
        let scrape = Scrape::of(&daemon);
        scrape.written() + scrape.dropped("write_error") == 480.0
    });
    let after = Scrape::of(&daemon);
    assert_eq!(after.written(), full.written() + 40.0);
    assert_eq!(after.dropped("write_error"), full.dropped("write_error"));
    assert!(logged(&daemon, "writing events again") >= 1);
    let dropped = after.sum("tcpobs_output_events_dropped_total");
    let errors = after.sum("tcpobs_output_errors_total");

    daemon.terminate_within_patience();
    let events = json_lines(&fs::read_to_string(&out).unwrap());
    assert_eq!(of_type(&events, "connection").len() as f64, after.written());
    let stats = events.last().unwrap();
    assert_eq!(stats["type"], "stats", "the final stats event is written");
    assert_eq!(stats["output_events_dropped"], dropped);
    assert_eq!(stats["output_write_errors"], errors);
    assert_eq!(stats["events_lost"], 0);
}

#[test]
fn log_rotation_reopens_the_file_on_sighup() {
    let dir = std::env::temp_dir().join(format!("tcpobs-rotation-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("events.json");
    let rotated = dir.join("events.json.1");
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let daemon = Daemon::start(&["--port", &port, "--output", out.to_str().unwrap()]);
    let connections = |path: &Path| {
        let text = fs::read_to_string(path).unwrap_or_default();
        of_type(&json_lines(&text), "connection").len()
    };
    churn(&listener, addr, 3);
    wait_until("6 events", || connections(&out) == 6);

    // logrotate renames the file: events go on into it until SIGHUP (its postrotate).
    fs::rename(&out, &rotated).unwrap();
    churn(&listener, addr, 3);
    wait_until("12 events in the renamed file", || {
        connections(&rotated) == 12
    });
    assert!(!out.exists());
    daemon.signal(libc::SIGHUP);
    wait_until("the file reopened, before any event", || out.exists());
    churn(&listener, addr, 3);
    wait_until("6 events in the new file", || connections(&out) == 6);

    // Removed: tcpobs says so (events go to the removed file), and SIGHUP recreates it.
    fs::remove_file(&out).unwrap();
    let mut churned = 0;
    wait_until("a warning about the removed file", || {
        churn(&listener, addr, 1);
        churned += 1;
        logged(&daemon, "the output file was removed") == 1
    });
    let total = 2.0 * f64::from(9 + churned);
    wait_until("every event so far written", || {
        Scrape::of(&daemon).written() == total
    });
    daemon.signal(libc::SIGHUP);
    wait_until("the file recreated", || out.exists());
    churn(&listener, addr, 2);
    wait_until("4 events in the recreated file", || connections(&out) == 4);

    daemon.terminate_within_patience();
    let events = json_lines(&fs::read_to_string(&out).unwrap());
    assert_eq!(of_type(&events, "connection").len(), 4);
    assert_eq!(events.last().unwrap()["type"], "stats");
    let old = json_lines(&fs::read_to_string(&rotated).unwrap());
    assert_eq!(
        of_type(&old, "connection").len(),
        12,
        "nothing written twice"
    );
    assert_eq!(of_type(&old, "stats").len(), 0);
    fs::remove_dir_all(&dir).unwrap();
}

/// Reads the daemon's stdout in a thread, at a pace the test sets, keeping the bytes.
struct Reader {
    bytes: Arc<Mutex<Vec<u8>>>,
    paused: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reader {
    /// Starts paused when `paused`; reads 4 KiB every `pace` otherwise.
    fn start(stdout: ChildStdout, paused: bool, pace: Duration) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(paused));
        let (kept, gate) = (Arc::clone(&bytes), Arc::clone(&paused));
        let thread = thread::spawn(move || {
            let mut stdout = stdout;
            let mut chunk = [0; 4096];
            loop {
                if gate.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => kept.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
                thread::sleep(pace);
            }
        });
        Self {
            bytes,
            paused,
            thread: Some(thread),
        }
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// The whole lines read so far.
    fn lines(&self) -> Vec<Value> {
        let bytes = self.bytes.lock().unwrap();
        let end = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        json_lines(std::str::from_utf8(&bytes[..end]).unwrap())
    }

    /// Everything, once the daemon has exited (end of file).
    fn finish(mut self) -> Vec<Value> {
        self.thread.take().unwrap().join().unwrap();
        let bytes = self.bytes.lock().unwrap();
        json_lines(std::str::from_utf8(&bytes).unwrap())
    }
}

#[test]
fn a_slow_reader_costs_counted_events_never_tracing() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let since = Instant::now();
    let (daemon, stdout) = Daemon::start_piped(&["--port", &port, "--output-queue-bytes", "65536"]);
    let reader = Reader::start(stdout, true, Duration::from_millis(1));
    // Nobody reads: the pipe (64 KiB) and the queue (64 KiB) fill with the first ~200 events.
    let connections = 1500;
    let events = 2.0 * connections as f64;
    churn(&listener, addr, connections);
    wait_until("every connection counted by the metrics", || {
        Scrape::of(&daemon).opened() == events
    });
    let stalled = Scrape::of(&daemon);
    assert!(
        stalled.dropped("output_slow") > events / 2.0,
        "most events dropped, counted: {}",
        stalled.dropped("output_slow")
    );
    assert_eq!(stalled.value("tcpobs_events_lost_total"), 0.0);
    assert!(stalled.value("tcpobs_output_queue_bytes") <= 65536.0 + 4096.0);
    assert_eq!(daemon.api("GET", "/healthz", None, None).0, 200);
    assert_eq!(daemon.api("GET", "/readyz", None, None).0, 200);
    let warned = logged(&daemon, "the output is behind");
    at_most_throttled(warned, since);

    // The reader catches up: what was queued arrives, whole, and the counts add up.
    reader.resume();
    wait_until("every event written or dropped", || {
        let scrape = Scrape::of(&daemon);
        scrape.written() + scrape.dropped("output_slow") == events
    });
    let caught_up = Scrape::of(&daemon);
    wait_until("the reader has every written event", || {
        of_type(&reader.lines(), "connection").len() as f64 == caught_up.written()
    });
    let dropped = caught_up.sum("tcpobs_output_events_dropped_total");

    daemon.terminate_within_patience();
    let lines = reader.finish();
    let stats = lines.last().unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["output_events_dropped"], dropped);
    assert_eq!(stats["events_lost"], 0);
}

#[test]
fn sigterm_stops_tcpobs_while_nobody_reads_its_output() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let (daemon, stdout) = Daemon::start_piped(&[
        "--port",
        &port,
        "--output-queue-bytes",
        "65536",
        "--threshold-close-wait",
        "1s",
        "--sweep-interval",
        "200ms",
    ]);
    churn(&listener, addr, 1000);
    wait_until("every connection counted and the output full", || {
        let scrape = Scrape::of(&daemon);
        scrape.opened() == 2000.0 && scrape.dropped("output_slow") > 0.0
    });
    // The hang detector works on: a server that never closes after its client did.
    let client = TcpStream::connect(addr).unwrap();
    let (leaked, _) = listener.accept().unwrap();
    drop(client);
    wait_until("the CLOSE_WAIT leak flagged", || {
        Scrape::of(&daemon).value("tcpobs_stuck_connections{phase=\"close_wait\"}") == 1.0
    });
    // The writer is blocked in write(2) on a full pipe; the daemon stops anyway, and says
    // what it could not write.
    let stopped = daemon.terminate_within_patience();
    let said = |needle: &str| stopped.log.iter().any(|line| line.contains(needle));
    assert!(
        said("the output did not take the last events within 5s")
            && said("the final stats event is not written"),
        "{:#?}",
        stopped.log
    );
    drop((stdout, leaked));
}

#[test]
fn a_closed_stdout_pipe_is_counted_and_survived() {
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let (mut daemon, stdout) = Daemon::start_piped(&["--port", &port]);
    churn(&listener, addr, 2);
    // Read the first four events, then close the pipe (as `tcpobs | head -4` does).
    let (lines, read) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        for _ in 0..4 {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            lines.send(line.clone()).unwrap();
        }
    });
    for _ in 0..4 {
        let line = read.recv_timeout(PATIENCE).expect("four events on stdout");
        assert!(line.contains("\"type\":\"connection\""), "{line}");
    }
    // The thread has ended: the read end is closed.
    let since = Instant::now();
    for round in 1..=10 {
        churn(&listener, addr, 3);
        wait_until("one more broken pipe", || {
            Scrape::of(&daemon).errors("broken_pipe") >= f64::from(round)
        });
    }
    wait_until("64 events written or dropped", || {
        let scrape = Scrape::of(&daemon);
        scrape.written() + scrape.dropped("write_error") == 64.0
    });
    let scrape = Scrape::of(&daemon);
    assert_eq!(scrape.written(), 4.0);
    assert_eq!(scrape.dropped("write_error"), 60.0);
    assert_eq!(scrape.opened(), 64.0, "tracing went on");
    assert!(daemon.running(), "EPIPE (and SIGPIPE) are survived");
    assert_eq!(daemon.api("GET", "/healthz", None, None).0, 200);
    at_most_throttled(logged(&daemon, "cannot write events"), since);
    // A clean stop (exit code 0), not a death by SIGPIPE: the harness checks it.
    let stopped = daemon.terminate_within_patience();
    assert!(
        stopped
            .log
            .iter()
            .any(|line| line.contains("the final stats event is not written")),
        "{:#?}",
        stopped.log
    );
}
