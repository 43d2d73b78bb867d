//! The tcpobs binary as a child process, with its HTTP API and its event output.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{PATIENCE, STARTUP_PATIENCE, tcpobs_binary};

static DAEMONS: AtomicU32 = AtomicU32::new(0);

/// A running daemon; its stderr is echoed and watched for the start-up lines.
pub struct Daemon {
    child: Child,
    pub output: PathBuf,
    /// Whether `output` is the harness's own temporary file (removed when the daemon is
    /// dropped, kept when the test fails: a flood test's output runs to gigabytes).
    own_output: bool,
    /// Where its metrics API listens (an ephemeral port).
    pub api: SocketAddr,
    /// Its admin API's Unix socket (unless `args` chose another `--admin-listen`).
    pub admin: Option<PathBuf>,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `log` until the daemon exits.
    log_thread: Option<thread::JoinHandle<()>>,
}

/// What a daemon that stopped cleanly left.
pub struct Stopped {
    /// Its output file's lines.
    pub lines: Vec<String>,
    /// Its whole log.
    pub log: Vec<String>,
}

impl Daemon {
    /// Starts `tcpobs` with `args`, events to a temporary file, the metrics API on an
    /// ephemeral loopback port (unless `args` has `--listen`), the admin API on a Unix socket
    /// in the temporary directory (unless `args` has `--admin-listen`), and waits until it
    /// traces.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(&[], args, &[])
    }

    /// Like [`Daemon::start`], run through `wrapper` (a command and its options that ends by
    /// running the program after it, such as `setpriv ... --`; empty for none) and with `env`
    /// added to the environment. With `--output` in `args`, events go there.
    pub fn start_with(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(wrapper, args, env, false).0
    }

    /// Like [`Daemon::start`], with events on the daemon's stdout, a pipe the test reads (or
    /// does not, or closes).
    pub fn start_piped(args: &[&str]) -> (Self, ChildStdout) {
        let (daemon, stdout) = Self::launch(&[], args, &[], true);
        (daemon, stdout.expect("piped stdout"))
    }

    fn launch(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        piped: bool,
    ) -> (Self, Option<ChildStdout>) {
        let given = args
            .iter()
            .position(|arg| *arg == "--output")
            .map(|at| PathBuf::from(args[at + 1]));
        let output = given.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "tcpobs-daemon-{}-{}.out",
                std::process::id(),
                DAEMONS.fetch_add(1, Ordering::Relaxed)
            ))
        });
        if given.is_none() {
            let _ = fs::remove_file(&output);
        }
        let output_args = if given.is_some() || piped {
            Vec::new()
        } else {
            vec!["--output".to_owned(), output.display().to_string()]
        };
        let listen = if args.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        let admin = (!args.contains(&"--admin-listen")).then(|| output.with_extension("sock"));
        let _ = admin.as_ref().map(fs::remove_file);
        let admin_listen = admin
            .iter()
            .flat_map(|path| {
                [
                    "--admin-listen".to_owned(),
                    format!("unix:{}", path.display()),
                ]
            })
            .collect::<Vec<_>>();
        let mut command = match wrapper.split_first() {
            Some((program, options)) => {
                let mut command = Command::new(program);
                command.args(options).arg(tcpobs_binary());
                command
            }
            None => Command::new(tcpobs_binary()),
        };
        let mut child = command
            .envs(env.iter().copied())
            .args(output_args)
            .args(["--drain-interval", "5ms"])
            .args(listen)
            .args(&admin_listen)
            .args(args)
            .stdout(if piped {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().unwrap();
        let (ready, started) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        let log_thread = thread::spawn(move || {
            let mut api = None;
            // Lossy: a line that is not UTF-8 must not end the log (and hide what follows).
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                eprintln!("tcpobs: {line}");
                kept.lock().unwrap().push(line.clone());
                if let Some(addr) = line.split("addr=").nth(1) {
                    api = addr.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if line.contains("tracing TCP connections") {
                    let _ = ready.send(api.take());
                }
            }
        });
        let api = started
            .recv_timeout(STARTUP_PATIENCE)
            .expect("tcpobs did not report that it is tracing")
            .expect("tcpobs did not report its HTTP address");
        (
            Self {
                child,
                own_output: given.is_none() && !piped,
                output,
                api,
                admin,
                log,
                log_thread: Some(log_thread),
            },
            stdout,
        )
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first line of the daemon's log that `matches`, waiting up to [`PATIENCE`] for it
    /// (its stderr is read by a thread of its own, so a line can arrive after the answer to
    /// the request that caused it).
    pub fn wait_log(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log().into_iter().find(|line| matches(line)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not logged within {PATIENCE:?}: {:#?}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The output's complete lines: a line the daemon is writing as the file is read (a read
    /// can see part of a write) waits for the next call.
    pub fn lines(&self) -> Vec<String> {
        let bytes = fs::read(&self.output).unwrap_or_default();
        let complete = bytes
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(&[][..], |end| &bytes[..end]);
        String::from_utf8_lossy(complete)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The output's JSON events.
    pub fn events(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect()
    }

    pub fn wait_lines(&self, what: &str, check: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines = self.lines();
            if check(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {lines:#?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for events that satisfy `check`, returns them all.
    pub fn wait_events(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events();
            if check(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {events:#?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the live table until it holds `n` connections on `port`: the daemon has learnt
    /// of them (a connection's open may be deferred for a moment, see `PendingList`).
    pub fn wait_live(&self, port: u16, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.api("GET", &format!("/connections?port={port}"), None, None);
            assert_eq!(status, 200, "{body}");
            let table: Value = serde_json::from_str(&body).unwrap();
            if table["total"].as_u64() >= Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} live connections on port {port}: {body}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `/metrics` until the sample (`name{labels}`, present) passes `check`; returns it.
    pub fn wait_metric(&self, sample: &str, check: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.api("GET", "/metrics", None, None);
            assert_eq!(status, 200, "{body}");
            if let Some(value) = sample_value(&body, sample).filter(|&value| check(value)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for `{sample}`: {body}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `curl` against the daemon's API: (status, body). `/connections` and `/config` go to the
    /// admin API's socket, the rest to the metrics API.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        accept: Option<&str>,
    ) -> (u16, String) {
        match &self.admin {
            Some(socket) if path.starts_with("/connections") || path.starts_with("/config") => {
                let url = format!("http://localhost{path}");
                curl_with(
                    &["--unix-socket", socket.to_str().unwrap()],
                    method,
                    &url,
                    body,
                    accept,
                )
            }
            _ => self.metrics_api(method, path, body, accept),
        }
    }

    /// `curl` against the metrics API (`--listen`) only: (status, body).
    pub fn metrics_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        accept: Option<&str>,
    ) -> (u16, String) {
        let url = format!("http://{}{path}", self.api);
        curl_status(method, &url, body, accept)
    }

    /// The value of one unlabelled or labelled sample in the exposition (`name{labels}`).
    pub fn metric(&self, sample: &str) -> f64 {
        let (status, body) = self.api("GET", "/metrics", None, None);
        assert_eq!(status, 200, "{body}");
        sample_value(&body, sample).unwrap_or_else(|| panic!("no sample `{sample}` in:\n{body}"))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM; fails the test if the daemon has not exited after [`PATIENCE`] (it is then
    /// killed) or did not exit with success.
    pub fn terminate_within_patience(mut self) -> Stopped {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "tcpobs did not stop within {PATIENCE:?} of SIGTERM: {:#?}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        };
        // Its stderr has ended with it.
        if let Some(thread) = self.log_thread.take() {
            let _ = thread.join();
        }
        assert!(
            status.success(),
            "tcpobs did not stop cleanly on SIGTERM ({status}): {:#?}",
            self.log()
        );
        Stopped {
            lines: self.lines(),
            log: self.log(),
        }
    }

    /// SIGTERM, then the exit code and the output.
    pub fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        let lines = self.lines();
        let _ = fs::remove_file(&self.output);
        (status.code(), lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(socket) = &self.admin {
            let _ = fs::remove_file(socket);
        }
        if self.own_output {
            if thread::panicking() {
                eprintln!("tcpobs events kept in {}", self.output.display());
            } else {
                let _ = fs::remove_file(&self.output);
            }
        }
    }
}

/// The value of a sample line `name{labels} value` (exact name and label text).
pub fn sample_value(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Runs curl; returns the HTTP status and the body.
pub fn curl_status(
    method: &str,
    url: &str,
    body: Option<&str>,
    accept: Option<&str>,
) -> (u16, String) {
    curl_with(&[], method, url, body, accept)
}

/// Runs curl with `options` first (e.g. `--unix-socket PATH`, `--cacert`, `--user`); returns
/// the HTTP status (0: no response) and the body.
pub fn curl_with(
    options: &[&str],
    method: &str,
    url: &str,
    body: Option<&str>,
    accept: Option<&str>,
) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(options).args([
        "--silent",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(body) = body {
        command.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    if let Some(accept) = accept {
        command.args(["-H", &format!("Accept: {accept}")]);
    }
    let output = command.arg(url).output().expect("curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}
