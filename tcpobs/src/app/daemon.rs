//! The running tracer: kernel programs, ring buffer reader and tracker, pumping records into
//! the metrics and a [`Sink`], sweeping for stuck connections, and looking for new
//! containers' libraries for the libcall probes, until told to stop.

use std::{
    future::Future,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tcpobs_common::{SockSample, folds::role_index as fold_index, role};
use tokio::{
    sync::watch,
    time::{Interval, MissedTickBehavior, interval},
};
use tracing::{info, warn};

use crate::{
    app::pacing::{Pacing, Prompt, Step},
    clock::monotonic_now_ns,
    config::live::{Filter, Filters, LiveSettings},
    export::{
        metrics::{Metrics, collect::Health},
        output::{
            OutputTotals, Sink,
            json::{Line, events},
        },
    },
    kernel::{
        decode::KernelEvent,
        diag::DropReasons,
        filters::KernelFilters,
        folds::{ExchangeSwitch, FoldReader},
        libcalls::{LibcallStats, RESCAN_INTERVAL},
        loader::{self, LoadError, LoadOptions, Loaded, families::family},
        misses::ProgramMisses,
        opens::DeferredOpens,
        reader::{Feed, KernelStats, Reader, ReaderStats, SocketTable},
        report::FamilyAttach,
    },
    model::{Record, Role, Stuck},
    sync::lock,
    tracker::{
        KernelFacts, KernelTable, KernelView, Listening, StallViews, StuckThresholds, SweepReport,
        Tracker, TrackerStats, classify,
    },
};

/// Every loss and health counter, from the kernel, the reader and the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reader: ReaderStats,
    pub kernel: KernelStats,
    pub tracker: TrackerStats,
    pub libcalls: LibcallStats,
    /// Filled in by the daemon once the tracer has stopped.
    pub output: OutputTotals,
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
            &self.output,
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
    /// The kernel's socket table, for the hang detector's checks (and the live view's, through
    /// the tracker).
    sockets: Arc<SocketTable>,
    tracker: Arc<Mutex<Tracker>>,
    health: Arc<Mutex<Health>>,
    metrics: Option<Metrics>,
    records: Vec<Record>,
    /// The loss counters as last reported in the log.
    reported_loss: KernelStats,
    /// Dropped close records of announced connections, as of the last sweep: when it grows,
    /// the next sweeps audit every live connection against the kernel's table.
    closes_lost_seen: u64,
    /// The runtime filters, which also pick the listening sockets watched.
    filters: Filters,
    /// Scratch for the stall check's suspects and readings.
    suspects: Vec<u64>,
    samples: Vec<SockSample>,
    /// When the kernel's folds were last read.
    folds_read: Instant,
    /// The deferred opens, if their flush program runs here (else the programs send every
    /// open at once).
    opens: Option<DeferredOpens>,
}

/// How many times every live connection is audited after the kernel reported dropped closes:
/// the audit needs two misses, and the first round may still see a record being removed.
const AUDIT_ALL_ROUNDS: u8 = 3;

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
        let (reader, sockets) = Reader::new(&mut loaded.ebpf)?;
        let opens = options
            .defer_opens
            .then(|| {
                DeferredOpens::start(&mut loaded.ebpf)
                    .map_err(|err| warn!("deferred opens: {err}; every open is sent at once"))
                    .ok()
            })
            .flatten();
        let sockets = Arc::new(sockets);
        let table = Arc::clone(&sockets);
        lock(&tracker)
            .set_kernel_table(Some(KernelTable::new(move |sock| table.get(&sock, 0).ok())));
        lock(&tracker).set_kernel_facts(KernelFacts {
            hz: loaded.sampler.as_ref().map_or(0, |sampler| sampler.hz),
            probes: loaded
                .families
                .iter()
                .any(|family| family.family == family::PROBES),
        });
        {
            let mut health = lock(&health);
            health.probes = loaded.families.clone();
            health.program_misses = Arc::new(ProgramMisses::of(&loaded.ebpf));
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
            reported_loss: KernelStats::default(),
            closes_lost_seen: 0,
            filters: options.filters.clone(),
            suspects: Vec::new(),
            samples: Vec::new(),
            folds_read: Instant::now(),
            opens,
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
        // By reference, then cleared: a record is several hundred bytes, and moving each out
        // of the vector showed as a tenth of the daemon's copying under churn.
        let written = records.iter().try_for_each(|record| {
            if let Some(metrics) = metrics {
                metrics.observe(record);
                metrics.observe_delay(record, now);
            }
            sink.write(record)
        });
        records.clear();
        written
    }

    /// Flushes the deferred opens that have waited long enough.
    fn flush_opens(&mut self) {
        if let Some(opens) = &mut self.opens {
            opens.tick(&self.loaded.ebpf);
        }
    }

    /// Drains the ring buffer once into the metrics and `sink`. Returns how many events.
    pub(crate) fn pump(&mut self, sink: &mut dyn Sink) -> io::Result<usize> {
        let read = {
            let mut tracker = lock(&self.tracker);
            self.reader
                .drain(&mut Feeding::new(&mut tracker, &mut self.records))
                .read
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
        // After the drain, when the ring buffer has the most room; the next drain reads them.
        self.flush_opens();
        Ok(read)
    }

    /// One hang-detection sweep; also refreshes the health counters.
    pub(crate) fn sweep(
        &mut self,
        thresholds: &StuckThresholds,
        sink: &mut dyn Sink,
    ) -> io::Result<SweepReport> {
        let started = Instant::now();
        self.flush_opens();
        let now = monotonic_now_ns();
        let (stalls, listening) = self.read_live(now, thresholds);
        self.read_folds();
        // Connections whose close was dropped stay in the live table until the audit finds
        // their socket gone, and those whose state event was skipped keep their old state
        // until a lookup reads it: audit them all on the next sweeps, not on the slow rotation.
        let kernel = self.reader.kernel_stats();
        let closes_lost =
            kernel.closes_lost_total() + self.reader.stats().spills_evicted + kernel.states_skipped;
        if closes_lost > self.closes_lost_seen {
            self.closes_lost_seen = closes_lost;
            lock(&self.tracker).audit_all(AUDIT_ALL_ROUNDS);
        }
        let sockets = &self.sockets;
        let lookup = |sock: u64| sockets.get(&sock, 0).ok().map(|rec| KernelView::of(&rec));
        let (mut report, listeners) = {
            let mut tracker = lock(&self.tracker);
            tracker.set_reader_behind(self.reader.behind());
            let report = tracker.sweep_with(now, thresholds, lookup, &stalls, &mut self.records);
            let listeners = tracker.observe_listeners(
                now,
                thresholds.accept_queue_ns,
                &listening,
                &mut self.records,
            );
            (report, listeners)
        };
        report.stuck[Stuck::AcceptQueueFull as usize] = listeners.stuck;
        for &(sock, start_ns) in &report.outlived {
            self.reader.forget_stale(sock, start_ns);
        }
        let queues = self.metrics.as_ref().map(|metrics| {
            metrics.set_stuck(&report.stuck);
            metrics.listeners.observe_drops(&listeners.drops);
            metrics.set_sweep_duration(started.elapsed());
            metrics.listeners.queues(&listeners.queues)
        });
        Self::dispatch(&mut self.records, self.metrics.as_ref(), sink)?;
        sink.flush()?;
        if let Some(libcalls) = &mut self.loaded.libcalls {
            libcalls.reap_threads();
        }
        let libcalls = self.libcall_stats();
        let drops = self.loaded.drop_reasons.as_ref().map(DropReasons::counts);
        {
            let mut health = lock(&self.health);
            health.reader = self.reader.stats();
            health.kernel = kernel;
            health.libcalls = libcalls;
            if let Some(queues) = queues {
                health.listener_queues = queues;
            }
            health.packet_drops = drops;
        }
        self.warn_on_loss();
        Ok(report)
    }

    /// Reads, with the sampler, the stall check's suspects (what each reading says, by
    /// socket) and every listening socket the filters let through.
    fn read_live(
        &mut self,
        now: u64,
        thresholds: &StuckThresholds,
    ) -> (StallViews, Vec<Listening>) {
        let Ok(sampler) = &mut self.loaded.sampler else {
            return (StallViews::default(), Vec::new());
        };
        self.suspects.clear();
        lock(&self.tracker).stall_suspects(now, thresholds, &mut self.suspects);
        self.samples.clear();
        sampler.sample_socks(&self.loaded.ebpf, &self.suspects, &mut self.samples);
        let stalls = self
            .samples
            .iter()
            .filter_map(|sample| {
                let view = classify(sample, sampler.hz)?;
                Some((sample.sock, (sample.start_ns, view)))
            })
            .collect();
        let mut listening = sampler.listeners(&self.loaded.ebpf);
        listening.retain(|listener| listener_watched(&self.filters, listener));
        (stalls, listening)
    }

    fn warn_on_loss(&mut self) {
        let kernel = lock(&self.health).kernel;
        warn_on_loss(&mut self.reported_loss, kernel);
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
            self.filters = current.filters.clone();
            self.apply_event_selection(&current);
            current.thresholds.stuck()
        };
        let mut drain = interval(timing.drain);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pacing = Pacing::default();
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
                    let read = self.pump(sink)?;
                    self.pace(&mut pacing, Prompt::Kernel, read, &mut drain);
                }
                _ = drain.tick(), if pacing.timer_runs() => {
                    let read = self.pump(sink)?;
                    self.pace(&mut pacing, Prompt::Timer, read, &mut drain);
                }
                _ = sweep.tick() => {
                    let read = self.pump(sink)?;
                    self.pace(&mut pacing, Prompt::Sweep, read, &mut drain);
                    self.sweep(&thresholds, sink)?;
                }
                _ = rescan.tick() => self.rescan(),
                changed = live.changed(), if watching => match changed {
                    Ok(()) => {
                        let current = live.borrow_and_update();
                        sink.configure(&current);
                        self.filters = current.filters.clone();
                        self.apply_event_selection(&current);
                        thresholds = current.thresholds.stuck();
                    }
                    Err(_) => watching = false,
                },
            }
        }
    }

    /// Follows a drain that `prompt` started and that read `read` events with the reader's
    /// pacing ([`super::pacing`]): sets or clears `READER_IDLE`, and restarts the drain timer
    /// when events come again. If the map refuses the flag, the timer runs for good (warned).
    fn pace(&mut self, pacing: &mut Pacing, prompt: Prompt, read: usize, drain: &mut Interval) {
        let found = read > 0 || self.reader.behind();
        let idle = match pacing.after_drain(prompt, found) {
            Step::Stay => return,
            Step::Arm => true,
            Step::Wait => {
                self.reader.count_idle_wait();
                lock(&self.health).reader = self.reader.stats();
                // An open deferred by a program that read the flag just before it was set.
                if let Some(opens) = &mut self.opens {
                    opens.flush_all(&self.loaded.ebpf);
                }
                return;
            }
            Step::Resume => {
                drain.reset();
                false
            }
        };
        if let Err(err) = self.reader.set_idle(idle) {
            warn!("{err}; the reader drains on its timer from now on");
            pacing.disable();
        } else if idle && let Some(opens) = &mut self.opens {
            // The programs defer nothing from now on, and what they deferred is no event to
            // wake the reader: flushed now, it is read by the next drain (which then resumes).
            opens.flush_all(&self.loaded.ebpf);
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
    ///
    /// The programs are told first that nobody will read any more: from then on they send
    /// nothing and count nothing as lost (detaching takes a while, and what they would send
    /// meanwhile would only be dropped and counted). What was sent before is drained.
    pub fn stop(mut self, sink: &mut dyn Sink) -> io::Result<Stats> {
        let attached = self.loaded.families.len();
        let libcalls = self.libcall_stats();
        if let Some(opens) = &mut self.opens {
            opens.stop(&self.loaded.ebpf);
        }
        if let Err(err) = self.reader.stop_sources() {
            warn!("{err}; events sent while detaching will be counted as lost");
        }
        {
            let mut tracker = lock(&self.tracker);
            self.reader
                .drain_all(&mut Feeding::new(&mut tracker, &mut self.records));
        }
        drop(self.loaded.ebpf);
        read_folds(&mut self.loaded.folds, self.metrics.as_ref(), &self.tracker);
        info!(hooks = attached, "detached");
        {
            let mut tracker = lock(&self.tracker);
            let records = &mut self.records;
            self.reader
                .drain_all(&mut Feeding::new(&mut tracker, records));
            let sockets = &self.sockets;
            let lookup = |sock: u64| sockets.get(&sock, 0).ok();
            tracker.flush(monotonic_now_ns(), lookup, records);
            tracker.set_kernel_table(None);
        }
        Self::dispatch(&mut self.records, self.metrics.as_ref(), sink)?;
        sink.flush()?;
        let kernel = self.reader.kernel_stats();
        warn_on_loss(&mut self.reported_loss, kernel);
        Ok(Stats {
            reader: self.reader.stats(),
            kernel,
            tracker: lock(&self.tracker).stats(),
            libcalls,
            output: OutputTotals::default(),
        })
    }
}

/// The tracker, fed by the reader.
struct Feeding<'a> {
    tracker: &'a mut Tracker,
    records: &'a mut Vec<Record>,
}

impl<'a> Feeding<'a> {
    fn new(tracker: &'a mut Tracker, records: &'a mut Vec<Record>) -> Self {
        Self { tracker, records }
    }
}

impl Feed for Feeding<'_> {
    fn superseded(&self, event: &KernelEvent) -> Option<u64> {
        self.tracker.superseded(event)
    }

    fn handle(&mut self, event: &KernelEvent) {
        self.tracker.handle(event, self.records);
    }
}

/// Logs the events (and the connections, of which nothing reached the daemon) the kernel
/// dropped since `reported`, and remembers `kernel` as reported.
fn warn_on_loss(reported: &mut KernelStats, kernel: KernelStats) {
    let lost = kernel.ringbuf_full;
    if lost > reported.ringbuf_full {
        let connections = kernel.connections_lost_total();
        warn!(
            dropped = lost - reported.ringbuf_full,
            total = lost,
            connections_lost = connections - reported.connections_lost_total(),
            connections_lost_total = connections,
            "ring buffer full: events dropped; raise --ringbuf-bytes or lower --drain-interval"
        );
    }
    *reported = kernel;
}

/// Whether the runtime filters let a listening socket's gauges through: its port (local) and
/// its owner's pid (the address and cgroup filters apply to connections only).
fn listener_watched(filters: &Filters, listener: &Listening) -> bool {
    let port = listener.sample.port;
    let pid = listener.owner.map(|owner| owner.pid);
    let passes = |filter_on: bool, include: bool, matched: bool| !filter_on || include == matched;
    let (ports_on, ports_include, ports_match) = match &filters.ports {
        Filter::Off => (false, true, false),
        Filter::Include(ports) => (true, true, ports.contains(&port)),
        Filter::Exclude(ports) => (true, false, ports.contains(&port)),
    };
    let (pids_on, pids_include, pids_match) = match &filters.pids {
        Filter::Off => (false, true, false),
        Filter::Include(pids) => (true, true, pid.is_some_and(|pid| pids.contains(&pid))),
        Filter::Exclude(pids) => (true, false, pid.is_some_and(|pid| pids.contains(&pid))),
    };
    passes(ports_on, ports_include, ports_match) && passes(pids_on, pids_include, pids_match)
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
        // Label slots: the cgroups' new slots first (a slot is given new values only once two
        // complete reads have followed its last cgroup's removal, so what it folded before
        // counts under the values it had), then what they folded, then the upkeep.
        folds.write_slots(&metrics.take_slot_writes());
        metrics.note_label_slots();
        let (grown, read_all) = folds.labeled_growth(metrics.label_slots());
        for (slot, role, growth) in grown {
            metrics.add_folded_labeled(slot, Role::from_kernel(role), &growth);
        }
        metrics.maintain_label_slots(read_all);
    }
    let bytes = |role| growth.roles[fold_index(role)].bytes;
    lock(tracker).add_kernel_bytes(&[
        bytes(role::CLIENT),
        bytes(role::SERVER),
        bytes(role::UNKNOWN),
    ]);
}
