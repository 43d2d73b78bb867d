//! Where records go: NDJSON events or justniffer lines, to stdout or a file.

pub mod json;
pub mod justniffer;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use chrono::{DateTime, Local, TimeZone, Utc};

use self::{json::WallClock, justniffer::LineFormat};
use crate::model::Record;

/// Which JSON events to write (`--events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventSelection {
    /// One aggregate `connection` event per connection, when it closes.
    #[default]
    Connections,
    /// `connection` events plus one `exchange` event per request/response exchange.
    Exchanges,
    /// No events (counters only).
    None,
}

/// How records are written.
#[derive(Clone, Debug)]
pub enum Format {
    Json(EventSelection),
    Justniffer(LineFormat),
}

/// Maps the kernel's `CLOCK_MONOTONIC` to wall-clock time, fixed at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Self {
            realtime_minus_monotonic_ns: clock_ns(libc::CLOCK_REALTIME)
                - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// Now, in the kernel's clock (`bpf_ktime_get_ns`).
    pub fn monotonic_now_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock for Clock {
    fn wall(&self, monotonic_ns: u64) -> DateTime<Utc> {
        let ns = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        Utc.timestamp_nanos(ns as i64)
    }
}

/// Something that takes records (the outputs; tests use their own).
pub trait Sink {
    fn write(&mut self, record: &Record) -> io::Result<()>;

    /// Called after each batch of events.
    fn flush(&mut self) -> io::Result<()>;
}

/// The configured output: a format over a buffered writer.
pub struct Output {
    writer: BufWriter<Box<dyn Write + Send>>,
    format: Format,
    clock: Clock,
    line: String,
}

impl Output {
    pub fn new(writer: Box<dyn Write + Send>, format: Format, clock: Clock) -> Self {
        Self {
            writer: BufWriter::with_capacity(64 * 1024, writer),
            format,
            clock,
            line: String::with_capacity(1024),
        }
    }

    /// Standard output, or `path` opened for appending (created if missing).
    pub fn open(path: Option<&Path>, format: Format, clock: Clock) -> io::Result<Self> {
        let writer: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
            None => Box::new(io::stdout()),
        };
        Ok(Self::new(writer, format, clock))
    }

    /// Writes a line that is not a record (e.g. the final `stats` event), JSON format only.
    pub fn write_json_line(&mut self, line: &str) -> io::Result<()> {
        if matches!(self.format, Format::Json(_)) {
            self.writer.write_all(line.as_bytes())?;
        }
        Ok(())
    }
}

impl Sink for Output {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        match (&self.format, record) {
            (Format::Json(EventSelection::None), _) => return Ok(()),
            (Format::Json(_), Record::Connection(connection)) => {
                json::connection(&mut self.line, connection, &self.clock);
            }
            (Format::Json(EventSelection::Exchanges), Record::Exchange(exchange)) => {
                json::exchange(&mut self.line, exchange, &self.clock);
            }
            (Format::Json(EventSelection::Connections), Record::Exchange(_)) => return Ok(()),
            (Format::Justniffer(format), Record::Exchange(exchange)) => {
                let start = self.clock.wall(exchange.start_ns).with_timezone(&Local);
                format.write(&mut self.line, exchange, start);
            }
            (Format::Justniffer(_), Record::Connection(_)) => return Ok(()),
        }
        self.writer.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}
