//! OpenTelemetry export (OTLP): each connection as a trace, the events as log records, the
//! metrics under OpenTelemetry's names, to a collector, by OTLP/HTTP or OTLP/gRPC. Off unless
//! an endpoint is given ([`crate::config::otlp`] reads the settings).
//!
//! Never on the hot path: the ring buffer reader hands each record that the event selection
//! and sampling let through ([`select`](super::output::select), the same rules as the JSON
//! output) to [`Otlp`], which shares it with the traces and logs lanes with one non-blocking
//! `try_send` each ([`lanes`]). Each lane is a task on the daemon's runtime that converts
//! ([`convert`]), encodes ([`proto`]: our own prost messages) and sends ([`transport`]: hyper)
//! in batches, with timeouts and bounded retries. A collector that is down or slow costs
//! dropped telemetry, counted in `/metrics` (`tcpobs_otlp_*`), never a stalled reader or
//! growing memory. Metrics are the `/metrics` exposition, read every interval ([`metrics`]).
//!
//! Why not the OpenTelemetry SDK (measured in the research): its batch processors
//! drop spans without a counter we can read, building spans on the reader costs 6–24 µs per
//! connection, and it cannot send histograms that are already aggregated.

mod attributes;
mod convert;
mod exposition;
mod lanes;
mod metrics;
mod proto;
mod transport;
mod wire;

use std::{
    io,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::info;

use self::{
    attributes::{Ids, kv, string},
    convert::Convert,
    lanes::{Counts, Dropped, Lane, OtlpCounts, Sender},
    metrics::MetricsTask,
    proto::Resource,
    transport::Reason,
    wire::Attributes,
};
use super::output::{
    Sink,
    select::{AnomalyLimits, EventType, Sampler, selected},
};
use crate::{
    clock::{Clock, monotonic_now_ns},
    config::{
        live::{EventSelection, LiveSettings, Thresholds},
        otlp::{OtlpSettings, Signal},
    },
    metadata::{Meta, Metadata},
    model::Record,
};

/// How long stopping waits for what is queued to be sent.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A record handed to the exporter, shared by the traces and logs lanes.
pub(crate) struct Item {
    record: Record,
    event: EventType,
    meta: Option<Arc<Meta>>,
    /// The thresholds when it was selected (a connection's anomalies depend on them).
    limits: AnomalyLimits,
    /// Its event's attributes, worked out by the first lane that needs them.
    attributes: OnceLock<Attributes>,
}

/// The counters of OTLP export, for `/metrics`.
#[derive(Clone, Debug)]
pub(crate) struct OtlpMetrics {
    counts: Arc<OtlpCounts>,
    signals: Vec<Signal>,
}

impl OtlpMetrics {
    /// `None` when export is off (and `/metrics` has no `tcpobs_otlp_*`).
    pub(crate) fn new(settings: &OtlpSettings) -> Option<Self> {
        settings.enabled().then(|| Self {
            counts: Arc::default(),
            signals: Signal::ALL
                .into_iter()
                .filter(|signal| settings.target(*signal).is_some())
                .collect(),
        })
    }
}

impl Collector for OtlpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_signal = |encoder: &mut DescriptorEncoder,
                          name: &str,
                          help: &str,
                          value: &dyn Fn(&Counts) -> u64,
                          signals: &[Signal]|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for signal in signals {
                let counts = self.counts.of(*signal);
                ConstCounter::new(value(counts))
                    .encode(family.encode_family(&[("signal", signal.as_str())])?)?;
            }
            Ok(())
        };
        per_signal(
            &mut encoder,
            "tcpobs_otlp_offered",
            "Records handed to the OTLP exporter: connections (traces), log records, metric \
             data points",
            &|c| c.get(&c.offered),
            &self.signals,
        )?;
        per_signal(
            &mut encoder,
            "tcpobs_otlp_exported",
            "Records the collector accepted",
            &|c| c.get(&c.exported),
            &self.signals,
        )?;
        let queued: Vec<Signal> = self
            .signals
            .iter()
            .copied()
            .filter(|signal| *signal != Signal::Metrics)
            .collect();
        per_signal(
            &mut encoder,
            "tcpobs_otlp_sampled_out",
            "Records --sample left out before they were offered",
            &|c| c.get(&c.sampled_out),
            &queued,
        )?;
        let mut dropped = encoder.encode_descriptor(
            "tcpobs_otlp_dropped",
            "Records not exported, by reason: queue_full (offered to a full queue), \
             export_failed (no attempt was accepted), shutdown (still queued when tcpobs \
             stopped)",
            None,
            MetricType::Counter,
        )?;
        for signal in &self.signals {
            let counts = self.counts.of(*signal);
            for why in Dropped::ALL {
                ConstCounter::new(counts.get(&counts.dropped[why as usize])).encode(
                    dropped
                        .encode_family(&[("signal", signal.as_str()), ("reason", why.as_str())])?,
                )?;
            }
        }
        let mut errors = encoder.encode_descriptor(
            "tcpobs_otlp_export_errors",
            "Failed export requests (each attempt), by reason: transport (no connection), \
             timeout (no answer in time), rejected (an error status)",
            None,
            MetricType::Counter,
        )?;
        for signal in &self.signals {
            let counts = self.counts.of(*signal);
            for reason in Reason::ALL {
                ConstCounter::new(counts.get(&counts.errors[reason as usize])).encode(
                    errors.encode_family(&[
                        ("signal", signal.as_str()),
                        ("reason", reason.as_str()),
                    ])?,
                )?;
            }
        }
        Ok(())
    }
}

/// The running exporter, and the [`Sink`] the reader hands records to.
pub struct Otlp {
    traces: Option<Lane>,
    logs: Option<Lane>,
    tasks: Vec<(Signal, JoinHandle<()>)>,
    stop_metrics: Option<oneshot::Sender<()>>,
    counts: Arc<OtlpCounts>,
    stopping: Arc<AtomicBool>,
    selection: EventSelection,
    limits: AnomalyLimits,
    sampler: Sampler,
    metadata: Option<Arc<Metadata>>,
}

impl Otlp {
    /// Starts the lanes (tasks on the current tokio runtime). `registry` is what `/metrics`
    /// serves, `metrics` its OTLP counters, `start_ns` when the daemon started (Unix ns).
    pub(crate) fn start(
        settings: &OtlpSettings,
        metrics: &OtlpMetrics,
        registry: Arc<Registry>,
        metadata: Option<Arc<Metadata>>,
        clock: Clock,
        start_ns: u64,
    ) -> Self {
        let resource = Resource {
            attributes: settings
                .resource
                .iter()
                .map(|(key, value)| kv(key.as_str(), string(value.as_str())))
                .collect(),
        };
        let ids = Arc::new(Ids::new());
        let counts = Arc::clone(&metrics.counts);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut lane = |signal: Signal, batching| {
            let target = settings.target(signal)?.clone();
            let (lane, task) = lanes::start(
                signal,
                target,
                batching,
                Convert::new(clock, Arc::clone(&ids)),
                resource.clone(),
                Arc::clone(&counts),
                Arc::clone(&stopping),
            );
            tasks.push((signal, task));
            Some(lane)
        };
        let traces = lane(Signal::Traces, settings.traces);
        let logs = lane(Signal::Logs, settings.logs);
        let stop_metrics = settings.target(Signal::Metrics).map(|target| {
            let (stop, stopped) = oneshot::channel();
            let task = MetricsTask {
                registry,
                resource,
                interval: settings.metrics_interval,
                start_ns,
            };
            let sender = Sender::new(
                target.clone(),
                Signal::Metrics,
                Arc::clone(&counts),
                Arc::clone(&stopping),
            );
            tasks.push((Signal::Metrics, tokio::spawn(task.run(sender, stopped))));
            stop
        });
        for signal in Signal::ALL {
            if let Some(target) = settings.target(signal) {
                info!(signal = signal.as_str(), %target, "OTLP export");
            }
        }
        Self {
            traces,
            logs,
            tasks,
            stop_metrics,
            counts,
            stopping,
            selection: EventSelection::default(),
            limits: AnomalyLimits::of(&Thresholds::default()),
            sampler: Sampler::new(None),
            metadata,
        }
    }

    /// Sends what is queued (and a last metrics snapshot) within [`STOP_DEADLINE`]; what is
    /// left then is dropped and counted (`reason="shutdown"`).
    pub async fn stop(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Closing the queues ends the lanes once they are empty.
        drop(self.traces.take());
        drop(self.logs.take());
        if let Some(stop) = self.stop_metrics.take() {
            let _ = stop.send(());
        }
        let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
        for (signal, task) in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                info!(
                    signal = signal.as_str(),
                    "OTLP export: the collector did not take everything in time"
                );
            }
        }
        for signal in Signal::ALL {
            let counts = self.counts.of(signal);
            counts.drop(Dropped::Shutdown, counts.pending());
            if counts.get(&counts.offered) > 0 {
                info!(
                    signal = signal.as_str(),
                    offered = counts.get(&counts.offered),
                    exported = counts.get(&counts.exported),
                    dropped = counts.dropped_total(),
                    "OTLP export stopped"
                );
            }
        }
    }
}

impl Sink for Otlp {
    fn configure(&mut self, live: &LiveSettings) {
        self.selection = live.events;
        self.limits = AnomalyLimits::of(&live.thresholds);
        self.sampler = Sampler::new(live.sample);
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        let Some(event) = selected(self.selection, record, &self.limits) else {
            return Ok(());
        };
        let traces = self
            .traces
            .as_ref()
            .filter(|_| event == EventType::Connection);
        if traces.is_none() && self.logs.is_none() {
            return Ok(());
        }
        if !self.sampler.admit(monotonic_now_ns) {
            for (lane, signal) in [(traces, Signal::Traces), (self.logs.as_ref(), Signal::Logs)] {
                if lane.is_some() {
                    let counts = self.counts.of(signal);
                    counts
                        .sampled_out
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            return Ok(());
        }
        let process = match record {
            Record::Connection(c) => c.process.as_ref(),
            Record::Exchange(e) => e.process.as_ref(),
            Record::Anomaly(a) => a.process.as_ref(),
            _ => None,
        };
        let item = Arc::new(Item {
            record: record.clone(),
            event,
            meta: self
                .metadata
                .as_ref()
                .and_then(|metadata| metadata.lookup(process)),
            limits: self.limits,
            attributes: OnceLock::new(),
        });
        if let Some(lane) = traces {
            lane.offer(&item);
        }
        if let Some(lane) = &self.logs {
            lane.offer(&item);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Two sinks fed the same records: the event output, then OTLP export when it is on.
pub(crate) struct Tee<'a> {
    pub output: &'a mut dyn Sink,
    pub otlp: Option<&'a mut Otlp>,
}

impl Sink for Tee<'_> {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.output.write(record)?;
        if let Some(otlp) = self.otlp.as_deref_mut() {
            otlp.write(record)?;
        }
        Ok(())
    }

    fn configure(&mut self, live: &LiveSettings) {
        self.output.configure(live);
        if let Some(otlp) = self.otlp.as_deref_mut() {
            otlp.configure(live);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use axum::{Router, body::Bytes, http::StatusCode, routing::post};
    use prost::Message as _;

    use super::*;
    use crate::{
        config::otlp::{Batching, Protocol, Target},
        model::{Role, TlsRecord},
    };

    /// A collector of log records that can be told to refuse them (503, retryable).
    #[derive(Default)]
    struct Collector {
        up: AtomicBool,
        received: AtomicU64,
    }

    async fn serve(collector: Arc<Collector>) -> std::net::SocketAddr {
        let app = Router::new().route(
            "/v1/logs",
            post(move |body: Bytes| {
                let collector = Arc::clone(&collector);
                async move {
                    if !collector.up.load(Ordering::Relaxed) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let request = proto::ExportLogsServiceRequest::decode(body).unwrap();
                    for record in request.resource_logs.iter().flat_map(|r| &r.scope_logs) {
                        for log in &record.log_records {
                            proto::LogRecord::decode(log.clone()).unwrap();
                        }
                    }
                    let records: usize = request
                        .resource_logs
                        .iter()
                        .flat_map(|r| &r.scope_logs)
                        .map(|s| s.log_records.len())
                        .sum();
                    collector
                        .received
                        .fetch_add(records as u64, Ordering::Relaxed);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// A failed handshake on no connection: a `tls` event in the default selection.
    fn failed_tls(n: u64) -> Record {
        Record::Tls(TlsRecord {
            conn_id: None,
            role: Role::Client,
            addrs: None,
            process: None,
            start_ns: n * 1_000,
            duration_ns: 1_000,
            ok: false,
            calls: 1,
            after_close: false,
        })
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every record offered is exported or dropped for a reason, through a collector that
    /// refuses everything for a while; export resumes on its own when it takes them again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_add_up_through_an_outage() {
        let collector = Arc::new(Collector::default());
        collector.up.store(true, Ordering::Relaxed);
        let addr = serve(Arc::clone(&collector)).await;
        let mut settings = OtlpSettings::default();
        settings.targets[Signal::Logs.index()] = Some(Target {
            protocol: Protocol::HttpProtobuf,
            authority: addr.to_string(),
            path: "/v1/logs".into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
        });
        settings.logs = Batching {
            queue: 16,
            batch: 16,
            delay: Duration::from_millis(20),
        };
        let metrics = OtlpMetrics::new(&settings).unwrap();
        let counts = Arc::clone(&metrics.counts);
        let logs = || counts.of(Signal::Logs);
        let mut otlp = Otlp::start(
            &settings,
            &metrics,
            Arc::new(Registry::default()),
            None,
            Clock::new(),
            0,
        );
        let mut write = |range: std::ops::Range<u64>| {
            for n in range {
                otlp.write(&failed_tls(n)).unwrap();
            }
        };
        write(0..10);
        until("the first records", || logs().get(&logs().exported) == 10).await;

        collector.up.store(false, Ordering::Relaxed);
        write(10..110);
        until("the queue to empty", || logs().pending() == 0).await;
        let (queue_full, failed) = (
            logs().get(&logs().dropped[Dropped::QueueFull as usize]),
            logs().get(&logs().dropped[Dropped::ExportFailed as usize]),
        );
        assert!(queue_full > 0, "a full queue drops, it does not wait");
        assert!(failed > 0, "batches refused after every attempt");
        assert_eq!(queue_full + failed, 100);
        let rejected = logs().get(&logs().errors[Reason::Rejected as usize]);
        assert!(
            rejected % 3 == 0 && rejected / 3 >= failed.div_ceil(16),
            "three attempts per batch: {rejected} for {failed} records"
        );

        collector.up.store(true, Ordering::Relaxed);
        write(110..120);
        until("export to resume", || logs().get(&logs().exported) == 20).await;
        otlp.stop().await;
        let c = logs();
        assert_eq!(c.get(&c.offered), 120);
        assert_eq!(c.get(&c.exported) + c.dropped_total(), c.get(&c.offered));
        assert_eq!(
            collector.received.load(Ordering::Relaxed),
            c.get(&c.exported)
        );
        assert_eq!(c.get(&c.dropped[Dropped::Shutdown as usize]), 0);
    }

    /// What is still queued when the stop deadline passes is counted as such.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_collector_does_not_hold_up_the_stop() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut settings = OtlpSettings::default();
        settings.targets[Signal::Logs.index()] = Some(Target {
            protocol: Protocol::Grpc,
            authority: addr.to_string(),
            path: "/opentelemetry.proto.collector.logs.v1.LogsService/Export".into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(60),
        });
        settings.logs.delay = Duration::from_millis(10);
        let metrics = OtlpMetrics::new(&settings).unwrap();
        let counts = Arc::clone(&metrics.counts);
        let mut otlp = Otlp::start(
            &settings,
            &metrics,
            Arc::new(Registry::default()),
            None,
            Clock::new(),
            0,
        );
        for n in 0..5 {
            otlp.write(&failed_tls(n)).unwrap();
        }
        // Returns once the deadline has passed (a hung stop would hang the test).
        otlp.stop().await;
        let logs = counts.of(Signal::Logs);
        assert_eq!(logs.get(&logs.offered), 5);
        assert_eq!(logs.get(&logs.dropped[Dropped::Shutdown as usize]), 5);
        assert_eq!(logs.get(&logs.exported), 0);
    }
}
