//! The tracers being compared: none, tcpobs (the release binary), and libbpf-tools' tcplife;
//! and what the harness reads off a running tcpobs (CPU time, RSS, kernel map memory,
//! metrics).

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What observes the workload (the untraced runs simply start none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracer {
    Tcpobs,
    Tcplife,
}

/// A running tracer.
pub struct Running {
    child: Option<Child>,
    /// tcpobs's HTTP API.
    pub api: Option<SocketAddr>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether this log line (its timestamp aside) is new to this bench run: the same warning from
/// every start (a hook family this kernel lacks) is printed once.
fn first_time(line: &str) -> bool {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let message = line
        .split_once(' ')
        .map_or(line, |(_, rest)| rest)
        .trim_start();
    SEEN.lock()
        .map(|mut seen| seen.insert(message.to_owned()))
        .unwrap_or(true)
}

/// Starts `tracer`; for tcpobs, `args` are extra flags (its events go to /dev/null).
pub fn start(tracer: Tracer, binary: &Path, args: &[&str]) -> Result<Running> {
    match tracer {
        Tracer::Tcpobs => {
            let api: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let mut child = Command::new(binary)
                .args([
                    "--output",
                    "/dev/null",
                    "--log-level",
                    "warn,tcpobs::app=info",
                ])
                .arg("--listen")
                .arg(api.to_string())
                // The bench reads /metrics only: no admin socket in /run.
                .args(["--admin-listen", "none"])
                .args(args)
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", binary.display()))?;
            let stderr = child.stderr.take().context("tcpobs stderr")?;
            let (ready, started) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("tracing TCP connections") {
                        let _ = ready.send(());
                    } else if (line.contains("WARN") || line.contains("ERROR")) && first_time(&line)
                    {
                        eprintln!("tcpobs: {line}");
                    }
                }
            });
            if started.recv_timeout(Duration::from_secs(30)).is_err() {
                let _ = child.kill();
                bail!("tcpobs did not start");
            }
            Ok(Running {
                child: Some(child),
                api: Some(api),
            })
        }
        Tracer::Tcplife => {
            let mut child = Command::new("tcplife")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("running tcplife (Debian package libbpf-tools)")?;
            let mut stdout = child.stdout.take().context("tcplife stdout")?;
            // Read its output as a terminal would, so that it never blocks on a full pipe.
            thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {}
            });
            // tcplife prints nothing until its first connection; give it time to attach.
            thread::sleep(Duration::from_millis(1500));
            if let Some(status) = child.try_wait()? {
                bail!("tcplife exited at start: {status}");
            }
            Ok(Running {
                child: Some(child),
                api: None,
            })
        }
    }
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the tracer (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        Ok(())
    }

    /// GET `path` from tcpobs's API: the body and how long it took.
    pub fn get(&self, path: &str) -> Result<(String, Duration)> {
        let api = self.api.context("not tcpobs")?;
        http_get(api, path)
    }

    /// The sum of a family's samples in `/metrics` (every label set of `name`).
    pub fn metric_sum(&self, name: &str) -> Result<f64> {
        let (body, _) = self.get("/metrics")?;
        Ok(body
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// A sample's value from `/metrics` (`name{labels}` exactly).
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let (body, _) = self.get("/metrics")?;
        sample_value(&body, sample).with_context(|| format!("no sample {sample}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET (the daemon answers with a Content-Length body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: tcpobs\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let elapsed = started.elapsed();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .context("malformed HTTP response")?;
    Ok((body, elapsed))
}

pub fn sample_value(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(sample)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Quantile `q` of a histogram in the exposition, interpolated within its bucket.
pub fn histogram_quantile(exposition: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    None
}

/// CPU time of a process's threads, in seconds: the scheduler's nanosecond accounting
/// (`/proc/PID/task/*/schedstat`), or user + system ticks (`/proc/PID/stat`, 10 ms steps) where
/// schedstat is missing. Threads that have exited are not counted.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    if let Some(ns) = threads_cpu_ns(pid, |_| true) {
        return Ok(ns as f64 / 1e9);
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / ticks)
}

/// CPU time of the threads whose name starts with `prefix`, in seconds (schedstat; see
/// [`cpu_seconds`]).
pub fn threads_cpu_seconds(pid: u32, prefix: &str) -> Result<f64> {
    threads_cpu_ns(pid, |name| name.starts_with(prefix))
        .map(|ns| ns as f64 / 1e9)
        .with_context(|| format!("no schedstat for the {prefix} threads of {pid}"))
}

/// The scheduler's time on the CPU of the threads whose name `wanted` accepts (`None`
/// without schedstat, or without such a thread).
fn threads_cpu_ns(pid: u32, wanted: impl Fn(&str) -> bool) -> Option<u64> {
    let mut ns = None;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let name = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !wanted(name.trim_end()) {
            continue;
        }
        let Ok(schedstat) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(on_cpu) = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *ns.get_or_insert(0) += on_cpu;
        }
    }
    ns
}

/// Times a process's threads gave up the CPU to wait (voluntary context switches, summed over
/// `/proc/PID/task/*/status`): its wake-ups. Threads that have exited are not counted.
pub fn wakeups(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The resident part of the process's mappings of BPF maps (the ring buffer, mapped in full
/// from the start, its data pages twice): kernel memory the map memory figure already counts.
pub fn bpf_mapping_rss_bytes(pid: u32) -> Result<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut in_map = false;
    let mut kib = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_map = line.ends_with("anon_inode:bpf-map");
        } else if in_map && let Some(value) = line.strip_prefix("Rss:") {
            kib += value.trim().trim_end_matches("kB").trim().parse::<u64>()?;
        }
    }
    Ok(kib * 1024)
}

/// Kernel memory charged to the process's BPF maps (`memlock` of each map fd).
pub fn bpf_map_bytes(pid: u32) -> Result<u64> {
    let field = |info: &str, name: &str| -> Option<u64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
    };
    // Each map once: a process may hold several descriptors of one map.
    let mut maps = std::collections::HashMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        if let (Some(id), Some(memlock)) = (field(&info, "map_id:"), field(&info, "memlock:")) {
            maps.insert(id, memlock);
        }
    }
    Ok(maps.values().sum())
}

/// Where the bench keeps its scratch files.
pub fn scratch(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join("target/bench").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_printed_once_whatever_its_timestamp() {
        let warning = "tcpobs::kernel::loader: a bench-only test warning";
        assert!(first_time(&format!(
            "2026-12-06T18:09:47.351352Z  WARN {warning}"
        )));
        assert!(!first_time(&format!(
            "2026-12-06T18:10:01.000001Z  WARN {warning}"
        )));
        assert!(first_time("2026-12-06T18:10:01.000001Z  WARN another one"));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let text = "d_bucket{le=\"0.001\"} 50\nd_bucket{le=\"0.01\"} 90\nd_bucket{le=\"0.1\"} 100\nd_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(text, "d", 0.5), Some(0.001));
        let p99 = histogram_quantile(text, "d", 0.99).unwrap();
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert_eq!(
            histogram_quantile("d_bucket{le=\"+Inf\"} 0\n", "d", 0.5),
            None
        );
    }
}
