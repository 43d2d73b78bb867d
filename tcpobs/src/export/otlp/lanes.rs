//! One lane per signal: a bounded queue and a task on the daemon's runtime that batches,
//! encodes and sends. Nothing here runs on the ring buffer reader, which only offers records.
//!
//! - [`Lane::offer`] is one `try_send`: a full queue costs a dropped record, counted
//!   (`reason="queue_full"`), never a wait.
//! - The task sends a batch when it has `batch` records or `delay` after the first; a
//!   retryable failure is retried after 0.5 s, then 1 s (three attempts in all), and then the
//!   batch is dropped and counted (`export_failed`). Meanwhile the task does not read its
//!   queue, which fills: memory stays bounded by the queue and one batch (with the buffer it
//!   is encoded in, kept from batch to batch). The next batch tries again, so export resumes
//!   by itself once the collector is back.
//! - Metrics are not queued: their task sends a snapshot of the exposition every interval
//!   and a last one when tcpobs stops (cumulative, so a snapshot lost while the collector is
//!   down costs resolution, not counts).
//! - Counting: `offered = exported + dropped` once the queues are empty; while they are not,
//!   the difference is in them. A timed-out request may still have reached the collector,
//!   so `export_failed` means "not confirmed".

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use prost::Message as _;
use tokio::{sync::mpsc, time::Instant};
use tracing::{info, warn};

use super::{
    Item,
    convert::Convert,
    proto::InstrumentationScope,
    transport::{Client, ExportError},
    wire::Messages,
};
use crate::config::otlp::{Batching, Signal, Target};

/// Why records were dropped, as a bounded label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The queue was full when the reader offered it.
    QueueFull,
    /// Its batch was not accepted after every attempt.
    ExportFailed,
    /// Still queued or being sent when tcpobs's stop deadline passed.
    Shutdown,
}

impl Dropped {
    pub(crate) const ALL: [Self; 3] = [Self::QueueFull, Self::ExportFailed, Self::Shutdown];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ExportFailed => "export_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// One signal's counters. Units: connections (traces), log records (logs), data points
/// (metrics).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Handed to the exporter.
    pub offered: AtomicU64,
    /// Left out by `--sample` before being offered.
    pub sampled_out: AtomicU64,
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// By [`Dropped`].
    pub dropped: [AtomicU64; 3],
    /// Failed requests (each attempt), by [`Reason`](super::transport::Reason).
    pub errors: [AtomicU64; 3],
}

impl Counts {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn drop(&self, why: Dropped, n: u64) {
        Self::add(&self.dropped[why as usize], n);
    }

    pub(crate) fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Dropped, all reasons.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|n| self.get(n)).sum()
    }

    /// Offered and neither exported nor dropped: queued, or being sent.
    pub(crate) fn pending(&self) -> u64 {
        self.get(&self.offered)
            .saturating_sub(self.get(&self.exported) + self.dropped_total())
    }
}

/// The counters of all three signals, by [`Signal::index`].
#[derive(Debug, Default)]
pub(crate) struct OtlpCounts {
    pub signals: [Counts; 3],
}

impl OtlpCounts {
    pub(crate) fn of(&self, signal: Signal) -> &Counts {
        &self.signals[signal.index()]
    }
}

/// The reader's end of a lane.
pub(crate) struct Lane {
    sender: mpsc::Sender<Arc<Item>>,
    counts: Arc<OtlpCounts>,
    signal: Signal,
}

impl Lane {
    /// Queues `item`, or counts it dropped: never waits.
    pub(crate) fn offer(&self, item: &Arc<Item>) {
        let counts = self.counts.of(self.signal);
        Counts::add(&counts.offered, 1);
        if self.sender.try_send(Arc::clone(item)).is_err() {
            counts.drop(Dropped::QueueFull, 1);
        }
    }
}

/// Retries of a batch, and the waits before them.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(1)];

/// Sends with retries and counts; logs when export starts failing and when it recovers.
pub(crate) struct Sender {
    client: Client,
    signal: Signal,
    counts: Arc<OtlpCounts>,
    failing: bool,
    /// Batches dropped since export started failing.
    lost_batches: u64,
    /// Set when tcpobs stops: no more retries.
    stopping: Arc<AtomicBool>,
}

impl Sender {
    pub(crate) fn new(
        target: Target,
        signal: Signal,
        counts: Arc<OtlpCounts>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client: Client::new(target),
            signal,
            counts,
            failing: false,
            lost_batches: 0,
            stopping,
        }
    }

    /// Counts `n` records handed over for sending (metrics' data points; the reader's lanes
    /// count theirs as they queue them).
    pub(crate) fn offered(&self, n: u64) {
        Counts::add(&self.counts.of(self.signal).offered, n);
    }

    /// Sends `message`, which holds `n` records; counts them exported or dropped.
    pub(crate) async fn send(&mut self, message: Bytes, n: u64) {
        let all = Arc::clone(&self.counts);
        let counts = all.of(self.signal);
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match self.client.send(message.clone()).await {
                Ok(()) => {
                    Counts::add(&counts.exported, n);
                    if self.failing {
                        info!(
                            signal = self.signal.as_str(),
                            batches_dropped = self.lost_batches,
                            "OTLP export works again"
                        );
                        (self.failing, self.lost_batches) = (false, 0);
                    }
                    return;
                }
                Err(err) => {
                    Counts::add(&counts.errors[err.reason() as usize], 1);
                    let retry = err.retryable()
                        && attempt < BACKOFF.len()
                        && !self.stopping.load(Ordering::Relaxed);
                    self.failed(&err, started.elapsed(), retry);
                    if !retry {
                        counts.drop(Dropped::ExportFailed, n);
                        self.lost_batches += 1;
                        return;
                    }
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
            }
        }
    }

    fn failed(&mut self, err: &ExportError, took: Duration, retry: bool) {
        if !self.failing {
            warn!(
                signal = self.signal.as_str(),
                reason = err.reason().as_str(),
                ?took,
                retry,
                "OTLP export failed: {err}; what cannot be sent is dropped and counted in \
                 tcpobs_otlp_dropped_total"
            );
            self.failing = true;
        }
    }
}

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tcpobs".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Starts a traces or logs lane: returns the reader's end; the task ends once every sender
/// is gone and the queue is empty.
pub(crate) fn start(
    signal: Signal,
    target: Target,
    batching: Batching,
    convert: Convert,
    resource: super::proto::Resource,
    counts: Arc<OtlpCounts>,
    stopping: Arc<AtomicBool>,
) -> (Lane, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(batching.queue);
    let lane = Lane {
        sender,
        counts: Arc::clone(&counts),
        signal,
    };
    let task = tokio::spawn(run(
        receiver,
        batching,
        convert,
        resource,
        Sender::new(target, signal, counts, stopping),
    ));
    (lane, task)
}

/// What every request of a lane carries around its records: the resource and the scope,
/// encoded.
struct Envelope {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

async fn run(
    mut receiver: mpsc::Receiver<Arc<Item>>,
    batching: Batching,
    mut convert: Convert,
    resource: super::proto::Resource,
    mut sender: Sender,
) {
    let envelope = Envelope {
        resource: resource.encode_to_vec(),
        scope: scope().encode_to_vec(),
    };
    let mut batch: Vec<Arc<Item>> = Vec::with_capacity(batching.batch);
    // One buffer for every batch's records (a request is a copy of them).
    let mut out = Messages::default();
    loop {
        // Wait for a first record, then for the batch to fill or its delay to pass.
        let Some(first) = receiver.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = Instant::now() + batching.delay;
        while batch.len() < batching.batch {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let message = encode(sender.signal, &batch, &mut convert, &envelope, &mut out);
        sender.send(message, batch.len() as u64).await;
        batch.clear();
    }
}

/// A batch as one export request.
fn encode(
    signal: Signal,
    batch: &[Arc<Item>],
    convert: &mut Convert,
    envelope: &Envelope,
    out: &mut Messages,
) -> Bytes {
    for item in batch {
        match signal {
            Signal::Traces => convert.spans(item, out),
            // (Metrics have a task of their own.)
            Signal::Logs | Signal::Metrics => convert.log(item, out),
        }
    }
    out.request(&envelope.resource, &envelope.scope)
}
