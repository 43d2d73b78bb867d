//! What OTLP export costs: HTTP churn and keep-alive with tcpobs sending traces and logs to a
//! collector on the same host (rotel's, from the test tools' virtual environment, with its
//! blackhole exporter: it receives and decodes, then discards), side by side with no tracer
//! as the other HTTP rows are. The collector's own CPU is taken from the same two cores, as
//! a node-local collector's would be.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Mode,
    http::{self, Nginx, Shape},
    report::{Report, Row},
    tracer::{self, Tracer, cpu_seconds, threads_cpu_seconds},
};

/// rotel's collector with OTLP receivers and no output.
struct Collector {
    child: Child,
    http: u16,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `rotel-agent` binary the `rotel` wheel bundles, in `xtask setup`'s virtual environment.
fn rotel_agent(root: &Path) -> Result<PathBuf> {
    let python = root.join(crate::setup::VENV).join("bin/python");
    let output = Command::new(&python)
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!("rotel is not installed: run `cargo xtask setup`");
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

impl Collector {
    fn start(root: &Path) -> Result<Self> {
        let (grpc, http) = (free_port()?, free_port()?);
        // Its own files (the defaults are shared names in /tmp).
        let file =
            |what: &str| std::env::temp_dir().join(format!("tcpobs-bench-rotel-{http}.{what}"));
        let child = Command::new(rotel_agent(root)?)
            .args(["start", "--exporter", "blackhole"])
            .arg("--pid-file")
            .arg(file("pid"))
            .arg("--log-file")
            .arg(file("log"))
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running rotel-agent")?;
        let collector = Self { child, http };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", http)).is_err() {
            if Instant::now() > deadline {
                bail!("rotel-agent did not listen");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(collector)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The threads the exporter's lanes run on (the daemon's tokio runtime, which also serves
/// its HTTP APIs: the bench reads `/metrics` a few times a run).
const EXPORT_THREADS: &str = "tokio-rt-worker";

/// A counter of one signal.
fn otlp_signal(metrics: &str, name: &str, signal: &str) -> f64 {
    let series = format!("{name}{{signal=\"{signal}\"}} ");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&series)?.parse::<f64>().ok())
        .sum()
}

/// Sums a counter over the traces and logs signals (and every reason, for drops).
fn otlp_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(name)
                && (line.contains("signal=\"traces\"") || line.contains("signal=\"logs\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (10 s at most) until what tcpobs handed to the exporter is sent or dropped, so that
/// the CPU time measured includes the export of the last batches.
fn settle(running: &tracer::Running) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (metrics, _) = running.get("/metrics")?;
        let offered = otlp_total(&metrics, "tcpobs_otlp_offered_total");
        let done = otlp_total(&metrics, "tcpobs_otlp_exported_total")
            + otlp_total(&metrics, "tcpobs_otlp_dropped_total");
        if offered == done || Instant::now() > deadline {
            return Ok(metrics);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Keep-alive and churn with OTLP traces and logs on.
pub fn run(root: &Path, binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let collector = Collector::start(root)?;
    let nginx = Nginx::start(root)?;
    http::wrk(nginx.port, Duration::from_secs(1), true, Shape::ALL[0])?;
    let endpoint = format!("http://127.0.0.1:{}", collector.http);
    let args = [
        "--otlp-endpoint",
        &endpoint,
        "--otlp-signals",
        "traces,logs",
    ];
    let runs = Shape::ALL.into_iter().flat_map(|shape| {
        [
            ("HTTP churn, OTLP traces+logs", true),
            ("HTTP keep-alive, OTLP traces+logs", false),
        ]
        .map(|(name, close)| (format!("{name}, {shape}"), close, shape))
    });
    for (name, close, shape) in runs {
        let (mut pairs, mut micros, mut per_end) = (Vec::new(), Vec::new(), Vec::new());
        let (mut exported, mut dropped) = (0.0, 0.0);
        for _ in 0..mode.pairs {
            let base = http::wrk(nginx.port, mode.http, close, shape)?;
            let running = tracer::start(Tracer::Tcpobs, binary, &args)?;
            let pid = running.pid().context("tcpobs pid")?;
            let cpu_before = cpu_seconds(pid)?;
            let export_before = threads_cpu_seconds(pid, EXPORT_THREADS)?;
            let traced = http::wrk(nginx.port, mode.http, close, shape)?;
            let metrics = settle(&running)?;
            let cpu = cpu_seconds(pid)? - cpu_before;
            let export = threads_cpu_seconds(pid, EXPORT_THREADS)? - export_before;
            let ends = otlp_signal(&metrics, "tcpobs_otlp_exported_total", "traces");
            running.stop()?;
            exported += otlp_total(&metrics, "tcpobs_otlp_exported_total");
            dropped += otlp_total(&metrics, "tcpobs_otlp_dropped_total");
            let requests = traced.requests_per_s * mode.http.as_secs_f64();
            pairs.push((base.requests_per_s, traced.requests_per_s));
            micros.push(cpu / requests.max(1.0) * 1e6);
            per_end.push(export / ends.max(1.0) * 1e6);
        }
        report.push(Row::ratio(&name, "requests/s", &pairs, &[], None, |v| {
            format!("{v:.0}")
        }));
        report.push(Row::micros(
            &name,
            "daemon CPU per request (both ends, export included)",
            &micros,
        ));
        if close {
            // A churned connection's ends are what the lanes work on; keep-alive exports a
            // handful, and the figure would be the threads' other work.
            report.push(Row::micros(
                &name,
                "export threads' CPU per connection end exported (a trace and a log record)",
                &per_end,
            ));
        }
        report.push(Row::single(
            &name,
            "OTLP records exported / dropped (all runs)",
            String::new(),
            format!("{exported} / {dropped}"),
            String::new(),
            None,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_counters_sum_over_traces_and_logs() {
        let exposition = "\
tcpobs_otlp_dropped_total{signal=\"traces\",reason=\"queue_full\"} 3
tcpobs_otlp_dropped_total{signal=\"logs\",reason=\"export_failed\"} 4
tcpobs_otlp_dropped_total{signal=\"metrics\",reason=\"queue_full\"} 100
tcpobs_otlp_exported_total{signal=\"traces\"} 10
";
        assert_eq!(otlp_total(exposition, "tcpobs_otlp_dropped_total"), 7.0);
        assert_eq!(otlp_total(exposition, "tcpobs_otlp_exported_total"), 10.0);
        assert_eq!(otlp_total(exposition, "tcpobs_otlp_offered_total"), 0.0);
        assert_eq!(
            otlp_signal(exposition, "tcpobs_otlp_exported_total", "traces"),
            10.0
        );
        assert_eq!(
            otlp_signal(exposition, "tcpobs_otlp_dropped_total", "traces"),
            0.0,
            "a series with other labels is not the signal's"
        );
    }
}
