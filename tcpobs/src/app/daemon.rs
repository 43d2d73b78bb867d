//! The running tracer: kernel programs, ring buffer reader and tracker, pumping records into
//! the metrics and a [`Sink`], sweeping for stuck connections, and looking for new
//! containers' libraries for the libcall probes, until told to stop.

use std::{
    future::Future,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use tcpobs_common::{SockRecord, folds::role_index as fold_index, names, role};
use tokio::{
    sync::watch,
    time::{MissedTickBehavior, interval},
};
use tracing::{info, warn};

use crate::{
    clock::monotonic_now_ns,
    config::live::LiveSettings,
    export::{
        metrics::{Metrics, collect::Health},
        output::{
            Sink,
            json::{Line, events},
        },
    },
    kernel::{
        filters::KernelFilters,
        folds::{ExchangeSwitch, FoldReader},
        libcalls::{LibcallStats, RESCAN_INTERVAL},
        loader::{self, LoadError, LoadOptions, Loaded},
        reader::{KernelStats, Reader, ReaderStats},
        report::{FamilyAttach, take_map},
    },
    model::Record,
    sync::lock,
    tracker::{KernelView, StuckThresholds, SweepReport, Tracker, TrackerStats},
};

/// Every loss and health counter, from the kernel, the reader and the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reader: ReaderStats,
    pub kernel: KernelStats,
    pub tracker: TrackerStats,
    pub libcalls: LibcallStats,
}

impl Stats {
    /// The final `stats` JSON event.
    pub(crate) fn to_json_line(self) -> String {
        let mut line = Line::default();
        events::stats(
            &mut line,
            &self.reader,
            &self.kernel,
            &self.tracker,
            &self.libcalls,
        );
        line.as_str().to_owned()
    }
}

/// How often the loop drains the ring buffer and sweeps for stuck connections.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub drain: Duration,
    pub sweep: Duration,
}

pub struct Tracer {
    loaded: Loaded,
    reader: Reader,
    /// The kernel's socket table, for the hang detector's checks.
    sockets: HashMap<MapData, u64, SockRecord>,
    tracker: Arc<Mutex<Tracker>>,
    health: Arc<Mutex<Health>>,
    metrics: Option<Metrics>,
    records: Vec<Record>,
    reported_loss: u64,
    /// When the kernel's folds were last read.
    folds_read: Instant,
}

/// The kernel's folds are read at most this often while events flow (and at every sweep).
const FOLD_READ_INTERVAL: Duration = Duration::from_millis(100);

impl Tracer {
    /// Loads and attaches the programs. Must run inside a tokio runtime (the ring buffer is
    /// registered with its reactor).
    pub fn start(options: &LoadOptions) -> Result<Self, LoadError> {
        Self::start_shared(options, Arc::default(), Arc::default())
    }

    /// Like [`Tracer::start`], with a live table and health counters already shared with the
    /// HTTP API and the metrics.
    pub(crate) fn start_shared(
        options: &LoadOptions,
        tracker: Arc<Mutex<Tracker>>,
        health: Arc<Mutex<Health>>,
    ) -> Result<Self, LoadError> {
        let mut loaded = loader::load(options)?;
        // Parsing the kernel's BTF (twice: ours and aya's) leaves megabytes of freed heap that
        // the allocator would otherwise keep for the life of the daemon.
        // SAFETY: malloc_trim only releases free memory; it has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let reader = Reader::new(&mut loaded.ebpf)?;
        let sockets = take_map(&mut loaded.ebpf, names::SOCKETS_MAP)?;
        lock(&tracker).set_kernel_folds(options.exchanges.fold.is_some());
        {
            let mut health = lock(&health);
            health.probes = loaded.families.clone();
            if let Some(libcalls) = &loaded.libcalls {
                health.probes.extend(libcalls.families());
                health.libcalls = libcalls.stats();
            }
        }
        Ok(Self {
            loaded,
            reader,
            sockets,
            tracker,
            health,
            metrics: None,
            records: Vec::with_capacity(1024),
            reported_loss: 0,
            folds_read: Instant::now(),
        })
    }

    /// The switch of the kernel's exchange events, for whoever changes the event selection.
    pub(crate) fn exchange_switch(&self) -> ExchangeSwitch {
        self.loaded.exchange_events.clone()
    }

    /// Adds what the kernel folded since the last read to the metrics and byte counters.
    fn read_folds(&mut self) {
        self.folds_read = Instant::now();
        read_folds(&mut self.loaded.folds, self.metrics.as_ref(), &self.tracker);
    }

    /// How each hook family is attached, the libcall families last.
    pub fn families(&self) -> Vec<FamilyAttach> {
        let mut families = self.loaded.families.clone();
        if let Some(libcalls) = &self.loaded.libcalls {
            families.extend(libcalls.families());
        }
        families
    }

    fn libcall_stats(&self) -> LibcallStats {
        self.loaded
            .libcalls
            .as_ref()
            .map(|libcalls| libcalls.stats())
            .unwrap_or_default()
    }

    /// Looks for libraries of new containers (the libcall families).
    pub(crate) fn rescan(&mut self) {
        let Some(libcalls) = &mut self.loaded.libcalls else {
            return;
        };
        libcalls.rescan(&mut self.loaded.ebpf);
        let mut health = lock(&self.health);
        health.probes = self.loaded.families.clone();
        health.probes.extend(libcalls.families());
        health.libcalls = libcalls.stats();
    }

    /// Hands the kernel filter maps to whoever changes them at runtime (once).
    pub(crate) fn take_filters(&mut self) -> Option<KernelFilters> {
        self.loaded.filters.take()
    }

    /// Feeds every record to these metrics from now on.
    pub(crate) fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = Some(metrics);
    }

    fn dispatch(
        records: &mut Vec<Record>,
        metrics: Option<&Metrics>,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let now = monotonic_now_ns();
        for record in records.drain(..) {
            if let Some(metrics) = metrics {
                metrics.observe(&record);
                metrics.observe_delay(&record, now);
            }
            sink.write(&record)?;
        }
        Ok(())
    }

    /// Drains the ring buffer once into the metrics and `sink`. Returns how many events.
    pub(crate) fn pump(&mut self, sink: &mut dyn Sink) -> io::Result<usize> {
        let read = {
            let mut tracker = lock(&self.tracker);
            let records = &mut self.records;
            self.reader.drain(|event| tracker.handle(event, records))
        };
        if read > 0 {
            lock(&self.health).reader = self.reader.stats();
            if self.folds_read.elapsed() >= FOLD_READ_INTERVAL {
                self.read_folds();
            }
        }
        Self::dispatch(&mut self.records, self.metrics.as_ref(), sink)?;
        if read > 0 {
            sink.flush()?;
        }
        Ok(read)
    }

    /// One hang-detection sweep; also refreshes the health counters.
    pub(crate) fn sweep(
        &mut self,
        thresholds: &StuckThresholds,
        sink: &mut dyn Sink,
    ) -> io::Result<SweepReport> {
        self.read_folds();
        let sockets = &self.sockets;
        let lookup = |sock: u64| {
            sockets.get(&sock, 0).ok().map(|record| KernelView {
                start_ns: record.start_ns,
                last_data_ns: record.burst.last_ns,
                bytes: record.bytes_sent + record.bytes_recv,
                state: record.state,
                task: record.task,
            })
        };
        let started = Instant::now();
        let report =
            lock(&self.tracker).sweep(monotonic_now_ns(), thresholds, lookup, &mut self.records);
        if let Some(metrics) = &self.metrics {
            metrics.set_stuck(&report.stuck);
            metrics.set_sweep_duration(started.elapsed());
        }
        Self::dispatch(&mut self.records, self.metrics.as_ref(), sink)?;
        sink.flush()?;
        if let Some(libcalls) = &mut self.loaded.libcalls {
            libcalls.reap_threads();
        }
        let libcalls = self.libcall_stats();
        {
            let mut health = lock(&self.health);
            health.reader = self.reader.stats();
            health.kernel = self.reader.kernel_stats();
            health.libcalls = libcalls;
        }
        self.warn_on_loss();
        Ok(report)
    }

    fn warn_on_loss(&mut self) {
        let lost = lock(&self.health).kernel.ringbuf_full;
        if lost > self.reported_loss {
            warn!(
                dropped = lost - self.reported_loss,
                total = lost,
                "ring buffer full: events dropped; raise --ringbuf-bytes or lower --drain-interval"
            );
            self.reported_loss = lost;
        }
    }

    /// Pumps events and sweeps until `shutdown` completes, following runtime setting changes.
    pub async fn run(
        &mut self,
        sink: &mut dyn Sink,
        timing: Timing,
        mut live: watch::Receiver<LiveSettings>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let mut thresholds = {
            let current = live.borrow_and_update();
            sink.configure(&current);
            self.apply_event_selection(&current);
            current.thresholds.stuck()
        };
        let mut drain = interval(timing.drain);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sweep = interval(timing.sweep);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rescan = interval(RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate, and start-up has just scanned.
        rescan.tick().await;
        let mut watching = true;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                ready = self.reader.readable() => {
                    ready?;
                    self.pump(sink)?;
                }
                _ = drain.tick() => {
                    self.pump(sink)?;
                }
                _ = sweep.tick() => {
                    self.pump(sink)?;
                    self.sweep(&thresholds, sink)?;
                }
                _ = rescan.tick() => self.rescan(),
                changed = live.changed(), if watching => match changed {
                    Ok(()) => {
                        let current = live.borrow_and_update();
                        sink.configure(&current);
                        self.apply_event_selection(&current);
                        thresholds = current.thresholds.stuck();
                    }
                    Err(_) => watching = false,
                },
            }
        }
    }

    /// Has the kernel send every exchange, or not, as the event selection needs.
    fn apply_event_selection(&self, live: &LiveSettings) {
        if let Err(err) = self.loaded.exchange_events.apply(live.events) {
            warn!("{err}");
        }
    }

    /// Detaches the programs, drains what is left, reports connections still open as partial
    /// and returns the final counters.
    pub fn stop(mut self, sink: &mut dyn Sink) -> io::Result<Stats> {
        let attached = self.loaded.families.len();
        let libcalls = self.libcall_stats();
        drop(self.loaded.ebpf);
        read_folds(&mut self.loaded.folds, self.metrics.as_ref(), &self.tracker);
        info!(hooks = attached, "detached");
        {
            let mut tracker = lock(&self.tracker);
            let records = &mut self.records;
            self.reader.drain(|event| tracker.handle(event, records));
            let sockets = &self.sockets;
            let lookup = |sock: u64| sockets.get(&sock, 0).ok();
            tracker.flush(monotonic_now_ns(), lookup, records);
        }
        Self::dispatch(&mut self.records, self.metrics.as_ref(), sink)?;
        sink.flush()?;
        Ok(Stats {
            reader: self.reader.stats(),
            kernel: self.reader.kernel_stats(),
            tracker: lock(&self.tracker).stats(),
            libcalls,
        })
    }
}

/// Adds what the kernel folded since the last read to the metrics and the tracker's byte
/// counters.
fn read_folds(folds: &mut FoldReader, metrics: Option<&Metrics>, tracker: &Mutex<Tracker>) {
    let growth = match folds.growth() {
        Ok(growth) => growth,
        Err(err) => {
            warn!("{err}");
            return;
        }
    };
    if let Some(metrics) = metrics {
        metrics.add_folded(&growth);
    }
    let bytes = |role| growth.roles[fold_index(role)].bytes;
    lock(tracker).add_kernel_bytes(&[
        bytes(role::CLIENT),
        bytes(role::SERVER),
        bytes(role::UNKNOWN),
    ]);
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
