//! Where records go: NDJSON events ([`json`], every schema in `json::events`) or justniffer
//! lines ([`justniffer`]), to stdout or a file, after event selection and sampling
//! ([`select`]).

pub(crate) mod json;
pub(crate) mod justniffer;
pub mod select;

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::Local;

use self::{
    json::events,
    justniffer::LineFormat,
    select::{EventType, OutputCounts, Sampler, anomalies_of, selected},
};
use crate::{
    clock::{Clock, WallClock as _, monotonic_now_ns},
    config::live::{EventSelection, LiveSettings, Thresholds},
    metadata::Metadata,
    model::Record,
};

/// How records are written.
#[derive(Clone, Debug)]
pub enum Format {
    /// NDJSON events, selected by the runtime `events` setting.
    Json,
    /// One justniffer line per exchange (nothing with `--events none`).
    Justniffer(LineFormat),
}

/// Something that takes records (the outputs; tests use their own).
pub trait Sink {
    fn write(&mut self, record: &Record) -> io::Result<()>;

    /// Takes new runtime settings (event selection, sampling, thresholds).
    fn configure(&mut self, _live: &LiveSettings) {}

    /// Called after each batch of events.
    fn flush(&mut self) -> io::Result<()>;
}

/// The configured output: a format over a buffered writer, with event selection and sampling.
pub struct Output {
    writer: Box<dyn Write + Send>,
    format: Format,
    clock: Clock,
    /// Lines written since the last flush: JSON events are formatted straight into the
    /// buffer that is written out (no copy of each line into another).
    pending: json::Line,
    /// One justniffer line, before it joins `pending`.
    text: String,
    selection: EventSelection,
    thresholds: Thresholds,
    sampler: Sampler,
    counts: Arc<OutputCounts>,
    /// The file written to (`None`: stdout), and a request to reopen it (log rotation).
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
    /// Container and pod metadata for JSON events, if enabled.
    metadata: Option<Arc<Metadata>>,
}

/// Buffered lines are written out once they reach this size, and at every flush.
const FLUSH_AT: usize = 64 * 1024;

fn open_file(path: &Path) -> io::Result<Box<dyn Write + Send>> {
    Ok(Box::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ))
}

impl Output {
    pub(crate) fn new(writer: Box<dyn Write + Send>, format: Format, clock: Clock) -> Self {
        Self {
            writer,
            format,
            clock,
            pending: json::Line::default(),
            text: String::new(),
            selection: EventSelection::default(),
            thresholds: Thresholds::default(),
            sampler: Sampler::new(None),
            counts: Arc::default(),
            path: None,
            reopen: Arc::default(),
            metadata: None,
        }
    }

    /// Adds container and pod metadata to the JSON events.
    pub(crate) fn set_metadata(&mut self, metadata: Arc<Metadata>) {
        self.metadata = Some(metadata);
    }

    /// Standard output, or `path` opened for appending (created if missing).
    pub fn open(path: Option<&Path>, format: Format, clock: Clock) -> io::Result<Self> {
        let writer = match path {
            Some(path) => open_file(path)?,
            None => Box::new(io::stdout()),
        };
        let mut output = Self::new(writer, format, clock);
        output.path = path.map(Path::to_path_buf);
        Ok(output)
    }

    /// Set it to have the output file reopened at the next flush (after log rotation).
    pub(crate) fn reopen_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reopen)
    }

    /// Events written and sampled out, for the metrics.
    pub(crate) fn counts(&self) -> Arc<OutputCounts> {
        Arc::clone(&self.counts)
    }

    /// Writes a line that is not a record (e.g. the final `stats` event), JSON format only.
    pub(crate) fn write_json_line(&mut self, line: &str) -> io::Result<()> {
        if matches!(self.format, Format::Json) {
            self.pending.push_str(line);
        }
        self.write_full()
    }

    /// Writes the buffered lines out.
    fn write_buffered(&mut self) -> io::Result<()> {
        let result = self.writer.write_all(self.pending.as_bytes());
        self.pending.clear();
        result
    }

    /// Writes the buffered lines out if they have reached `FLUSH_AT`.
    fn write_full(&mut self) -> io::Result<()> {
        if self.pending.len() >= FLUSH_AT {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Which event this record makes, if any.
    fn route(&self, record: &Record) -> Option<EventType> {
        match (&self.format, record) {
            (Format::Json, _) => selected(self.selection, record, &self.thresholds),
            (Format::Justniffer(_), Record::Exchange(_)) => {
                (self.selection != EventSelection::None).then_some(EventType::Exchange)
            }
            (Format::Justniffer(_), _) => None,
        }
    }
}

impl Sink for Output {
    fn configure(&mut self, live: &LiveSettings) {
        self.selection = live.events;
        self.thresholds = live.thresholds;
        self.sampler = Sampler::new(live.sample);
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        let metadata = match self.format {
            Format::Json => self.metadata.as_deref(),
            Format::Justniffer(_) => None,
        };
        if let (Some(metadata), Record::Opened(opened)) = (metadata, record)
            && self.selection != EventSelection::None
        {
            // Resolved while the connection is young, so that a short-lived container is
            // still there to be found; its events then hit the cache.
            metadata.lookup(opened.process.as_ref());
        }
        let Some(kind) = self.route(record) else {
            return Ok(());
        };
        if !self.sampler.admit(monotonic_now_ns) {
            self.counts.sampled_out[kind.index()].fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match (&self.format, record) {
            (Format::Justniffer(format), Record::Exchange(exchange)) => {
                let start = self.clock.wall(exchange.start_ns).with_timezone(&Local);
                self.text.clear();
                format.write(&mut self.text, exchange, start);
                self.pending.push_str(&self.text);
            }
            (_, Record::Connection(connection)) => {
                let anomalies = anomalies_of(connection, &self.thresholds);
                let meta = metadata.and_then(|m| m.lookup(connection.process.as_ref()));
                events::connection(
                    &mut self.pending,
                    connection,
                    &anomalies,
                    meta.as_deref(),
                    &self.clock,
                );
            }
            (_, Record::Exchange(exchange)) => {
                let meta = metadata.and_then(|m| m.lookup(exchange.process.as_ref()));
                events::exchange(&mut self.pending, exchange, meta.as_deref(), &self.clock)
            }
            (_, Record::Anomaly(anomaly)) => {
                let meta = metadata.and_then(|m| m.lookup(anomaly.process.as_ref()));
                events::anomaly(&mut self.pending, anomaly, meta.as_deref(), &self.clock)
            }
            (_, Record::Dns(dns)) => events::dns(&mut self.pending, dns, &self.clock),
            (_, Record::Tls(tls)) => events::tls(&mut self.pending, tls, &self.clock),
            (_, Record::Opened(_) | Record::Unstuck(..)) => return Ok(()),
        }
        self.counts.written[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.write_full()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.writer.flush()?;
        if self.reopen.swap(false, Ordering::Relaxed)
            && let Some(path) = &self.path
        {
            self.writer = open_file(path)?;
        }
        Ok(())
    }
}

impl Drop for Output {
    /// Lines still buffered are written out (an error here has nowhere to go).
    fn drop(&mut self) {
        let _ = self.write_buffered();
        let _ = self.writer.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::{Role, TlsRecord};

    /// A writer whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap();
            assert!(
                bytes.is_empty() || bytes.ends_with(b"\n"),
                "whole lines only"
            );
            bytes
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice(line).unwrap())
                .collect()
        }
    }

    /// A failed handshake on no known connection: written with the default selection.
    fn failed_tls(start_ns: u64) -> Record {
        Record::Tls(TlsRecord {
            conn_id: None,
            role: Role::Client,
            addrs: None,
            process: None,
            start_ns,
            duration_ns: 1_000,
            ok: false,
            calls: 1,
            after_close: false,
        })
    }

    #[test]
    fn lines_are_written_when_the_buffer_fills_at_flush_and_at_drop() {
        let shared = Shared::default();
        let mut output = Output::new(Box::new(shared.clone()), Format::Json, Clock::new());
        output.write(&failed_tls(0)).unwrap();
        assert!(shared.lines().is_empty(), "held until the flush");
        output.flush().unwrap();
        assert_eq!(shared.lines().len(), 1);
        assert_eq!(shared.lines()[0]["type"], "tls");

        // More than FLUSH_AT bytes of events: the full buffer goes out without a flush.
        let line_len = shared.0.lock().unwrap().len();
        let count = FLUSH_AT / line_len * 2;
        for index in 0..count {
            output
                .write(&failed_tls((index as u64 + 1) * 1_000))
                .unwrap();
        }
        let before_flush = shared.lines().len();
        assert!(
            before_flush > 1 && before_flush < count + 1,
            "{before_flush}"
        );
        output.write_json_line("{\"type\":\"stats\"}\n").unwrap();
        drop(output);
        let lines = shared.lines();
        assert_eq!(lines.len(), count + 2);
        let starts: Vec<&str> = lines.iter().filter_map(|l| l["start"].as_str()).collect();
        assert_eq!(starts.len(), count + 1);
        assert!(
            starts.is_sorted_by(|a, b| a < b),
            "every event once, in order"
        );
        assert_eq!(lines[count + 1]["type"], "stats", "after every event");
    }
}
