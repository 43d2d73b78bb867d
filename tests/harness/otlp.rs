//! OTLP receivers nobody here wrote, for the OpenTelemetry export tests, from the virtual
//! environment `cargo xtask setup` makes (`target/tools/venv`):
//!
//! - [`Kind::Sink`]: `tests/otlp/otlp_sink.py`, a few lines around PyPI's official
//!   `opentelemetry-proto` bindings and `grpcio`: they decode what tcpobs sends, and the
//!   script writes each request as a JSON line;
//! - [`Kind::Rotel`]: rotel's collector (`rotel-agent`, from PyPI's `rotel`) with its detailed
//!   debug output, turned into the same JSON lines by `tests/otlp/rotel_to_jsonl.py`.
//!
//! Both listen for OTLP/gRPC and OTLP/HTTP on ports of their own. In the JSON, trace and span
//! ids are hex and 64-bit integers are numbers; [`attribute`] reads an attribute's value.

use std::{
    fs,
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{PATIENCE, closed_port, phases::Scratch, repo_file};

/// Which receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sink,
    Rotel,
}

/// A running receiver.
pub struct Receiver {
    kind: Kind,
    child: Option<Child>,
    pub grpc: u16,
    pub http: u16,
    scratch: Scratch,
}

fn venv(path: &str) -> PathBuf {
    let path = repo_file(&format!("target/tools/venv/{path}"));
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask setup`",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    venv("bin/python")
}

/// The collector binary the `rotel` wheel bundles.
pub fn rotel_agent() -> PathBuf {
    let output = Command::new(python())
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("the tools' python");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

impl Receiver {
    pub fn start(kind: Kind) -> Self {
        let mut receiver = Self {
            kind,
            child: None,
            grpc: closed_port(),
            http: closed_port(),
            scratch: Scratch::new("otlp"),
        };
        receiver.spawn();
        receiver
    }

    fn out(&self) -> PathBuf {
        self.scratch.path("received.out")
    }

    fn spawn(&mut self) {
        let (grpc, http) = (
            format!("127.0.0.1:{}", self.grpc),
            format!("127.0.0.1:{}", self.http),
        );
        // Appending: a receiver started again keeps what the first one got.
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out())
            .unwrap();
        let child = match self.kind {
            Kind::Sink => Command::new(python())
                .arg(repo_file("tests/otlp/otlp_sink.py"))
                .args(["--grpc", &grpc, "--http", &http, "--out"])
                .arg(self.out())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn(),
            Kind::Rotel => Command::new(rotel_agent())
                .args(["start", "--otlp-grpc-endpoint", &grpc])
                .args(["--otlp-http-endpoint", &http])
                .args(["--exporter", "blackhole"])
                .args(["--debug-log", "traces", "--debug-log", "logs"])
                .args([
                    "--debug-log",
                    "metrics",
                    "--debug-log-verbosity",
                    "detailed",
                ])
                .args(["--log-format", "json", "--pid-file"])
                .arg(self.scratch.path("rotel.pid"))
                .arg("--log-file")
                .arg(self.scratch.path("rotel.log"))
                .stdout(out)
                .stderr(Stdio::null())
                .spawn(),
        }
        .expect("the OTLP receiver");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        for port in [self.grpc, self.http] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the {:?} receiver did not listen",
                    self.kind
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `http://127.0.0.1:PORT` for `protocol` (`grpc` or `http/protobuf`).
    pub fn endpoint(&self, protocol: &str) -> String {
        let port = if protocol == "grpc" {
            self.grpc
        } else {
            self.http
        };
        format!("http://127.0.0.1:{port}")
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Value> {
        let text = match self.kind {
            Kind::Sink => fs::read_to_string(self.out()).unwrap_or_default(),
            Kind::Rotel => {
                let output = Command::new(python())
                    .arg(repo_file("tests/otlp/rotel_to_jsonl.py"))
                    .arg(self.out())
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "rotel_to_jsonl.py: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8(output.stdout).unwrap()
            }
        };
        text.lines()
            // The sink may be writing the last line.
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// What was received so far, by signal.
    pub fn received(&self) -> Received {
        Received::from_requests(&self.requests())
    }

    /// Polls until `check` finds what it wants; panics after [`PATIENCE`].
    pub fn wait_for<T>(&self, what: &str, check: impl Fn(&Received) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let received = self.received();
            if let Some(found) = check(&received) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {} spans, {} log records, {} metrics",
                received.spans.len(),
                received.logs.len(),
                received.metrics.len()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill with a valid pid and signal number.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Stops it for good (its ports then refuse connections).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: connections are still accepted by the kernel, nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// The spans, log records and metrics received, each with its resource's attributes under
/// `"resource"`.
#[derive(Debug, Default)]
pub struct Received {
    pub spans: Vec<Value>,
    pub logs: Vec<Value>,
    pub metrics: Vec<Value>,
}

impl Received {
    fn from_requests(requests: &[Value]) -> Self {
        let mut received = Self::default();
        let items = |request: &Value, outer: &str, middle: &str, inner: &str| -> Vec<Value> {
            let mut found = Vec::new();
            for resource in request[outer].as_array().into_iter().flatten() {
                for scope in resource[middle].as_array().into_iter().flatten() {
                    for item in scope[inner].as_array().into_iter().flatten() {
                        let mut item = item.clone();
                        item["resource"] = resource["resource"]["attributes"].clone();
                        found.push(item);
                    }
                }
            }
            found
        };
        for record in requests {
            let request = &record["request"];
            received
                .spans
                .extend(items(request, "resource_spans", "scope_spans", "spans"));
            received
                .logs
                .extend(items(request, "resource_logs", "scope_logs", "log_records"));
            received.metrics.extend(items(
                request,
                "resource_metrics",
                "scope_metrics",
                "metrics",
            ));
        }
        received
    }

    /// The spans of the trace whose root has `tcpobs.connection.id` `id`, root first.
    pub fn trace_of(&self, id: u64) -> Option<Vec<Value>> {
        let root = self.spans.iter().find(|span| {
            span["parent_span_id"].as_str().unwrap_or("").is_empty()
                && attribute(span, "tcpobs.connection.id") == Some(Value::from(id))
        })?;
        let mut spans = vec![root.clone()];
        spans.extend(
            self.spans
                .iter()
                .filter(|span| {
                    span["trace_id"] == root["trace_id"] && span["span_id"] != root["span_id"]
                })
                .cloned(),
        );
        Some(spans)
    }

    /// The log records of event `name` (`tcpobs.connection`, ...).
    pub fn logs_named(&self, name: &str) -> Vec<&Value> {
        self.logs
            .iter()
            .filter(|log| log["event_name"] == name)
            .collect()
    }

    /// The data points of metric `name` from its latest export.
    pub fn points(&self, name: &str) -> Vec<Value> {
        let Some(metric) = self.metrics.iter().rev().find(|m| m["name"] == name) else {
            return Vec::new();
        };
        ["histogram", "sum", "gauge"]
            .iter()
            .find_map(|kind| metric[*kind]["data_points"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// An attribute's value (a span's, a log record's, a data point's, or a resource's when
/// `item` is the attribute list itself), as plain JSON: strings, numbers, booleans.
pub fn attribute(item: &Value, key: &str) -> Option<Value> {
    let list = item.get("attributes").unwrap_or(item);
    let value = &list.as_array()?.iter().find(|kv| kv["key"] == key)?["value"];
    let (kind, value) = value.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "int_value" => value.as_i64().map(Value::from).unwrap_or_else(|| {
            value
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .map(Value::from)
                .unwrap_or(Value::Null)
        }),
        _ => value.clone(),
    })
}

/// A JSON event's timestamp (`2026-11-21T09:30:00.123456Z`) as Unix microseconds.
pub fn event_micros(time: &str) -> u64 {
    let number = |range: std::ops::Range<usize>| -> i64 { time[range].parse().unwrap() };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second) = (number(11..13), number(14..16), number(17..19));
    let micros = number(20..26);
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    (seconds * 1_000_000 + micros) as u64
}

/// A JSON event's duration in seconds (`"duration_s": 0.000078527`) as nanoseconds.
pub fn event_nanos(seconds: &Value) -> u64 {
    (seconds.as_f64().unwrap() * 1e9).round() as u64
}

/// A span's or log record's time field (`start_time_unix_nano`, ...), in nanoseconds.
pub fn nanos(item: &Value, field: &str) -> u64 {
    item[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {item:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_read_back() {
        assert_eq!(event_micros("1970-01-01T00:00:01.000002Z"), 1_000_002);
        assert_eq!(
            event_micros("2026-11-21T23:26:58.194411Z"),
            1_795_303_618_194_411
        );
    }
}
