//! HTTP workloads: nginx (one worker) and wrk on loopback, with `Connection: close` (every
//! request a new connection: churn) or keep-alive, in two load shapes.

use std::{
    fs,
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::tracer::scratch;

pub struct Nginx {
    child: Child,
    pub port: u16,
    /// nginx's stub_status, on a port of its own (so that reading it is no connection on
    /// `port`).
    status_port: u16,
}

impl Nginx {
    pub fn start(root: &Path) -> Result<Self> {
        let dir = scratch(root, "nginx")?;
        let free_port = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (port, status_port) = (free_port()?, free_port()?);
        let config = format!(
            "worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 'hello from nginx\\n'; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        location / {{ stub_status; }}
    }}
}}
",
            dir = dir.display()
        );
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .context("running nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            port,
            status_port,
        })
    }

    /// Connections nginx has handled so far, on both ports (stub_status's `handled`; reading
    /// it is one of them).
    pub fn handled(&self) -> Result<u64> {
        let (status, _) = super::tracer::http_get(([127, 0, 0, 1], self.status_port).into(), "/")?;
        parse_handled(&status).with_context(|| format!("cannot read nginx's status:\n{status}"))
    }
}

/// `handled` from stub_status's report (`server accepts handled requests`, then the numbers).
fn parse_handled(status: &str) -> Option<u64> {
    let mut lines = status
        .lines()
        .skip_while(|line| !line.contains("accepts handled"));
    lines.next()?;
    lines.next()?.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}

/// A wrk load shape: threads and connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub threads: u32,
    pub connections: u32,
}

impl Shape {
    /// Few connections (the tracer's share of the machine is largest: one wrk thread and one
    /// nginx worker leave little idle time), and many.
    pub const ALL: [Self; 2] = [
        Self {
            threads: 1,
            connections: 8,
        },
        Self {
            threads: 2,
            connections: 64,
        },
    ];
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wrk -t{} -c{}", self.threads, self.connections)
    }
}

/// What one wrk run measured.
#[derive(Clone, Copy, Debug)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_s: f64,
    /// 99th percentile latency, seconds.
    pub p99_s: f64,
}

fn seconds(value: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = value.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Parses wrk's `--latency` report.
pub fn parse_wrk(report: &str) -> Option<WrkResult> {
    let requests_per_s = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let requests = report
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))?
        .0
        .trim()
        .parse()
        .ok()?;
    let p99_s = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .and_then(|value| seconds(value.trim()))?;
    Some(WrkResult {
        requests,
        requests_per_s,
        p99_s,
    })
}

/// One wrk run of `duration` against nginx; `close` sends `Connection: close`.
pub fn wrk(port: u16, duration: Duration, close: bool, shape: Shape) -> Result<WrkResult> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{}", shape.threads))
        .arg(format!("-c{}", shape.connections))
        .arg("--latency");
    command.arg(format!("-d{}s", duration.as_secs().max(1)));
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let output = command
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk (Debian package wrk)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {report}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&report).with_context(|| format!("cannot read wrk's report:\n{report}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let report = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.01ms    1.02ms  30.12ms   85.00%
  Latency Distribution
     50%    1.80ms
     75%    2.40ms
     90%    3.10ms
     99%  812.00us
  301000 requests in 10.00s, 50.00MB read
Requests/sec:  30100.25
Transfer/sec:      5.00MB
";
        let result = parse_wrk(report).unwrap();
        assert_eq!(result.requests, 301000);
        assert_eq!(result.requests_per_s, 30100.25);
        assert!((result.p99_s - 0.000812).abs() < 1e-12);
        assert!(parse_wrk("nothing").is_none());
    }

    #[test]
    fn reads_nginx_status() {
        let status = "Active connections: 1 \nserver accepts handled requests\n 7 6 9 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(parse_handled(status), Some(6));
        assert_eq!(parse_handled("nothing"), None);
    }
}
