//! Prometheus metrics: one [`Metrics`] of typed families, registered once, updated from the
//! tracker's records; counts that live in the tracker, the reader and the kernel are read at
//! scrape time by [`collect`]. Names are `tcpobs_*` in base units; counters end in `_total`
//! (prometheus-client adds the suffix).
//!
//! Updating a family means hashing its label set under a lock; with no optional dimensions
//! (the default) every label set is known in advance, so the handles are resolved once
//! ([`Fast`]) and an update is a plain atomic add.
//!
//! With no optional dimension the kernel folds the exchanges its next request ends into
//! histograms with these families' own bucket limits ([`Metrics::fold_config`]); what it
//! folded is added here ([`Metrics::add_folded`]), bucket by bucket, and the exchange records
//! made from its events are marked as counted (`folded`). With dimensions, the kernel sends
//! every exchange and the daemon observes each one with its labels.
//!
//! The families' shapes (bucket layouts, the histogram table, the bounded label values) are in
//! `families`.

pub(crate) mod collect;
mod families;
mod histogram;
pub(crate) mod labels;
mod libcalls;
pub(crate) mod listeners;
mod slots;

use std::{
    collections::HashMap,
    hash::BuildHasherDefault,
    sync::{Arc, Mutex, OnceLock, atomic::AtomicU64},
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{
        counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets_range,
    },
    registry::Registry,
};
use tcpobs_common::{
    FoldConfig, Folds, RoleFolds,
    folds::{class, hist as folded_hist, layout, role_index as fold_index},
    role as socket_role,
};

pub(crate) use self::slots::SlotWrite;
use self::{
    families::{
        Buckets, CLASSES, Counters, HISTOGRAMS, Hist, Histograms, KINDS, NS, ORIGINATORS, ROLES,
        index_of,
    },
    histogram::Histogram,
    labels::{ConnLabels, Dims, Fixed, LabelPolicy, LabelSpec},
    libcalls::LibcallMetrics,
    listeners::ListenerMetrics,
    slots::LabelSlots,
};
use crate::{
    metadata::Metadata,
    model::{Addrs, ExchangeClass, PartialReason, Process, Record, Role, Stuck},
    sync::lock,
    tracker::{SockHasher, role_index},
};

/// Handles resolved once, for when no optional dimension is on: indexed by role (client,
/// server), then class, or originator and kind.
#[derive(Clone, Debug)]
struct Fast {
    histograms: Vec<[Histogram; 2]>,
    opened: [Counter; 2],
    exchanges: [[Counter; 4]; 2],
    closed: [[[Counter; 4]; 4]; 2],
}

/// With optional dimensions on, the handles of one label set's series (role and dimension
/// values), each resolved on its first use: a record's histograms and counter all have the
/// same label set, which is then hashed once, not once per family. Series are created exactly
/// when they would be without it (on their first observation).
#[derive(Debug, Default)]
struct Handles {
    histograms: [OnceLock<Histogram>; HISTOGRAMS.len()],
    opened: OnceLock<Counter>,
    exchanges: [OnceLock<Counter>; CLASSES.len()],
    closed: [[OnceLock<Counter>; KINDS.len()]; ORIGINATORS.len()],
}

/// The series one record updates ([`Metrics::series`]).
enum Series<'a> {
    /// No optional label: the role's fast handles (index 0 client, 1 server).
    Fast(&'a Fast, usize),
    /// The record's label values and their handles.
    Labeled(Dims, Arc<[Handles; 3]>),
}

/// [`Handles`] by dimension values, then role ([`role_index`]), shared by the clones of
/// [`Metrics`]. The cheap hasher is safe here: the keys are the label policy's values, bounded
/// by the series cap.
type HandleCache = Arc<Mutex<HashMap<Dims, Arc<[Handles; 3]>, BuildHasherDefault<SockHasher>>>>;

/// `partial_reason` label values of `tcpobs_connections_reported_total`: `none` for a
/// complete record, then the [`PartialReason`]s.
const REPORTED: [&str; 5] = ["none", "already_open", "lost", "missed_open", "shutdown"];

/// Every family tcpobs updates on events. Cloning shares the same series.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    histograms: Vec<Histograms>,
    opened: Counters<1>,
    closed: Counters<3>,
    exchanges: Counters<2>,
    connect_failures: Family<Fixed<1>, Counter>,
    /// Connection records by role ([`role_index`]) and partial reason ([`REPORTED`]).
    reported: Arc<[[Counter; REPORTED.len()]; 3]>,
    anomalies: Family<Fixed<1>, Counter>,
    stuck: Family<Fixed<1>, Gauge>,
    stuck_duration: Family<Fixed<1>, Histogram, Buckets>,
    delay: Histogram,
    sweep_duration: Gauge<f64, AtomicU64>,
    libcalls: LibcallMetrics,
    pub(crate) listeners: ListenerMetrics,
    policy: Arc<Mutex<LabelPolicy>>,
    fast: Option<Fast>,
    /// Handles by label set, when optional dimensions are on (bounded by the series cap).
    handles: HandleCache,
    /// Where the `pod` and `namespace` label values come from.
    metadata: Option<Arc<Metadata>>,
    /// With `pod`/`namespace` labels only: the kernel folds exchanges by label slot.
    slots: Option<Arc<Mutex<LabelSlots>>>,
    /// Label slots with values, and cgroups with a slot (as of the last fold read).
    label_slots: Gauge,
    label_slot_cgroups: Gauge,
}

fn role_labels<const N: usize>(
    fixed: [(&'static str, &'static str); N],
    dims: &Dims,
) -> ConnLabels<N> {
    ConnLabels {
        fixed,
        dims: dims.clone(),
    }
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub(crate) fn new(registry: &mut Registry, labels: &[LabelSpec], series_cap: usize) -> Self {
        let mut metrics = Self {
            histograms: HISTOGRAMS
                .iter()
                .map(|(_, _, _, buckets)| Histograms::new_with_constructor(*buckets))
                .collect(),
            opened: Counters::default(),
            closed: Counters::default(),
            exchanges: Counters::default(),
            connect_failures: Family::default(),
            reported: Arc::default(),
            anomalies: Family::default(),
            stuck: Family::default(),
            stuck_duration: Family::new_with_constructor(Buckets::Stuck),
            delay: Histogram::new(exponential_buckets_range(0.000_1, 10.0, 16), NS),
            sweep_duration: Gauge::default(),
            libcalls: LibcallMetrics::new(registry),
            listeners: ListenerMetrics::new(registry, labels, series_cap),
            policy: Arc::new(Mutex::new(LabelPolicy::new(labels, series_cap))),
            fast: None,
            handles: Arc::default(),
            metadata: None,
            slots: labels::by_cgroup(labels).then(Arc::default),
            label_slots: Gauge::default(),
            label_slot_cgroups: Gauge::default(),
        };
        for ((_, name, help, _), family) in HISTOGRAMS.iter().zip(&metrics.histograms) {
            registry.register(*name, *help, family.clone());
        }
        registry.register(
            "tcpobs_connections_opened",
            "Connections established",
            metrics.opened.clone(),
        );
        registry.register(
            "tcpobs_connections_closed",
            "Connections closed (failed connects excluded), by who closed first and how",
            metrics.closed.clone(),
        );
        registry.register(
            "tcpobs_exchanges",
            "Request/response exchanges, by reuse class",
            metrics.exchanges.clone(),
        );
        let reported: Family<Fixed<2>, Counter> = Family::default();
        // Every series exists from the start (the identity reads them all), and each record
        // adds to a handle of its own, without a lookup.
        metrics.reported = Arc::new([Role::Client, Role::Server, Role::Unknown].map(|role| {
            REPORTED.map(|reason| {
                reported.get_or_create_owned(&[("role", role.as_str()), ("partial_reason", reason)])
            })
        }));
        registry.register(
            "tcpobs_connections_reported",
            "Connection records reported, one per connection end, by role and partial_reason \
             (none for a complete record): with tcpobs_connections_lost_total they add up to \
             every connection end the kernel saw",
            reported,
        );
        registry.register(
            "tcpobs_connect_failures",
            "Connections that never got past the handshake, by reason",
            metrics.connect_failures.clone(),
        );
        registry.register(
            "tcpobs_anomalies",
            "Live connections flagged as stuck, by phase (each once per phase)",
            metrics.anomalies.clone(),
        );
        registry.register(
            "tcpobs_stuck_connections",
            "Live connections stuck right now, by phase (as of the last sweep)",
            metrics.stuck.clone(),
        );
        registry.register(
            "tcpobs_stuck_duration_seconds",
            "How long connections stayed stuck, observed when the episode ended, by phase",
            metrics.stuck_duration.clone(),
        );
        registry.register(
            "tcpobs_event_delay_seconds",
            "From a connection's close in the kernel to its record reaching the outputs",
            metrics.delay.clone(),
        );
        registry.register(
            "tcpobs_label_slots",
            "With only pod/namespace labels: combinations of label values the kernel folds \
             exchanges for (at most 16; exchanges of the others are sent to the daemon)",
            metrics.label_slots.clone(),
        );
        registry.register(
            "tcpobs_label_slot_cgroups",
            "With only pod/namespace labels: cgroups whose sockets' exchanges the kernel folds \
             under their label values",
            metrics.label_slot_cgroups.clone(),
        );
        registry.register(
            "tcpobs_sweep_duration_seconds",
            "How long the last hang-detection sweep took",
            metrics.sweep_duration.clone(),
        );
        metrics.prefill(labels.is_empty());
        metrics
    }

    /// Creates the bounded series up front, so that every name exists from the first scrape
    /// and rates and alerts see zeros rather than absent series; with no optional dimension,
    /// keeps their handles.
    fn prefill(&mut self, keep_handles: bool) {
        let other = lock(&self.policy).other();
        let per_role = |role: Role| {
            let labels = role_labels([("role", role.as_str())], &other);
            let histograms: Vec<Histogram> = self
                .histograms
                .iter()
                .map(|family| family.get_or_create(&labels).clone())
                .collect();
            let opened = self.opened.get_or_create(&labels).clone();
            let exchanges = CLASSES.map(|class| {
                self.exchanges
                    .get_or_create(&role_labels(
                        [("role", role.as_str()), ("class", class.as_str())],
                        &other,
                    ))
                    .clone()
            });
            let closed = ORIGINATORS.map(|originator| {
                KINDS.map(|kind| {
                    self.closed
                        .get_or_create(&role_labels(
                            [
                                ("role", role.as_str()),
                                ("close_originator", originator.as_str()),
                                ("close_kind", kind.as_str()),
                            ],
                            &other,
                        ))
                        .clone()
                })
            });
            (histograms, opened, exchanges, closed)
        };
        let [client, server] = ROLES.map(per_role);
        for reason in ["refused", "timeout", "unreachable", "other"] {
            let _ = self.connect_failures.get_or_create(&[("reason", reason)]);
        }
        for stuck in Stuck::ALL {
            let labels = [("phase", stuck.as_str())];
            self.stuck.get_or_create(&labels).set(0);
            let _ = self.anomalies.get_or_create(&labels);
            let _ = self.stuck_duration.get_or_create(&labels);
        }
        if keep_handles {
            self.fast = Some(Fast {
                histograms: client
                    .0
                    .into_iter()
                    .zip(server.0)
                    .map(|(c, s)| [c, s])
                    .collect(),
                opened: [client.1, server.1],
                exchanges: [client.2, server.2],
                closed: [client.3, server.3],
            });
        }
    }

    /// The kernel's fold settings: the exchange histograms' limits, folded as they are when no
    /// optional dimension is on, or by label slot with `pod`/`namespace` labels only (`None`,
    /// with the other labels: the kernel must send every exchange).
    pub(crate) fn fold_config(&self) -> Option<FoldConfig> {
        if self.fast.is_none() && self.slots.is_none() {
            return None;
        }
        let limits = |buckets: Buckets| {
            use prometheus_client::metrics::family::MetricConstructor as _;
            buckets.new_metric().limits().to_vec()
        };
        let (latency, idle, lifetime) = (
            limits(Buckets::Latency),
            limits(Buckets::Idle),
            limits(Buckets::Lifetime),
        );
        let mut layouts: [&[u64]; layout::COUNT] = [&[]; layout::COUNT];
        layouts[layout::LATENCY] = &latency;
        layouts[layout::IDLE] = &idle;
        layouts[layout::LIFETIME] = &lifetime;
        Some(if self.fast.is_some() {
            FoldConfig::folding(layouts)
        } else {
            FoldConfig::folding_labeled(layouts)
        })
    }

    /// Adds what the kernel folded (the growth since the last call) to the exchange
    /// histograms and counters.
    pub(crate) fn add_folded(&self, folds: &Folds) {
        let Some(fast) = &self.fast else {
            return;
        };
        for (r, role) in [socket_role::CLIENT, socket_role::SERVER]
            .into_iter()
            .enumerate()
        {
            add_role_folds(
                &folds.roles[fold_index(role)],
                |hist| &fast.histograms[hist][r],
                |class| &fast.exchanges[r][class],
            );
        }
    }

    /// The changes to the kernel's cgroup slots since the last call (none without label
    /// slots).
    pub(crate) fn take_slot_writes(&self) -> Vec<SlotWrite> {
        let Some(slots) = &self.slots else {
            return Vec::new();
        };
        lock(slots).take_writes()
    }

    /// Sets the label slot gauges, once the slot writes are made.
    pub(crate) fn note_label_slots(&self) {
        if let Some(slots) = &self.slots {
            let slots = lock(slots);
            self.label_slots.set(i64::from(slots.used()));
            self.label_slot_cgroups.set(slots.cgroups() as i64);
        }
    }

    /// How many label slots there are to read (0 without label slots).
    pub(crate) fn label_slots(&self) -> u32 {
        self.slots.as_ref().map_or(0, |slots| lock(slots).slots())
    }

    /// Keeps the label slots current (`slots::LabelSlots::maintain`): call it after their
    /// folds were read (`read_all`: every slot's, after the writes before were made).
    pub(crate) fn maintain_label_slots(&self, read_all: bool) {
        let Some(slots) = &self.slots else {
            return;
        };
        let now = Instant::now();
        {
            let mut slots = lock(slots);
            if read_all {
                slots.note_read();
            }
            if !slots.due(now) {
                return;
            }
        }
        // The policy's lock before the slots', as `series` takes them.
        let mut policy = lock(&self.policy);
        let metadata = self.metadata.as_deref();
        lock(slots).maintain(now, |cgroup, pid| {
            let process = Process {
                pid,
                cgroup,
                ..Process::default()
            };
            policy.cgroup_dims(&process, metadata)
        });
    }

    /// Adds what the kernel folded for a label slot's sockets of `role` (the growth since the
    /// last call) to the series of the slot's label values.
    pub(crate) fn add_folded_labeled(&self, slot: u32, role: Role, folds: &RoleFolds) {
        let Some(dims) = self
            .slots
            .as_ref()
            .and_then(|slots| lock(slots).values(slot).cloned())
        else {
            return;
        };
        let handles = self.handles(&dims);
        let handles = &handles[role_index(role)];
        add_role_folds(
            folds,
            |hist| {
                handles.histograms[hist].get_or_init(|| {
                    let labels = role_labels([("role", role.as_str())], &dims);
                    self.histograms[hist].get_or_create(&labels).clone()
                })
            },
            |class| {
                handles.exchanges[class].get_or_init(|| {
                    let fixed = [("role", role.as_str()), ("class", CLASSES[class].as_str())];
                    self.exchanges
                        .get_or_create(&role_labels(fixed, &dims))
                        .clone()
                })
            },
        );
    }

    /// Records how late a closed connection's record is, `now_ns` being the kernel clock.
    pub(crate) fn observe_delay(&self, record: &Record, now_ns: u64) {
        if let Record::Connection(connection) = record
            && let Some(close) = &connection.close
        {
            self.delay.observe(now_ns.saturating_sub(close.at_ns));
        }
    }

    /// Takes the `pod` and `namespace` label values from `metadata`.
    pub(crate) fn set_metadata(&mut self, metadata: Arc<Metadata>) {
        self.metadata = Some(metadata);
    }

    /// Records how long a sweep took.
    pub(crate) fn set_sweep_duration(&self, duration: Duration) {
        self.sweep_duration.set(duration.as_secs_f64());
    }

    fn dims(&self, addrs: &Addrs, process: Option<&Process>) -> Dims {
        lock(&self.policy).dims(addrs, process, self.metadata.as_deref())
    }

    /// The handles of a label set's series (all roles).
    fn handles(&self, dims: &Dims) -> Arc<[Handles; 3]> {
        let mut handles = lock(&self.handles);
        if let Some(found) = handles.get(dims) {
            return Arc::clone(found);
        }
        let created = Arc::<[Handles; 3]>::default();
        handles.insert(dims.clone(), Arc::clone(&created));
        created
    }

    /// The fast handles' role index, if they apply.
    fn fast(&self, role: Role) -> Option<(&Fast, usize)> {
        let fast = self.fast.as_ref()?;
        match role {
            Role::Client => Some((fast, 0)),
            Role::Server => Some((fast, 1)),
            Role::Unknown => None,
        }
    }

    /// Where a record's series are, resolved once per record: the fast handles of its role,
    /// or the handles of its label values (the label policy and the handle cache each take a
    /// lock and a hash, so a record with several families to update resolves them once).
    fn series(&self, role: Role, addrs: &Addrs, process: Option<&Process>) -> Series<'_> {
        match self.fast(role) {
            Some((fast, r)) => Series::Fast(fast, r),
            None => {
                let dims = self.dims(addrs, process);
                if let (Some(slots), Some(process)) = (&self.slots, process) {
                    lock(slots).assign(process.cgroup, process.pid, &dims, Instant::now());
                }
                let handles = self.handles(&dims);
                Series::Labeled(dims, handles)
            }
        }
    }

    fn observe_histograms(&self, role: Role, series: &Series, values: &[(Hist, Option<u64>)]) {
        let (dims, handles) = match series {
            Series::Fast(fast, r) => {
                for &(hist, value) in values {
                    if let Some(value) = value {
                        fast.histograms[hist as usize][*r].observe(value);
                    }
                }
                return;
            }
            Series::Labeled(dims, handles) => (dims, handles),
        };
        for &(hist, value) in values {
            if let Some(value) = value {
                handles[role_index(role)].histograms[hist as usize]
                    .get_or_init(|| {
                        let labels = role_labels([("role", role.as_str())], dims);
                        self.histograms[hist as usize]
                            .get_or_create(&labels)
                            .clone()
                    })
                    .observe(value);
            }
        }
    }

    /// Updates the families for one record.
    pub(crate) fn observe(&self, record: &Record) {
        match record {
            Record::Opened(opened) => {
                let series = self.series(opened.role, &opened.addrs, opened.process.as_ref());
                match &series {
                    Series::Fast(fast, r) => fast.opened[*r].inc(),
                    Series::Labeled(dims, handles) => handles[role_index(opened.role)]
                        .opened
                        .get_or_init(|| {
                            let labels = role_labels([("role", opened.role.as_str())], dims);
                            self.opened.get_or_create(&labels).clone()
                        })
                        .inc(),
                };
                self.observe_histograms(
                    opened.role,
                    &series,
                    &[(Hist::Handshake, Some(opened.connect_ns))],
                );
            }
            Record::Connection(connection) => self.observe_connection(connection),
            // Counted by the kernel.
            Record::Exchange(exchange) if exchange.folded => {}
            Record::Exchange(exchange) => {
                let series = self.series(exchange.role, &exchange.addrs, exchange.process.as_ref());
                let class = index_of(&CLASSES, exchange.class);
                match &series {
                    Series::Fast(fast, r) => fast.exchanges[*r][class].inc(),
                    Series::Labeled(dims, handles) => handles[role_index(exchange.role)].exchanges
                        [class]
                        .get_or_init(|| {
                            let fixed = [
                                ("role", exchange.role.as_str()),
                                ("class", exchange.class.as_str()),
                            ];
                            self.exchanges
                                .get_or_create(&role_labels(fixed, dims))
                                .clone()
                        })
                        .inc(),
                };
                self.observe_histograms(
                    exchange.role,
                    &series,
                    &[
                        (Hist::Request, exchange.request_ns),
                        (Hist::FirstByte, exchange.response_begin_ns),
                        (Hist::Response, exchange.response_ns),
                        (Hist::IdleBefore, exchange.idle_before_ns),
                        (Hist::IdleAfter, exchange.idle_after_ns),
                        (Hist::Transfer, exchange.response_end_ns),
                        (Hist::Session, Some(exchange.session_ns)),
                    ],
                );
            }
            Record::Anomaly(anomaly) => {
                self.anomalies
                    .get_or_create(&[("phase", anomaly.stuck.as_str())])
                    .inc();
            }
            Record::Unstuck(stuck, duration) => self.unstuck(*stuck, *duration),
            Record::Dns(dns) => self.libcalls.observe_dns(dns),
            Record::Tls(tls) => self.libcalls.observe_tls(tls),
        }
    }

    fn observe_connection(&self, connection: &crate::model::ConnectionRecord) {
        let reason = connection.partial.map_or(0, |reason| match reason {
            PartialReason::AlreadyOpen => 1,
            PartialReason::Lost => 2,
            PartialReason::MissedOpen => 3,
            PartialReason::Shutdown => 4,
        });
        self.reported[role_index(connection.role)][reason].inc();
        if let Some((stuck, duration)) = connection.stuck_at_end {
            self.unstuck(stuck, duration);
        }
        if let Some(failure) = connection.connect_failure {
            self.connect_failures
                .get_or_create(&[("reason", failure.as_str())])
                .inc();
            return;
        }
        let Some(close) = &connection.close else {
            return;
        };
        let role = connection.role;
        let series = self.series(role, &connection.addrs, connection.process.as_ref());
        let (originator, kind) = (
            index_of(&ORIGINATORS, close.originator),
            index_of(&KINDS, close.kind),
        );
        match &series {
            Series::Fast(fast, r) => fast.closed[*r][originator][kind].inc(),
            Series::Labeled(dims, handles) => handles[role_index(role)].closed[originator][kind]
                .get_or_init(|| {
                    let fixed = [
                        ("role", role.as_str()),
                        ("close_originator", close.originator.as_str()),
                        ("close_kind", close.kind.as_str()),
                    ];
                    self.closed.get_or_create(&role_labels(fixed, dims)).clone()
                })
                .inc(),
        };
        let whole = connection.partial.is_none();
        self.observe_histograms(
            role,
            &series,
            &[
                (Hist::Duration, whole.then_some(connection.lifetime_ns)),
                (
                    Hist::ExchangesPerConnection,
                    whole.then_some(u64::from(connection.exchanges)),
                ),
                (Hist::Teardown, close.teardown_ns),
                (Hist::CloseWait, close.close_wait_ns),
                (Hist::Rtt, connection.tcp.and_then(|tcp| tcp.rtt_ns)),
            ],
        );
        let diag = connection.diag.parts();
        if diag.busy_ns.is_some_and(|busy| busy > 0) {
            self.observe_histograms(
                role,
                &series,
                &[
                    (Hist::RwndLimited, diag.rwnd_limited_ns),
                    (Hist::SndbufLimited, diag.sndbuf_limited_ns),
                ],
            );
        }
        if let Some(wait) = diag.accept_wait_ns {
            self.listeners
                .observe_accept_wait(connection.addrs.local().port(), wait);
        }
    }

    fn unstuck(&self, stuck: Stuck, duration_ns: u64) {
        self.stuck_duration
            .get_or_create(&[("phase", stuck.as_str())])
            .observe(duration_ns);
    }

    /// Sets the stuck-connection gauge from a sweep (indexed like [`Stuck::ALL`]).
    pub(crate) fn set_stuck(&self, stuck: &[u64; Stuck::ALL.len()]) {
        for (kind, count) in Stuck::ALL.iter().zip(stuck) {
            self.stuck
                .get_or_create(&[("phase", kind.as_str())])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }
}

/// Adds one role's folds to its exchange histograms (`histogram`, by [`Hist`] index) and
/// exchange counters (`exchanges`, by [`CLASSES`] index).
fn add_role_folds<'a>(
    folded: &RoleFolds,
    histogram: impl Fn(usize) -> &'a Histogram,
    exchanges: impl Fn(usize) -> &'a Counter,
) {
    for (index, slot) in folded.hists.iter().enumerate() {
        if slot.buckets.iter().any(|&count| count != 0) {
            histogram(Hist::Request as usize + index - folded_hist::REQUEST)
                .add(&slot.buckets, slot.sum);
        }
    }
    for (class, exchange_class) in [
        (class::START, ExchangeClass::Start),
        (class::CONTINUE, ExchangeClass::Continue),
    ] {
        if folded.exchanges[class] != 0 {
            exchanges(index_of(&CLASSES, exchange_class)).inc_by(folded.exchanges[class]);
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::model::{ExchangeClass, ExchangeRecord, OpenedRecord};

    fn addrs() -> Addrs {
        Addrs::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        )
    }

    fn exposition(labels: &[LabelSpec]) -> String {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry, labels, 10);
        metrics.observe(&Record::Opened(OpenedRecord {
            id: 1,
            role: Role::Client,
            addrs: addrs(),
            process: None,
            connect_ns: 70_000,
        }));
        metrics.observe(&Record::Exchange(ExchangeRecord {
            conn_id: 1,
            role: Role::Server,
            addrs: addrs(),
            process: None,
            seq: 2,
            class: ExchangeClass::Continue,
            start_ns: 0,
            connect_ns: None,
            idle_before_ns: None,
            request_ns: Some(0),
            response_begin_ns: Some(2_000_000),
            response_end_ns: Some(0),
            response_ns: Some(2_000_000),
            idle_after_ns: Some(1_000_000_000),
            session_ns: 3_000_000_000,
            request_bytes: 1,
            response_bytes: 1,
            close_originator: None,
            folded: false,
        }));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    /// What the kernel folds, with the limits `fold_config` gives it, reads the same as the
    /// same values observed one by one: buckets, counts, and the sum to the last digit.
    #[test]
    fn folded_observations_read_like_observed_ones() {
        use tcpobs_common::folds::LAYOUT;
        let (mut one_by_one, mut folded) = (Registry::default(), Registry::default());
        let observing = Metrics::new(&mut one_by_one, &[], 10);
        let folding = Metrics::new(&mut folded, &[], 10);
        let config = folding.fold_config().expect("no labels: the kernel folds");
        let mut folds = Folds::default();
        // Values on, around and far from every limit, and some everyday ones.
        let mut values: Vec<u64> = vec![0, 1, 999, 123_456, 7_000_000_000, u64::from(u32::MAX)];
        for limits in &config.limits {
            for &limit in limits.iter().filter(|&&limit| limit != u64::MAX) {
                values.extend([limit - 1, limit, limit + 1]);
            }
        }
        for (role, r) in [(socket_role::CLIENT, 0), (socket_role::SERVER, 1)] {
            for (hist, &layout) in LAYOUT.iter().enumerate() {
                let daemon_hist = Hist::Request as usize + hist;
                for (index, &value) in values.iter().enumerate() {
                    if (index + hist + r) % 3 == 0 {
                        continue;
                    }
                    folds.roles[fold_index(role)].hists[hist]
                        .observe(&config.limits[layout], value);
                    observing.fast.as_ref().unwrap().histograms[daemon_hist][r].observe(value);
                }
            }
            folds.roles[fold_index(role)].exchanges = [3 + r as u64, 40];
            let counters = &observing.fast.as_ref().unwrap().exchanges[r];
            for (class, count) in [(ExchangeClass::Start, 3 + r), (ExchangeClass::Continue, 40)] {
                for _ in 0..count {
                    counters[index_of(&CLASSES, class)].inc();
                }
            }
        }
        folding.add_folded(&folds);
        let text = |registry: &Registry| {
            let mut text = String::new();
            encode(&mut text, registry).unwrap();
            text
        };
        // Series come out in no set order.
        let lines = |registry: &Registry| {
            let mut lines: Vec<String> = text(registry).lines().map(str::to_owned).collect();
            lines.sort_unstable();
            lines
        };
        let (expected, got) = (lines(&one_by_one), lines(&folded));
        assert!(expected.len() > 400, "{}", expected.len());
        if let Some((expected, got)) = expected.iter().zip(&got).find(|(e, g)| e != g) {
            panic!("expected `{expected}`, got `{got}`");
        }
        assert_eq!(got.len(), expected.len());
    }

    /// The cached handles and the label-hashing path count the same things.
    #[test]
    fn fast_handles_and_families_agree() {
        for (labels, suffix) in [
            (vec![], ""),
            (
                vec!["remote_port=80".parse().unwrap()],
                ",remote_port=\"80\"",
            ),
        ] {
            let text = exposition(&labels);
            for sample in [
                format!("tcpobs_connections_opened_total{{role=\"client\"{suffix}}} 1"),
                format!("tcpobs_handshake_duration_seconds_count{{role=\"client\"{suffix}}} 1"),
                format!("tcpobs_exchanges_total{{role=\"server\",class=\"continue\"{suffix}}} 1"),
                format!("tcpobs_response_first_byte_seconds_sum{{role=\"server\"{suffix}}} 0.002"),
                format!("tcpobs_session_duration_seconds_count{{role=\"server\"{suffix}}} 1"),
            ] {
                assert!(text.contains(&sample), "missing `{sample}` in:\n{text}");
            }
        }
    }
}
