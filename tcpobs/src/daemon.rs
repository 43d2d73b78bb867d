//! The running tracer: kernel programs, ring buffer reader and tracker, pumping records into
//! a [`Sink`] until told to stop.

use std::{future::Future, io, time::Duration};

use tokio::time::{MissedTickBehavior, interval};
use tracing::{info, warn};

use crate::{
    loader::{self, Attached, LoadError, LoadOptions, Loaded},
    model::Record,
    output::{Clock, Sink, json::Object},
    reader::{KernelStats, Reader, ReaderStats},
    tracker::{Tracker, TrackerStats},
};

/// Every loss and health counter, from the kernel, the reader and the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reader: ReaderStats,
    pub kernel: KernelStats,
    pub tracker: TrackerStats,
}

impl Stats {
    /// The final `stats` JSON event.
    pub fn to_json_line(&self) -> String {
        let mut line = String::new();
        let mut object = Object::new(&mut line, "stats");
        object
            .u64("events_received", self.reader.total())
            .u64("events_undecodable", self.reader.undecodable)
            .u64("events_lost", self.kernel.ringbuf_full)
            .u64("sockets_untracked", self.kernel.table_insert_failed)
            .u64("sockets_adopted", self.kernel.adopted)
            .u64("sockets_evicted", self.tracker.lost)
            .u64("unmatched_events", self.tracker.unmatched);
        object.end();
        line
    }
}

/// How often to look at the loss counters and warn when they grow.
const LOSS_CHECK: Duration = Duration::from_secs(5);

pub struct Tracer {
    loaded: Loaded,
    reader: Reader,
    tracker: Tracker,
    records: Vec<Record>,
    reported_loss: u64,
}

impl Tracer {
    /// Loads and attaches the programs. Must run inside a tokio runtime (the ring buffer is
    /// registered with its reactor).
    pub fn start(options: &LoadOptions) -> Result<Self, LoadError> {
        let mut loaded = loader::load(options)?;
        let reader = Reader::new(&mut loaded.ebpf)?;
        Ok(Self {
            loaded,
            reader,
            tracker: Tracker::new(),
            records: Vec::with_capacity(1024),
            reported_loss: 0,
        })
    }

    pub fn attached(&self) -> &[Attached] {
        &self.loaded.attached
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn stats(&self) -> Stats {
        Stats {
            reader: self.reader.stats(),
            kernel: self.reader.kernel_stats(),
            tracker: self.tracker.stats(),
        }
    }

    /// Drains the ring buffer once into `sink`. Returns how many events were read.
    pub fn pump(&mut self, sink: &mut dyn Sink) -> io::Result<usize> {
        let Self {
            reader,
            tracker,
            records,
            ..
        } = self;
        let read = reader.drain(|event| tracker.handle(event, records));
        for record in records.drain(..) {
            sink.write(&record)?;
        }
        if read > 0 {
            sink.flush()?;
        }
        Ok(read)
    }

    /// Pumps events until `shutdown` completes.
    pub async fn run(
        &mut self,
        sink: &mut dyn Sink,
        drain_interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let mut tick = interval(drain_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut loss_check = interval(LOSS_CHECK);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                ready = self.reader.readable() => ready?,
                _ = tick.tick() => {}
                _ = loss_check.tick() => self.warn_on_loss(),
            }
            self.pump(sink)?;
        }
    }

    fn warn_on_loss(&mut self) {
        let lost = self.reader.kernel_stats().ringbuf_full;
        if lost > self.reported_loss {
            warn!(
                dropped = lost - self.reported_loss,
                total = lost,
                "ring buffer full: events dropped; raise --ringbuf-bytes or --drain-interval lower"
            );
            self.reported_loss = lost;
        }
    }

    /// Detaches the programs, drains what is left, reports connections still open as partial
    /// and returns the final counters.
    pub fn stop(self, sink: &mut dyn Sink) -> io::Result<Stats> {
        let Self {
            loaded,
            mut reader,
            mut tracker,
            mut records,
            ..
        } = self;
        drop(loaded);
        reader.drain(|event| tracker.handle(event, &mut records));
        tracker.flush(Clock::monotonic_now_ns(), &mut records);
        for record in records.drain(..) {
            sink.write(&record)?;
        }
        sink.flush()?;
        Ok(Stats {
            reader: reader.stats(),
            kernel: reader.kernel_stats(),
            tracker: tracker.stats(),
        })
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        warn!("cannot install signal handlers; stop tcpobs with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => info!("SIGINT: stopping"),
        _ = terminate.recv() => info!("SIGTERM: stopping"),
    }
}
