//! Faults tcpobs survives, each driven for real: a file system that fills up (a small tmpfs),
//! log rotation and a removed output file, a closed stdout pipe, a reader of stdout that is
//! slow or stops reading, `kill -9` and a restart; and what it says when it cannot start
//! (capabilities, BTF, tracefs, a bad config file). RELIABILITY.md (Faults) lists them with
//! their results.

mod output;
mod startup;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs_tests::{
    PATIENCE,
    daemon::{Daemon, sample_value},
};

/// Polls `check` until it holds; fails the test after [`PATIENCE`].
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `n` connections to `listener`, one after another, each with one exchange (4 bytes, then
/// 2), closed by the client: `2 n` connection events (both ends are on loopback).
fn churn(listener: &TcpListener, addr: SocketAddr, n: usize) {
    thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..n {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0; 4];
                stream.read_exact(&mut request).unwrap();
                stream.write_all(b"ok").unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).unwrap();
            }
        });
        for _ in 0..n {
            let mut client = TcpStream::connect(addr).unwrap();
            client.write_all(b"ping").unwrap();
            let mut response = [0; 2];
            client.read_exact(&mut response).unwrap();
        }
    });
}

/// The daemon's counters, from one scrape.
struct Scrape(String);

impl Scrape {
    fn of(daemon: &Daemon) -> Self {
        let (status, body) = daemon.api("GET", "/metrics", None, None);
        assert_eq!(status, 200, "{body}");
        Self(body)
    }

    fn value(&self, sample: &str) -> f64 {
        sample_value(&self.0, sample).unwrap_or_else(|| panic!("no `{sample}` in\n{}", self.0))
    }

    /// The sum of every sample of a family.
    fn sum(&self, family: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| line.starts_with(&format!("{family}{{")))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Connection events written.
    fn written(&self) -> f64 {
        self.value("tcpobs_output_events_total{type=\"connection\"}")
    }

    /// Connection events dropped for `reason` (`output_slow`, `write_error`).
    fn dropped(&self, reason: &str) -> f64 {
        self.value(&format!(
            "tcpobs_output_events_dropped_total{{type=\"connection\",reason=\"{reason}\"}}"
        ))
    }

    fn errors(&self, reason: &str) -> f64 {
        self.value(&format!(
            "tcpobs_output_errors_total{{reason=\"{reason}\"}}"
        ))
    }

    /// Connections the metrics counted (both ends).
    fn opened(&self) -> f64 {
        self.value("tcpobs_connections_opened_total{role=\"client\"}")
            + self.value("tcpobs_connections_opened_total{role=\"server\"}")
    }
}

/// Every line of `text` as JSON; panics on one that is not, or on a last line without its
/// newline.
fn json_lines(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "ends mid-line: …{}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

/// Log lines containing `needle`.
fn logged(daemon: &Daemon, needle: &str) -> usize {
    daemon
        .log()
        .iter()
        .filter(|line| line.contains(needle))
        .count()
}

/// At most one warning per 10 s (the writer's throttle), and one summary at the end.
fn at_most_throttled(count: usize, since: Instant) {
    let allowed = 2 + since.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&count),
        "{count} warnings in {:?}",
        since.elapsed()
    );
}
