//! Values computed at scrape time: live counts kept by the tracker, loss counters from the
//! reader and the kernel, output counters, and which probes are attached.

use std::sync::{Arc, Mutex, atomic::Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tcpobs_common::tcp_state;

use crate::{
    export::output::{
        select::{EventType, OutputCounts},
        writer::{DropReason, WriteFailure},
    },
    kernel::{
        decode::KIND_NAMES,
        libcalls::LibcallStats,
        loader::families::LIBCALL_FAMILIES,
        misses::ProgramMisses,
        reader::{KernelStats, ReaderStats},
        report::FamilyAttach,
    },
    model::{drop_reason_known, drop_reason_name, state_name},
    sync::lock,
    tracker::Tracker,
};

const ROLES: [&str; 3] = ["client", "server", "unknown"];

/// States a live connection can be in.
const STATES: [u8; 10] = [
    tcp_state::SYN_SENT,
    tcp_state::SYN_RECV,
    tcp_state::ESTABLISHED,
    tcp_state::FIN_WAIT1,
    tcp_state::FIN_WAIT2,
    tcp_state::CLOSE_WAIT,
    tcp_state::LAST_ACK,
    tcp_state::CLOSING,
    tcp_state::TIME_WAIT,
    tcp_state::CLOSE,
];

/// Reader and kernel counters and the attached probes, refreshed by the daemon's loop.
#[derive(Clone, Debug, Default)]
pub(crate) struct Health {
    pub reader: ReaderStats,
    pub kernel: KernelStats,
    pub probes: Vec<FamilyAttach>,
    pub libcalls: LibcallStats,
    /// The listeners' accept queues at the last sweep: (port label, length, limit).
    pub listener_queues: Vec<(String, u64, u64)>,
    /// Drops charged to traced connections so far, by `enum skb_drop_reason` value (`None`
    /// where the drops family is not attached).
    pub packet_drops: Option<Vec<(u32, u64)>>,
    /// The loaded kernel programs, whose skipped runs (`recursion_misses`, see
    /// `kernel::misses`) are read at scrape time.
    pub program_misses: Arc<ProgramMisses>,
}

/// Drop reasons whose series exist from the first scrape (where the kernel has them), so that
/// rates and alerts see zeros.
const USUAL_DROP_REASONS: [&str; 6] = [
    "netfilter_drop",
    "no_socket",
    "socket_rcvbuff",
    "tcp_zerowindow",
    "tcp_ofomerge",
    "tcp_listen_overflow",
];

/// The scrape-time collector.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub tracker: Arc<Mutex<Tracker>>,
    pub health: Arc<Mutex<Health>>,
    pub output: Arc<OutputCounts>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, &'static str)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        if labels.is_empty() {
            ConstCounter::new(value).encode(metric)?;
            return Ok(());
        }
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (counts, stats) = {
            let tracker = lock(&self.tracker);
            (tracker.counts().clone(), tracker.stats())
        };
        let health = lock(&self.health).clone();

        let mut open = encoder.encode_descriptor(
            "tcpobs_open_connections",
            "Live connections by role and TCP state",
            None,
            MetricType::Gauge,
        )?;
        for (role, by_state) in ROLES.iter().zip(&counts.open) {
            for state in STATES {
                let labels = [("role", *role), ("state", state_name(state))];
                let value = i64::try_from(by_state[usize::from(state)]).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(open.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "tcpobs_bytes",
            "Application payload bytes, by role and direction",
            ROLES
                .iter()
                .zip(&counts.bytes)
                .flat_map(|(role, [sent, received])| {
                    [
                        (vec![("role", *role), ("direction", "sent")], *sent),
                        (vec![("role", *role), ("direction", "received")], *received),
                    ]
                }),
        )?;
        counter(
            &mut encoder,
            "tcpobs_retransmits",
            "Retransmitted segments of closed connections, by role",
            ROLES
                .iter()
                .zip(counts.retransmits)
                .map(|(role, n)| (vec![("role", *role)], n)),
        )?;
        counter(
            &mut encoder,
            "tcpobs_events",
            "Events received from the kernel, by kind",
            KIND_NAMES
                .iter()
                .zip(health.reader.events)
                .map(|(kind, n)| (vec![("kind", *kind)], n)),
        )?;
        counter(
            &mut encoder,
            "tcpobs_connections_lost",
            "Connection ends tcpobs never reported, by role and reason: ringbuf_full (their \
             close event dropped from the full ring buffer, their open never sent: dropped too, \
             or deferred), spill_evicted (their open never sent, their spilled close evicted \
             from the full socket table). With \
             the connections reported (complete or partial) they add up to every connection end \
             the kernel saw",
            ROLES
                .iter()
                .zip(health.kernel.connections_lost)
                .map(|(role, n)| (vec![("role", *role), ("reason", "ringbuf_full")], n))
                .chain(
                    ROLES
                        .iter()
                        .zip(health.reader.spills_unseen)
                        .map(|(role, n)| (vec![("role", *role), ("reason", "spill_evicted")], n)),
                ),
        )?;
        counter(
            &mut encoder,
            "tcpobs_close_events_lost",
            "Close events dropped from the full ring buffer after the connection's open event \
             arrived, by role: these connections are reported partial (lost) once the audit \
             finds their socket gone",
            ROLES
                .iter()
                .zip(health.kernel.closes_lost)
                .map(|(role, n)| (vec![("role", *role)], n)),
        )?;
        for (name, help, value) in [
            (
                "tcpobs_events_lost",
                "Events the kernel dropped because the ring buffer was full",
                health.kernel.ringbuf_full,
            ),
            (
                "tcpobs_close_events_spilled",
                "Close events the full ring buffer could not take, kept in the kernel's socket \
                 table until the daemon read them (delayed, not lost)",
                health.kernel.closes_spilled,
            ),
            (
                "tcpobs_close_events_spill_evicted",
                "Spilled close events the full socket table evicted before the daemon read them, \
                 of connections whose open had arrived: these are reported partial (lost) once \
                 the audit finds them gone (the others count in tcpobs_connections_lost_total)",
                health.reader.spills_evicted,
            ),
            (
                "tcpobs_state_events_skipped",
                "State events (CLOSE_WAIT, FIN_WAIT2) the kernel did not send while the ring \
                 buffer was more than half full, keeping its room for close events: the state \
                 is read from the kernel's socket table by the audit that follows",
                health.kernel.states_skipped,
            ),
            (
                "tcpobs_reader_idle_waits",
                "Times the daemon stopped draining the ring buffer on its timer, the ring having \
                 stayed empty, and waited for the kernel to wake it with the next event",
                health.reader.idle_waits,
            ),
            (
                "tcpobs_events_undecodable",
                "Ring buffer records that could not be decoded",
                health.reader.undecodable,
            ),
            (
                "tcpobs_sockets_evicted",
                "Connections tcpobs lost track of (kernel table eviction, a dropped close, or a \
                 close the kernel skipped: tcpobs_program_runs_missed)",
                stats.lost,
            ),
            (
                "tcpobs_closes_unseen",
                "Of tcpobs_sockets_evicted: connections whose socket closed without the kernel \
                 programs seeing it (their runs skipped: tcpobs_program_runs_missed), found by \
                 the stall check reading the socket gone twice",
                stats.closes_unseen,
            ),
            (
                "tcpobs_unmatched_events",
                "Events for connections whose open event never arrived",
                stats.unmatched,
            ),
            (
                "tcpobs_sockets_adopted",
                "Sockets first seen mid-life (already open, or evicted and seen again)",
                health.kernel.adopted,
            ),
            (
                "tcpobs_sockets_seeded",
                "Connections already open when tcpobs started, seeded from the kernel at start-up",
                health.kernel.seeded,
            ),
            (
                "tcpobs_sockets_untracked",
                "Sockets the kernel could not add to its table",
                health.kernel.table_insert_failed,
            ),
            (
                "tcpobs_dns_cache_evicted",
                "Resolutions dropped from the DNS correlation cache before their window ended \
                 (connections to their addresses get no dns_host)",
                stats.dns_evicted,
            ),
            (
                "tcpobs_tls_untracked",
                "TLS handshake calls not tied to a socket: the kernel's per-thread table was full",
                health.kernel.tls_untracked,
            ),
            (
                "tcpobs_tls_abandoned",
                "TLS handshake calls whose thread died before returning",
                health.libcalls.tls_abandoned,
            ),
            (
                "tcpobs_phase_libraries_skipped",
                "Library files the DNS and TLS phases did not attach to (too many)",
                health.libcalls.skipped,
            ),
        ] {
            counter(&mut encoder, name, help, [(vec![], value)])?;
        }
        let (written, sampled_out) = self.output.get();
        counter(
            &mut encoder,
            "tcpobs_output_events",
            "Events written to the output, by type",
            EventType::ALL
                .iter()
                .zip(written)
                .map(|(t, n)| (vec![("type", t.as_str())], n)),
        )?;
        counter(
            &mut encoder,
            "tcpobs_output_events_sampled_out",
            "Events left out of the output by sampling, by type",
            EventType::ALL
                .iter()
                .zip(sampled_out)
                .map(|(t, n)| (vec![("type", t.as_str())], n)),
        )?;
        let dropped = self.output.dropped();
        counter(
            &mut encoder,
            "tcpobs_output_events_dropped",
            "Events not written to the output, by type and reason: output_slow (the queue to the \
             writer was full: the output's reader is slower than the events), write_error (the \
             write failed)",
            DropReason::ALL
                .iter()
                .zip(dropped)
                .flat_map(|(reason, by_type)| {
                    EventType::ALL.iter().zip(by_type).map(move |(t, n)| {
                        (vec![("type", t.as_str()), ("reason", reason.as_str())], n)
                    })
                }),
        )?;
        counter(
            &mut encoder,
            "tcpobs_output_errors",
            "Failed writes to the output, by reason: no_space (ENOSPC, EDQUOT), broken_pipe \
             (EPIPE), reopen (the file could not be reopened after SIGHUP), other",
            WriteFailure::ALL
                .iter()
                .zip(self.output.errors())
                .map(|(failure, n)| (vec![("reason", failure.as_str())], n)),
        )?;
        let queued =
            i64::try_from(self.output.queued_bytes.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        ConstGauge::new(queued).encode(encoder.encode_descriptor(
            "tcpobs_output_queue_bytes",
            "Bytes of events waiting for the output's writer (at most --output-queue-bytes)",
            None,
            MetricType::Gauge,
        )?)?;
        for (name, help, column) in [
            (
                "tcpobs_accept_queue_length",
                "Connections waiting in listening sockets' accept queues, by listening port (as of \
                 the last sweep; a queue holds its limit plus one when full)",
                1,
            ),
            (
                "tcpobs_accept_queue_limit",
                "The listening sockets' accept queue limits (their listen() backlog), by listening \
                 port",
                2,
            ),
        ] {
            let mut gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let other = [("other".to_owned(), 0, 0)];
            let queues = if health.listener_queues.is_empty() {
                &other[..]
            } else {
                &health.listener_queues[..]
            };
            for (port, length, limit) in queues {
                let value = if column == 1 { *length } else { *limit };
                ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
                    .encode(gauge.encode_family(&[("port", port.as_str())])?)?;
            }
        }
        if let Some(drops) = &health.packet_drops {
            let mut series: Vec<(String, u64)> = drops
                .iter()
                .map(|&(reason, count)| (drop_reason_name(reason).into_owned(), count))
                .collect();
            for usual in USUAL_DROP_REASONS {
                if drop_reason_known(usual) && !series.iter().any(|(name, _)| name == usual) {
                    series.push((usual.to_owned(), 0));
                }
            }
            series.sort();
            let mut counter = encoder.encode_descriptor(
                "tcpobs_packet_drops",
                "Packets the kernel dropped (skb:kfree_skb) that belonged to traced connections, \
                 by the kernel's drop reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, count) in &series {
                ConstCounter::new(*count)
                    .encode(counter.encode_family(&[("reason", reason.as_str())])?)?;
            }
        }
        let mut misses = encoder.encode_descriptor(
            "tcpobs_program_runs_missed",
            "Runs of a tcpobs kernel program the kernel skipped rather than nest them (the same \
             program already running on that CPU, or for kprobes and classic tracepoints any \
             such program): the transitions and closes they carried are unseen. A connection \
             whose close was skipped is reported partial (lost) once the stall check reads its \
             socket gone twice (tcpobs_closes_unseen). Counted since Linux 5.12 (fentry), about \
             6.2 (tp_btf) and 6.7 (kprobes, classic tracepoints); 0 before",
            None,
            MetricType::Counter,
        )?;
        for (program, count) in health.program_misses.read() {
            ConstCounter::new(count).encode(misses.encode_family(&[("program", program)])?)?;
        }
        let mut libraries = encoder.encode_descriptor(
            "tcpobs_phase_libraries",
            "Library files the phase families' uprobes are attached to, by family",
            None,
            MetricType::Gauge,
        )?;
        for (family, count) in LIBCALL_FAMILIES.iter().zip(health.libcalls.libraries) {
            let value = i64::try_from(count).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(libraries.encode_family(&[("family", family.name)])?)?;
        }
        let mut probes = encoder.encode_descriptor(
            "tcpobs_probe",
            "Attach strategy in use, per hook family",
            None,
            MetricType::Info,
        )?;
        for probe in &health.probes {
            probes.encode_info(&[
                ("family", probe.family),
                ("strategy", probe.strategy.as_str()),
                ("programs", &probe.program_types()),
            ])?;
        }
        Ok(())
    }
}
