//! Where records go: NDJSON events ([`json`], every schema in `json::events`) or justniffer
//! lines ([`justniffer`]), to stdout or a file, after event selection and sampling
//! ([`select`]). The lines are written by a thread of their own, behind a bounded queue
//! ([`writer`]): a slow reader, a full disk or a closed pipe costs counted events, never the
//! ring buffer reader's time.

pub(crate) mod json;
pub(crate) mod justniffer;
pub mod select;
pub(crate) mod writer;

use std::{
    io,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use chrono::Local;
use tracing::warn;

use self::{
    json::events,
    justniffer::LineFormat,
    select::{AnomalyLimits, EventType, OutputCounts, Sampler, anomalies_of, selected},
    writer::{
        Destination, DropReason, FileDest, LOG_EVERY, NOT_AN_EVENT, Queue, ReopenHandle, Throttle,
    },
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

/// The configured output: a format, event selection and sampling, and the queue to the
/// writer thread.
pub struct Output {
    queue: Queue,
    format: Format,
    clock: Clock,
    /// Lines formatted since the last hand-over: JSON events are formatted straight into the
    /// buffer that goes to the writer (no copy of each line into another).
    pending: json::Line,
    /// Where each line of `pending` ends, and its event type.
    lines: Vec<(u32, u8)>,
    /// One justniffer line, before it joins `pending`.
    text: String,
    /// `pending` goes to the writer once it reaches this size ([`FLUSH_AT`], or the queue's
    /// capacity if smaller).
    flush_at: usize,
    selection: EventSelection,
    limits: AnomalyLimits,
    sampler: Sampler,
    counts: Arc<OutputCounts>,
    /// Container and pod metadata for JSON events, if enabled.
    metadata: Option<Arc<Metadata>>,
    /// Logs about a full queue.
    slow: Throttle,
    closed: bool,
}

/// How [`Output::close`] went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Closed {
    /// Events the writer had not taken by the deadline (counted as dropped).
    pub(crate) unwritten: u64,
    /// Whether the writer wrote everything it took, the final line last and whole, in time.
    pub(crate) last_line_written: bool,
    /// What could not be written, in the end.
    pub(crate) totals: OutputTotals,
}

/// What the output could not write, for the final `stats` event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputTotals {
    /// Events dropped: the queue was full, or their write failed.
    pub events_dropped: u64,
    /// Failed writes (and reopens).
    pub write_errors: u64,
}

/// Formatted lines go to the writer once they reach this size, and at every flush. Each
/// hand-over wakes the writer thread (two context switches): at the default settings a
/// churned connection makes about 2 KB of JSON, so 20,000 connections a second fill a 64 KiB
/// block 700 times a second, and this size about 170 times (the drain interval's flushes, 100
/// a second, come on top either way). A smaller `--output-queue-bytes` makes the blocks smaller
/// too: an empty queue takes one block whole, and what waits must stay within that bound (give
/// or take the last line).
pub(crate) const FLUSH_AT: usize = 256 * 1024;

/// The default of `--output-queue-bytes`.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

impl Output {
    /// An output writing to `dest`, with at most `queue_bytes` waiting for it.
    pub(crate) fn new(
        dest: Box<dyn Destination>,
        format: Format,
        clock: Clock,
        queue_bytes: usize,
    ) -> io::Result<Self> {
        let counts = Arc::<OutputCounts>::default();
        Ok(Self {
            queue: Queue::start(dest, queue_bytes, Arc::clone(&counts))?,
            format,
            clock,
            pending: json::Line::default(),
            lines: Vec::new(),
            text: String::new(),
            flush_at: FLUSH_AT.min(queue_bytes),
            selection: EventSelection::default(),
            limits: AnomalyLimits::of(&Thresholds::default()),
            sampler: Sampler::new(None),
            counts,
            metadata: None,
            slow: Throttle::new(LOG_EVERY),
            closed: false,
        })
    }

    /// Adds container and pod metadata to the JSON events.
    pub(crate) fn set_metadata(&mut self, metadata: Arc<Metadata>) {
        self.metadata = Some(metadata);
    }

    /// Standard output, or `path` opened for appending (created if missing), with at most
    /// `queue_bytes` of lines waiting for the writer.
    pub fn open(
        path: Option<&Path>,
        format: Format,
        clock: Clock,
        queue_bytes: usize,
    ) -> io::Result<Self> {
        let dest = match path {
            Some(path) => FileDest::open(path)?,
            None => FileDest::stdout()?,
        };
        Self::new(Box::new(dest), format, clock, queue_bytes)
    }

    /// Asks for the output file to be reopened (after log rotation).
    pub(crate) fn reopen_handle(&self) -> ReopenHandle {
        self.queue.reopen_handle()
    }

    /// Events written, sampled out and dropped, for the metrics.
    pub(crate) fn counts(&self) -> Arc<OutputCounts> {
        Arc::clone(&self.counts)
    }

    /// What could not be written so far.
    fn totals(&self) -> OutputTotals {
        OutputTotals {
            events_dropped: self.counts.dropped().iter().flatten().sum(),
            write_errors: self.counts.errors().iter().sum(),
        }
    }

    /// Stops the output: hands every event formatted over to the writer and gives it
    /// `deadline` to write them; then `last_line` (the final `stats` event, JSON format only),
    /// made from what could not be written, including the events the writer did not take in
    /// time (dropped, counted), gets [`writer::LAST_LINE_GRACE`] more. Never waits longer.
    pub(crate) fn close(
        mut self,
        deadline: Duration,
        last_line: impl FnOnce(OutputTotals) -> String,
    ) -> Closed {
        self.closed = true;
        self.hand_over(true);
        let mut unwritten = 0;
        if !self.queue.wait_idle(deadline) {
            unwritten = self.queue.discard();
            warn!(
                unwritten,
                "the output did not take the last events within {deadline:?} (its reader is \
                 slow or stopped): they are dropped and counted"
            );
        }
        let json = matches!(self.format, Format::Json);
        if json {
            self.pending.push_str(&last_line(self.totals()));
            self.mark_line(NOT_AN_EVENT);
            self.hand_over(true);
        }
        let finished = self.queue.finish(writer::LAST_LINE_GRACE);
        let last_line_written = json && finished;
        if json && !finished {
            warn!("the final stats event is not written (the output is stuck or failing)");
        }
        Closed {
            unwritten,
            last_line_written,
            totals: self.totals(),
        }
    }

    fn mark_line(&mut self, kind: u8) {
        let end = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        self.lines.push((end, kind));
    }

    /// Hands the formatted lines to the writer; with `force`, even when the queue is full.
    fn hand_over(&mut self, force: bool) {
        if self.pending.len() == 0 {
            return;
        }
        let mut block = self.queue.spare();
        block.bytes = self.pending.swap_bytes(std::mem::take(&mut block.bytes));
        std::mem::swap(&mut block.lines, &mut self.lines);
        self.lines.clear();
        if let Err(full) = self.queue.push(block, force)
            && let Some(held) = self.slow.ready(Instant::now())
        {
            let dropped: u64 = self.counts.dropped()[DropReason::OutputSlow as usize]
                .iter()
                .sum();
            warn!(
                dropped = full.events,
                total = dropped,
                held_back = held,
                "the output is behind (its reader is slower than the events): events dropped \
                 and counted (tcpobs_output_events_dropped_total{{reason=\"output_slow\"}}); \
                 read faster, raise --output-queue-bytes, or write fewer events (--events, \
                 --sample)"
            );
        }
    }

    /// Hands the formatted lines over if they have reached `flush_at`.
    fn write_full(&mut self) {
        if self.pending.len() >= self.flush_at {
            self.hand_over(false);
        }
    }

    /// Which event this record makes, if any.
    fn route(&self, record: &Record) -> Option<EventType> {
        match (&self.format, record) {
            (Format::Json, _) => selected(self.selection, record, &self.limits),
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
        self.limits = AnomalyLimits::of(&live.thresholds);
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
                let anomalies = anomalies_of(connection, &self.limits);
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
        self.mark_line(kind.index() as u8);
        self.write_full();
        Ok(())
    }

    /// Hands the lines formatted so far to the writer. Never fails and never waits: a full
    /// queue drops them, counted.
    fn flush(&mut self) -> io::Result<()> {
        self.hand_over(false);
        Ok(())
    }
}

impl Drop for Output {
    /// Lines still formatted are handed over, and the writer given [`writer::STOP_DEADLINE`]
    /// to write them (when [`Output::close`] has not done so).
    fn drop(&mut self) {
        if !self.closed {
            self.hand_over(true);
            self.queue.finish(writer::STOP_DEADLINE);
        }
    }
}

#[cfg(test)]
mod tests;
