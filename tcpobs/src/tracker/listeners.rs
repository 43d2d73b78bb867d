//! Listening sockets: their accept queues, the connections and SYNs the kernel dropped at
//! them, and the stuck listener (`accept_queue_full`).
//!
//! The daemon reads every listening socket at each sweep with the sampler ([`Listening`]);
//! this turns the readings into the gauges, the drop counts by reason, and one anomaly per
//! episode of a queue that stays full longer than the threshold.
//!
//! Drops are the listener's `sk_drops` between two readings: every `tcp_listendrop()`, which
//! the kernel calls when the accept queue is full (a SYN, or the handshake's last ACK), when
//! the SYN queue is full without SYN cookies, or when it cannot make the socket (memory), and
//! also every segment the listener discarded: the ACK that completed a handshake into a full
//! accept queue counts twice (`tcp_listendrop()`, then the discard), so this count can exceed
//! the namespace's `ListenDrops`. No tracepoint names the reason on most kernels, so it comes from the queues at either reading:
//! `accept_queue_full` when the accept queue was full (`sk_ack_backlog > sk_max_ack_backlog`,
//! the kernel's own test), else `syn_queue_full` when the SYN queue was at its limit, else
//! `other`. A listener found at start-up (opened before tcpobs) counts from its first reading;
//! one registered at `listen()` from zero.

use std::{
    collections::HashMap,
    hash::BuildHasherDefault,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tcpobs_common::{ListenSample, tcp_state};

use super::SockHasher;
use crate::model::{Addrs, AnomalyRecord, Process, Record, Role, Stuck};

/// One listening socket as the sampler read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listening {
    pub sample: ListenSample,
    /// Who listens (the caller of `listen()`, or a process found holding it).
    pub owner: Option<Process>,
    /// Found at start-up rather than seen at `listen()`.
    pub found: bool,
}

/// Why the kernel dropped a connection or SYN at a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ListenDrop {
    AcceptQueueFull,
    SynQueueFull,
    Other,
}

impl ListenDrop {
    pub(crate) const ALL: [Self; 3] = [Self::AcceptQueueFull, Self::SynQueueFull, Self::Other];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::AcceptQueueFull => "accept_queue_full",
            Self::SynQueueFull => "syn_queue_full",
            Self::Other => "other",
        }
    }
}

/// The listeners at one sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListenerReport {
    /// Per listening socket: (port, accept queue length, its limit).
    pub queues: Vec<(u16, u32, u32)>,
    /// Drops since the previous reading: (port, reason, count).
    pub drops: Vec<(u16, ListenDrop, u64)>,
    /// Listeners whose accept queue has been full for longer than the threshold.
    pub stuck: u64,
}

#[derive(Clone, Copy, Debug)]
struct State {
    port: u16,
    netns: u32,
    drops: u32,
    accept_full: bool,
    syn_full: bool,
    /// The queue has been full since (ns).
    full_since: Option<u64>,
    /// This episode was reported.
    flagged: bool,
    round: u64,
}

/// What the tracker remembers of the listening sockets between sweeps.
#[derive(Debug, Default)]
pub(crate) struct ListenerWatch {
    states: HashMap<u64, State, BuildHasherDefault<SockHasher>>,
    round: u64,
}

/// The listening address; IPv4-mapped IPv6 shown as IPv4, as elsewhere.
fn local_addr(sample: &ListenSample) -> SocketAddr {
    let ip = if sample.family == 10 {
        Ipv6Addr::from(sample.addr).to_canonical()
    } else {
        let [a, b, c, d, ..] = sample.addr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };
    SocketAddr::new(ip, sample.port)
}

impl ListenerWatch {
    /// Takes this sweep's readings; anomalies and ended episodes go to `out`.
    pub(crate) fn observe(
        &mut self,
        now: u64,
        threshold_ns: u64,
        listeners: &[Listening],
        out: &mut Vec<Record>,
    ) -> ListenerReport {
        self.round += 1;
        let round = self.round;
        let mut report = ListenerReport::default();
        for listener in listeners {
            let sample = &listener.sample;
            if sample.state != tcp_state::LISTEN {
                continue;
            }
            let fresh = State {
                port: sample.port,
                netns: sample.netns,
                drops: if listener.found { sample.drops } else { 0 },
                accept_full: false,
                syn_full: false,
                full_since: None,
                flagged: false,
                round,
            };
            let state = self.states.entry(sample.sock).or_insert(fresh);
            if (state.port, state.netns) != (sample.port, sample.netns) {
                // The address now holds another listener.
                *state = State { drops: 0, ..fresh };
            }
            state.round = round;
            let accept_full = sample.ack_backlog > sample.max_ack_backlog;
            let syn_full = sample.max_ack_backlog > 0 && sample.syn_queue >= sample.max_ack_backlog;
            let dropped = sample.drops.saturating_sub(state.drops);
            if dropped > 0 {
                let reason = if accept_full || state.accept_full {
                    ListenDrop::AcceptQueueFull
                } else if syn_full || state.syn_full {
                    ListenDrop::SynQueueFull
                } else {
                    ListenDrop::Other
                };
                report.drops.push((sample.port, reason, u64::from(dropped)));
            }
            (state.drops, state.accept_full, state.syn_full) =
                (sample.drops, accept_full, syn_full);
            report
                .queues
                .push((sample.port, sample.ack_backlog, sample.max_ack_backlog));
            if !accept_full {
                end_episode(state, now, out);
                continue;
            }
            let since = *state.full_since.get_or_insert(now);
            if threshold_ns == 0 || now.saturating_sub(since) < threshold_ns {
                continue;
            }
            report.stuck += 1;
            if !state.flagged {
                state.flagged = true;
                out.push(Record::Anomaly(AnomalyRecord {
                    conn_id: 0,
                    stuck: Stuck::AcceptQueueFull,
                    role: Role::Server,
                    addrs: Addrs::new(local_addr(sample), ([0, 0, 0, 0], 0).into()),
                    process: listener.owner,
                    state: tcp_state::LISTEN,
                    since_ns: since,
                    at_ns: now,
                    threshold_ns,
                }));
            }
        }
        // Listeners gone since: their episodes end.
        self.states.retain(|_, state| {
            if state.round != round {
                end_episode(state, now, out);
            }
            state.round == round
        });
        report
    }
}

fn end_episode(state: &mut State, now: u64, out: &mut Vec<Record>) {
    if let Some(since) = state.full_since.take()
        && std::mem::take(&mut state.flagged)
    {
        out.push(Record::Unstuck(
            Stuck::AcceptQueueFull,
            now.saturating_sub(since),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn listening(drops: u32, queue: u32, syn_queue: u32, found: bool) -> Listening {
        Listening {
            sample: ListenSample {
                sock: 0xffff_8000,
                drops,
                ack_backlog: queue,
                max_ack_backlog: 1,
                syn_queue,
                netns: 4026531840,
                port: 8080,
                state: tcp_state::LISTEN,
                addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                family: 2,
                ..Default::default()
            },
            owner: None,
            found,
        }
    }

    fn anomalies(out: &[Record]) -> Vec<&AnomalyRecord> {
        out.iter()
            .filter_map(|record| match record {
                Record::Anomaly(anomaly) => Some(anomaly),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn drops_are_counted_by_the_queue_that_was_full() {
        let mut watch = ListenerWatch::default();
        let mut out = Vec::new();
        // Registered at listen(): its drops count from zero.
        let report = watch.observe(0, 0, &[listening(3, 2, 0, false)], &mut out);
        assert_eq!(report.drops, [(8080, ListenDrop::AcceptQueueFull, 3)]);
        assert_eq!(report.queues, [(8080, 2, 1)]);
        // The queue drained since, but was full at the previous reading.
        let report = watch.observe(S, 0, &[listening(5, 0, 0, false)], &mut out);
        assert_eq!(report.drops, [(8080, ListenDrop::AcceptQueueFull, 2)]);
        let report = watch.observe(2 * S, 0, &[listening(6, 0, 1, false)], &mut out);
        assert_eq!(report.drops, [(8080, ListenDrop::SynQueueFull, 1)]);
        let report = watch.observe(3 * S, 0, &[listening(7, 0, 0, false)], &mut out);
        assert_eq!(report.drops, [(8080, ListenDrop::SynQueueFull, 1)]);
        let report = watch.observe(4 * S, 0, &[listening(8, 0, 0, false)], &mut out);
        assert_eq!(report.drops, [(8080, ListenDrop::Other, 1)]);
        // Found at start-up: what it dropped before is history.
        let mut watch = ListenerWatch::default();
        let report = watch.observe(0, 0, &[listening(100, 0, 0, true)], &mut out);
        assert!(report.drops.is_empty(), "{report:?}");
    }

    #[test]
    fn a_queue_full_past_the_threshold_is_one_anomaly_per_episode() {
        let mut watch = ListenerWatch::default();
        let mut out = Vec::new();
        let full = [listening(0, 2, 0, false)];
        assert_eq!(watch.observe(0, 2 * S, &full, &mut out).stuck, 0);
        assert_eq!(watch.observe(S, 2 * S, &full, &mut out).stuck, 0);
        assert!(anomalies(&out).is_empty());
        assert_eq!(watch.observe(2 * S, 2 * S, &full, &mut out).stuck, 1);
        assert_eq!(watch.observe(3 * S, 2 * S, &full, &mut out).stuck, 1);
        let found = anomalies(&out);
        assert_eq!(found.len(), 1, "{out:?}");
        assert_eq!(found[0].stuck, Stuck::AcceptQueueFull);
        assert_eq!(found[0].since_ns, 0);
        assert_eq!(found[0].addrs.local(), "127.0.0.1:8080".parse().unwrap());
        // It accepts again: the episode ends, and a new one is a new anomaly.
        out.clear();
        watch.observe(4 * S, 2 * S, &[listening(0, 0, 0, false)], &mut out);
        assert_eq!(out, [Record::Unstuck(Stuck::AcceptQueueFull, 4 * S)]);
        out.clear();
        watch.observe(5 * S, 2 * S, &full, &mut out);
        watch.observe(7 * S, 2 * S, &full, &mut out);
        assert_eq!(anomalies(&out).len(), 1);
        // The listener closes: the episode ends with it.
        out.clear();
        watch.observe(8 * S, 2 * S, &[], &mut out);
        assert_eq!(out, [Record::Unstuck(Stuck::AcceptQueueFull, 3 * S)]);
    }
}
