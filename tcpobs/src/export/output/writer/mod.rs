//! The output's writer thread, and the bounded queue between it and the pipeline.
//!
//! The pipeline formats events into blocks of whole lines and hands each block over without
//! waiting ([`Queue::push`]). A reader of stdout slower than the events, a full disk or a
//! closed pipe therefore never holds up the ring buffer reader, the metrics, the hang
//! detector or the signals: they cost events, and every one is counted. When the queue holds
//! more than its capacity (`--output-queue-bytes`), a new block is dropped whole and its
//! events are counted as `output_slow`; a block whose write fails is counted as
//! `write_error`, and the failure by its cause ([`WriteFailure`]). Both are logged at most
//! once per [`LOG_EVERY`], with what was left unsaid in between.
//!
//! A line is written whole or not at all, as far as the daemon can see to it. A write that
//! fails after part of a block went out (a full disk takes what fits, then refuses) is cut
//! back to the end of its last whole line: a regular file is truncated there. Where nothing can
//! be cut (a pipe, a character device), the next block starts with a newline, so that the
//! broken line stands alone and every later line parses. The same holds for a file that
//! already ends mid-line when tcpobs opens it (a previous instance killed mid-write).
//!
//! `SIGHUP` asks for the output file to be reopened (log rotation: logrotate's `postrotate`,
//! after renaming the file); the writer does it at once, even when idle. A file that cannot be
//! reopened is counted (`reopen`) and written to where it was, and reopening is tried again
//! before each block.
//!
//! At shutdown the last blocks are queued whatever the queue holds, and the writer gets
//! [`STOP_DEADLINE`] to write them out. What it has not taken by then is dropped (counted), so
//! that the final `stats` line, which counts it, comes next and gets [`LAST_LINE_GRACE`]: a
//! slow reader still receives the stats, and one that stopped reading delays the exit by
//! these two at most.

mod dest;
#[cfg(test)]
mod tests;
mod throttle;

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

pub(crate) use self::{
    dest::{Destination, FileDest},
    throttle::Throttle,
};
use super::select::OutputCounts;
use crate::sync::lock;

/// How long the daemon waits, when it stops, for the writer to write out what is queued.
pub(crate) const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// How much longer the final `stats` line gets, once what was still queued is dropped (the
/// block being written is finished first: about [`FLUSH_AT`](super::FLUSH_AT) at most).
pub(crate) const LAST_LINE_GRACE: Duration = Duration::from_secs(1);

/// Failed writes and dropped blocks are logged at most this often.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often the writer checks whether its file has been removed.
const CHECK_REMOVED_EVERY: Duration = Duration::from_secs(1);

/// Spare blocks kept for reuse, so that handing blocks over allocates nothing in steady state.
const SPARES: usize = 4;

/// Why events were not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full: whoever reads the output is slower than the events.
    OutputSlow,
    /// The write failed ([`WriteFailure`] says why).
    WriteError,
}

impl DropReason {
    pub(crate) const ALL: [Self; 2] = [Self::OutputSlow, Self::WriteError];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::OutputSlow => "output_slow",
            Self::WriteError => "write_error",
        }
    }
}

/// What a failed write, or reopen, ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteFailure {
    /// ENOSPC or EDQUOT: the file system or the quota is full.
    NoSpace,
    /// EPIPE: nobody reads the pipe any more.
    BrokenPipe,
    /// The output file could not be reopened after SIGHUP.
    Reopen,
    Other,
}

impl WriteFailure {
    pub(crate) const ALL: [Self; 4] = [Self::NoSpace, Self::BrokenPipe, Self::Reopen, Self::Other];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoSpace => "no_space",
            Self::BrokenPipe => "broken_pipe",
            Self::Reopen => "reopen",
            Self::Other => "other",
        }
    }

    pub(crate) fn of(err: &io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Self::NoSpace,
            Some(libc::EPIPE) => Self::BrokenPipe,
            _ => Self::Other,
        }
    }
}

/// Marks a line that is not an event (the final `stats` line): counted nowhere.
pub(crate) const NOT_AN_EVENT: u8 = u8::MAX;

/// Whole lines, with where each ends and which event it is.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub(crate) bytes: Vec<u8>,
    /// (end offset in `bytes`, [`EventType::index`](crate::export::output::select::EventType::index) or [`NOT_AN_EVENT`]), in order.
    pub(crate) lines: Vec<(u32, u8)>,
}

impl Block {
    fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
    }

    /// Adds one to `counters` (indexed by event type) for each event among `lines`.
    fn count(lines: &[(u32, u8)], counters: &[std::sync::atomic::AtomicU64]) -> u64 {
        let mut events = 0;
        for &(_, kind) in lines {
            if let Some(counter) = counters.get(usize::from(kind)) {
                counter.fetch_add(1, Ordering::Relaxed);
                events += 1;
            }
        }
        events
    }

    /// How many of the lines are events.
    #[cfg(test)]
    fn events(&self) -> u64 {
        self.lines
            .iter()
            .filter(|&&(_, kind)| usize::from(kind) < super::select::EventType::ALL.len())
            .count() as u64
    }
}

#[derive(Debug, Default)]
struct State {
    blocks: VecDeque<Block>,
    queued_bytes: usize,
    /// The writer holds a block.
    busy: bool,
    /// No more blocks will come: the writer exits once the queue is empty.
    closing: bool,
    /// Whether the last block written was written whole.
    last_ok: bool,
    reopen: bool,
    spare: Vec<Block>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: a block, a reopen request, or closing.
    work: Condvar,
    /// Wakes whoever waits for the writer to catch up.
    idle: Condvar,
    capacity: usize,
    counts: Arc<OutputCounts>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn recycle(state: &mut State, mut block: Block) {
        if state.spare.len() < SPARES {
            block.clear();
            state.spare.push(block);
        }
    }
}

/// The pipeline's end of the queue; the writer thread holds the other.
#[derive(Debug)]
pub(crate) struct Queue {
    shared: Arc<Shared>,
}

/// A block refused because the queue was full.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full {
    /// The events it held, now counted as dropped (`output_slow`).
    pub(crate) events: u64,
}

/// Asks the writer to reopen its destination (`SIGHUP`).
#[derive(Clone, Debug)]
pub(crate) struct ReopenHandle(Arc<Shared>);

impl ReopenHandle {
    pub(crate) fn request(&self) {
        self.0.lock().reopen = true;
        self.0.work.notify_one();
    }
}

impl Queue {
    /// Starts the writer thread on `dest`. At most `capacity` bytes wait for it (one block
    /// always may, however large).
    pub(crate) fn start(
        dest: Box<dyn Destination>,
        capacity: usize,
        counts: Arc<OutputCounts>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            work: Condvar::new(),
            idle: Condvar::new(),
            capacity,
            counts,
        });
        let writer = Writer::new(dest, Arc::clone(&shared));
        thread::Builder::new()
            .name("tcpobs-output".to_owned())
            .spawn(move || writer.run())?;
        Ok(Self { shared })
    }

    pub(crate) fn reopen_handle(&self) -> ReopenHandle {
        ReopenHandle(Arc::clone(&self.shared))
    }

    /// An empty block to fill (a recycled one when there is one).
    pub(crate) fn spare(&self) -> Block {
        self.shared.lock().spare.pop().unwrap_or_default()
    }

    /// Queues `block` for the writer, unless the queue is full and `force` is not set: then
    /// the block is dropped and its events counted.
    pub(crate) fn push(&self, block: Block, force: bool) -> Result<(), Full> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if block.bytes.is_empty() {
            Shared::recycle(&mut state, block);
            return Ok(());
        }
        let len = block.bytes.len();
        if !force && state.queued_bytes > 0 && state.queued_bytes + len > shared.capacity {
            let slow = &shared.counts.dropped[DropReason::OutputSlow as usize];
            let events = Block::count(&block.lines, slow);
            Shared::recycle(&mut state, block);
            return Err(Full { events });
        }
        state.queued_bytes += len;
        shared
            .counts
            .queued_bytes
            .store(state.queued_bytes as u64, Ordering::Relaxed);
        state.blocks.push_back(block);
        drop(state);
        shared.work.notify_one();
        Ok(())
    }

    /// Whether the writer is in the middle of a write.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> bool {
        self.shared.lock().busy
    }

    /// Waits until the writer has nothing left, at most `timeout`. Whether it got there.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if state.blocks.is_empty() && !state.busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Drops every block still queued (not the one being written), counting their events
    /// as `output_slow`. Returns how many events.
    pub(crate) fn discard(&self) -> u64 {
        let mut state = self.shared.lock();
        let slow = &self.shared.counts.dropped[DropReason::OutputSlow as usize];
        let mut events = 0;
        while let Some(block) = state.blocks.pop_front() {
            state.queued_bytes -= block.bytes.len();
            events += Block::count(&block.lines, slow);
            Shared::recycle(&mut state, block);
        }
        self.shared.counts.queued_bytes.store(0, Ordering::Relaxed);
        events
    }

    /// No more blocks: lets the writer write out the queue and exit, waiting at most
    /// `timeout`. Whether it got there and wrote the last block whole (if it did not get
    /// there, it goes on until the process exits).
    pub(crate) fn finish(&self, timeout: Duration) -> bool {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
        self.wait_idle(timeout) && self.shared.lock().last_ok
    }
}

/// The writer thread: takes blocks off the queue and writes them to its destination.
struct Writer {
    dest: Box<dyn Destination>,
    shared: Arc<Shared>,
    /// The destination ends mid-line: the next block starts with a newline. `None` until
    /// the destination has been looked at.
    broken_line: Option<bool>,
    /// A reopen failed; tried again before each block.
    reopen_pending: bool,
    /// Writes failed since the last one that succeeded.
    failing: u64,
    throttle: Throttle,
    /// When the destination was last checked for having been removed.
    checked: Option<Instant>,
    removed: bool,
}

impl Writer {
    fn new(dest: Box<dyn Destination>, shared: Arc<Shared>) -> Self {
        Self {
            dest,
            shared,
            // Looked at before the first write (the log is set up by then).
            broken_line: None,
            reopen_pending: false,
            failing: 0,
            throttle: Throttle::new(LOG_EVERY),
            checked: None,
            removed: false,
        }
    }

    fn run(mut self) {
        loop {
            let (block, reopen) = {
                let mut state = self.shared.lock();
                while state.blocks.is_empty() && !state.reopen {
                    if state.closing {
                        drop(state);
                        self.say_what_was_held_back();
                        self.shared.idle.notify_all();
                        return;
                    }
                    state = self
                        .shared
                        .work
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                let reopen = std::mem::take(&mut state.reopen);
                let block = state.blocks.pop_front();
                if let Some(block) = &block {
                    state.queued_bytes -= block.bytes.len();
                    state.busy = true;
                    self.shared
                        .counts
                        .queued_bytes
                        .store(state.queued_bytes as u64, Ordering::Relaxed);
                }
                (block, reopen)
            };
            if reopen {
                self.reopen();
            }
            let Some(block) = block else { continue };
            if self.reopen_pending {
                self.reopen();
            }
            let ok = self.write(&block);
            let mut state = self.shared.lock();
            state.busy = false;
            state.last_ok = ok;
            Shared::recycle(&mut state, block);
            let idle = state.blocks.is_empty();
            drop(state);
            if idle {
                self.shared.idle.notify_all();
            }
        }
    }

    /// At the end: failures whose warnings the throttle held back are not left unsaid.
    fn say_what_was_held_back(&mut self) {
        if self.throttle.held() > 0 {
            let errors: u64 = self.shared.counts.errors().iter().sum();
            warn!(
                output = %self.dest.describe(),
                total_failures = errors,
                "{} more output failures since the last warning; the last write {}",
                self.throttle.held(),
                if self.failing > 0 { "failed" } else { "succeeded" }
            );
        }
    }

    fn reopen(&mut self) {
        match self.dest.reopen() {
            Ok(()) => {
                self.reopen_pending = false;
                self.removed = false;
                self.broken_line = None;
            }
            Err(err) => {
                self.count_failure(WriteFailure::Reopen);
                self.reopen_pending = true;
                if let Some(held) = self.throttle.ready(Instant::now()) {
                    warn!(
                        output = %self.dest.describe(),
                        held_back = held,
                        "cannot reopen the output: {err}; writing on to the file already open, \
                         and trying again before the next events"
                    );
                }
            }
        }
    }

    fn count_failure(&self, failure: WriteFailure) {
        self.shared.counts.errors[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `block`, counting its events as written or dropped. Whether it was written.
    fn write(&mut self, block: &Block) -> bool {
        self.check_removed();
        let shared = Arc::clone(&self.shared);
        let counts = &shared.counts;
        let (err, complete) = match self.write_lines(block) {
            Ok(()) => {
                Block::count(&block.lines, &counts.written);
                if self.failing > 0 {
                    info!(
                        output = %self.dest.describe(),
                        failed_writes = self.failing,
                        "writing events again"
                    );
                    self.failing = 0;
                }
                return true;
            }
            Err(failed) => failed,
        };
        let (done, lost) = block.lines.split_at(complete);
        Block::count(done, &counts.written);
        let dropped = Block::count(lost, &counts.dropped[DropReason::WriteError as usize]);
        let failure = WriteFailure::of(&err);
        self.count_failure(failure);
        self.failing += 1;
        if let Some(held) = self.throttle.ready(Instant::now()) {
            warn!(
                output = %self.dest.describe(),
                reason = failure.as_str(),
                dropped,
                held_back = held,
                "cannot write events: {err}; they are dropped and counted \
                 (tcpobs_output_events_dropped_total), tracing goes on"
            );
        }
        false
    }

    /// Writes the block whole. On failure: the error, and how many of its lines are in the
    /// destination whole; a line begun and not finished is cut off, or isolated by the next
    /// block's leading newline.
    fn write_lines(&mut self, block: &Block) -> Result<(), (io::Error, usize)> {
        let broken_line = *self.broken_line.get_or_insert_with(|| {
            let broken = self.dest.ends_mid_line();
            if broken {
                warn!(
                    output = %self.dest.describe(),
                    "the output ends in the middle of a line (a previous writer stopped \
                     mid-write); starting on a new line"
                );
            }
            broken
        });
        if broken_line {
            self.write_all(b"\n").map_err(|(err, _)| (err, 0))?;
            self.broken_line = Some(false);
        }
        let Err((err, written)) = self.write_all(&block.bytes) else {
            return Ok(());
        };
        let complete = block
            .lines
            .partition_point(|&(end, _)| end as usize <= written);
        let kept = complete
            .checked_sub(1)
            .map_or(0, |last| block.lines[last].0 as usize);
        let partial = (written - kept) as u64;
        if partial > 0 {
            match self.dest.unwrite(partial) {
                Ok(()) => debug!(bytes = partial, "a line written in part was cut back"),
                Err(_) => {
                    debug!(
                        bytes = partial,
                        "a line written in part stays; the next starts anew"
                    );
                    self.broken_line = Some(true);
                }
            }
        }
        Err((err, complete))
    }

    /// Writes all of `bytes`; on failure, how many were written.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut written = 0;
        while written < bytes.len() {
            match self.dest.write(&bytes[written..]) {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // Someone made the shared file description non-blocking.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.dest.wait_writable(),
                Err(err) => return Err((err, written)),
            }
        }
        Ok(())
    }

    /// Warns (once) when the output file has been removed: its events then go nowhere anyone
    /// can read until SIGHUP reopens it. Checked at most every [`CHECK_REMOVED_EVERY`].
    fn check_removed(&mut self) {
        let now = Instant::now();
        if self.removed
            || self
                .checked
                .is_some_and(|checked| now.saturating_duration_since(checked) < CHECK_REMOVED_EVERY)
        {
            return;
        }
        self.checked = Some(now);
        if self.dest.removed() {
            self.removed = true;
            warn!(
                output = %self.dest.describe(),
                "the output file was removed; events go to the removed file until SIGHUP \
                 reopens the path"
            );
        }
    }
}
