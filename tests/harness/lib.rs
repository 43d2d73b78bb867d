//! Test harness: runs the real tracer (real kernel programs) in a background thread and
//! collects its records, filtered in the kernel to the test's own ports, so other traffic on
//! the machine never shows up.
//!
//! Tests share the kernel's tracepoints; a global lock runs them one at a time.
//!
//! The phase probes (uprobes on the C library and libssl) see every process on the host, so
//! phase tests pick their records by the pids of the processes they start.
//!
//! The OpenTelemetry export tests receive with real OTLP receivers ([`otlp`]).

pub mod daemon;
pub mod kernel;
pub mod netns;
pub mod nginx;
pub mod otlp;
pub mod phases;
pub mod prometheus;
pub mod traffic;

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use tcpobs::{
    app::daemon::{Stats, Timing, Tracer},
    config::live::{EventSelection, Filter, Filters, LiveSettings, Thresholds},
    export::output::Sink,
    kernel::{
        folds::ExchangeOptions,
        libcalls::LibcallOptions,
        loader::{LoadOptions, StrategyChoice, TracepointMode},
        report::FamilyAttach,
    },
    model::{ConnectionRecord, ExchangeRecord, Record, Role},
};

/// How long to wait for records to show up before failing. Generous: the machine is shared
/// and may be loaded; passing tests never wait this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How long the daemon may take to load and attach its programs. Longer than [`PATIENCE`]: in
/// the kernel matrix's guests (software emulation, on a host that may be busy) verifying and
/// attaching every fentry program takes tens of seconds; on a host, about one.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(90);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tcpobs binary built for these tests.
pub fn tcpobs_binary() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tcpobs");
    assert!(
        target.exists(),
        "{} missing: build it with `cargo build -p tcpobs` (cargo xtask test does)",
        target.display()
    );
    target
}

/// The attach strategy the whole suite runs with: `TCPOBS_PROBE_STRATEGY` if set (the kernel
/// matrix runs the suite once per strategy), else `auto`. Daemons the tests start inherit the
/// variable, and read it themselves.
pub fn strategy() -> StrategyChoice {
    std::env::var("TCPOBS_PROBE_STRATEGY")
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|err| panic!("TCPOBS_PROBE_STRATEGY: {err}"))
        })
        .unwrap_or_default()
}

/// A file of the repository (`packaging/...`, `deploy/...`).
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Runs a checker script of `tests/deploy/` on `dir` with the PyPI tools `cargo xtask setup`
/// installs in `target/tools/venv` (xtask's setup::VENV): (success, its report).
pub fn venv_check(script: &str, dir: &std::path::Path) -> (bool, String) {
    let python = repo_file("target/tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup`",
        python.display()
    );
    let output = std::process::Command::new(&python)
        .arg(repo_file(&format!("tests/deploy/{script}")))
        .arg(dir)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

/// `promtool check metrics` on an exposition: `Err` with promtool's complaints.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    if checked.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    ))
}

/// Load options for the test's ports, with the defaults the daemon uses.
pub fn options(ports: &[u16]) -> LoadOptions {
    LoadOptions {
        btf_path: "/sys/kernel/btf/vmlinux".into(),
        strategy: strategy(),
        tracepoints: TracepointMode::Auto,
        max_sockets: 4096,
        ringbuf_bytes: 1 << 20,
        filters: Filters {
            ports: Filter::Include(ports.to_vec()),
            ..Filters::default()
        },
        libcalls: LibcallOptions::default(),
        // No folding: every exchange comes as an event, which the tests read as records.
        exchanges: ExchangeOptions::default(),
        defer_opens: true,
    }
}

/// Runtime settings for captures: the defaults, with the hang detector's thresholds given.
pub fn runtime(thresholds: Thresholds) -> LiveSettings {
    LiveSettings {
        events: EventSelection::Exchanges,
        sample: None,
        thresholds,
        log_level: "info".to_owned(),
        filters: Filters::default(),
    }
}

struct SharedSink(Arc<Mutex<Vec<Record>>>);

impl Sink for SharedSink {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.0.lock().unwrap().push(record.clone());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A running tracer and what it has produced so far.
pub struct Capture {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Stats>>,
    families: Vec<FamilyAttach>,
    _serial: MutexGuard<'static, ()>,
}

impl Capture {
    /// Starts tracing connections on `ports` (local or remote).
    pub fn start(ports: &[u16]) -> Self {
        Self::start_with(options(ports))
    }

    pub fn start_with(options: LoadOptions) -> Self {
        Self::start_full(options, runtime(Thresholds::default()))
    }

    /// Starts tracing with these runtime settings (thresholds for the hang detector); the
    /// sweep runs every 200 ms.
    pub fn start_full(options: LoadOptions, runtime: LiveSettings) -> Self {
        let serial = serial();
        let records = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, started) = mpsc::channel();
        let shared = Arc::clone(&records);
        let thread = thread::spawn(move || {
            let executor = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            executor.block_on(async move {
                let mut tracer = match Tracer::start(&options) {
                    Ok(tracer) => tracer,
                    Err(err) => {
                        ready.send(Err(err.to_string())).unwrap();
                        return Stats::default();
                    }
                };
                ready.send(Ok(tracer.families().to_vec())).unwrap();
                let mut sink = SharedSink(shared);
                let (_keep, changes) = tokio::sync::watch::channel(runtime);
                let timing = Timing {
                    drain: Duration::from_millis(5),
                    sweep: Duration::from_millis(200),
                };
                tracer
                    .run(&mut sink, timing, changes, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
                tracer.stop(&mut sink).unwrap()
            })
        });
        let families = match started.recv().unwrap() {
            Ok(families) => families,
            Err(err) => panic!("tcpobs failed to start: {err}"),
        };
        Self {
            records,
            stop: Some(stop),
            thread: Some(thread),
            families,
            _serial: serial,
        }
    }

    /// How each hook family is attached.
    pub fn families(&self) -> &[FamilyAttach] {
        &self.families
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Polls until `check` finds what it wants in the records; panics after [`PATIENCE`]
    /// with everything recorded so far.
    pub fn wait_for<T>(&self, what: &str, check: impl Fn(&[Record]) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = check(&self.records.lock().unwrap()) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; records: {:#?}",
                    self.records()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `n` closed connections (connection records with a close) and returns all
    /// connection records.
    pub fn wait_connections(&self, n: usize) -> Vec<ConnectionRecord> {
        self.wait_for(&format!("{n} closed connections"), |records| {
            let closed: Vec<_> = connections(records)
                .into_iter()
                .filter(|connection| connection.close.is_some())
                .collect();
            (closed.len() >= n).then_some(closed)
        })
    }

    /// Stops the tracer (detach, drain, flush open connections) and returns everything.
    pub fn stop(mut self) -> (Vec<Record>, Stats) {
        self.stop.take().unwrap().send(()).unwrap();
        let stats = self.thread.take().unwrap().join().unwrap();
        (self.records(), stats)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn connections(records: &[Record]) -> Vec<ConnectionRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Connection(connection) => Some(connection.clone()),
            _ => None,
        })
        .collect()
}

pub fn exchanges(records: &[Record]) -> Vec<ExchangeRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Exchange(exchange) => Some(exchange.clone()),
            _ => None,
        })
        .collect()
}

/// The exchanges of one connection, in order.
pub fn exchanges_of(records: &[Record], conn_id: u64) -> Vec<ExchangeRecord> {
    let mut found: Vec<_> = exchanges(records)
        .into_iter()
        .filter(|exchange| exchange.conn_id == conn_id)
        .collect();
    found.sort_by_key(|exchange| exchange.seq);
    found
}

pub fn by_role(connections: &[ConnectionRecord], role: Role) -> ConnectionRecord {
    let found: Vec<_> = connections.iter().filter(|c| c.role == role).collect();
    assert_eq!(
        found.len(),
        1,
        "one {role:?} connection expected: {connections:#?}"
    );
    found[0].clone()
}

/// A listener on a free loopback port (`"127.0.0.1:0"` or `"[::1]:0"`).
pub fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A loopback address of this test's own (`127.x.y.z`, never `127.0.0.1`): every address in
/// 127/8 is local, so a test that listens on one and passes `--cidr <it>/32` sees only its own
/// connections, whatever other processes on the host do on the same port numbers.
pub fn private_loopback() -> std::net::Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    std::net::Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (n / 250) as u8,
        2 + (n % 250) as u8,
    )
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let (listener, addr) = listen("127.0.0.1:0");
    drop(listener);
    addr.port()
}

/// SO_LINGER with a zero timeout: `close()` then sends a reset instead of FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, valid pointer and length for SO_LINGER.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        io::Error::last_os_error()
    );
}

/// Reads exactly `n` bytes.
pub fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Writes all of `data`.
pub fn write_all(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).unwrap();
}

/// Seconds, for assertion messages.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The anomaly records so far.
pub fn anomalies(records: &[Record]) -> Vec<tcpobs::model::AnomalyRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Anomaly(anomaly) => Some(anomaly.clone()),
            _ => None,
        })
        .collect()
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the kernel programs' clock.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The calling thread's name as the kernel keeps it (`comm`).
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim()
        .to_owned()
}
