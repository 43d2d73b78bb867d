//! Hang detection: a periodic sweep over the live table that flags stuck connections
//! (DESIGN §3, "Hang detection"). How a connection is stuck ([`Stuck`]) is exported as the
//! `phase` of `anomaly` events and metrics:
//!
//! | `phase` | condition |
//! |---|---|
//! | `syn_sent` | `SYN_SENT` for longer than the threshold |
//! | `no_data` | `ESTABLISHED`, nothing sent or received, for longer than the threshold |
//! | `idle` | `ESTABLISHED`, no data for longer than the threshold (a zombie) |
//! | `close_wait` | `CLOSE_WAIT` for longer than the threshold (a leak) |
//! | `fin_wait2` | `FIN_WAIT2` for longer than the threshold |
//! | `stalled_receiver` | data waiting, the peer's window zero (its probes answered) for longer than the threshold |
//! | `blackhole` | data in flight, retransmissions backing off, no ACK for longer than the threshold |
//!
//! The last two need the kernel's live TCP state, which no event carries: connections quiet for
//! longer than the smaller of their thresholds are *stall suspects* ([`Tracker::stall_suspects`]),
//! the daemon reads them with the sampler and hands the readings in ([`StallView`], made by
//! [`classify`](super::stalls::classify)). A reading that finds nothing in flight or waiting is an idle connection (a
//! zombie, if it lasts): it is not read again until it moves data, or on the slow rotation. A
//! reading that finds data moving vetoes `idle` and `no_data` (a long write in progress).
//! Listening sockets (`accept_queue_full`) are watched apart, in `listeners`.
//!
//! The same readings find records that outlived their sockets: the kernel skips a program's
//! run rather than nest it (`kernel::misses`), and a skipped destroy leaves the record in the
//! table, in the state it last saw, with no close to come (the audit finds the record and so
//! never counts it missing). Quiet connections in any open state are read, and one read as
//! gone ([`StallView::Gone`]) on two sweeps in a row is reported lost; the caller removes the
//! record ([`SweepReport::outlived`]). With both stall checks off, the readings serve only this.
//!
//! The tracker learns of data only from exchange events (sent while every exchange is wanted,
//! and only when the next request ends an exchange; by default the kernel folds them and sends
//! none), and of the brief teardown states (`FIN_WAIT1`, `LAST_ACK`, `CLOSING`) not at all, so
//! a connection that *looks* stuck, or that has no data the tracker knows of and has been quiet
//! for the idle threshold, is checked against the kernel's own record (one map lookup, through
//! the caller's `lookup`) before it is flagged: the record has the bytes moved, the last data
//! and the current state. An idle connection is thus flagged one idle threshold after its last
//! data, without waiting for the no-data threshold.
//! Already-flagged connections are re-checked on every sweep while there are at most
//! [`RECHECK_BUDGET`] of them (so a zombie that comes back to life is no longer counted stuck
//! one sweep later), and beyond that on a rotation that keeps to about that many lookups a
//! sweep (once per [`RECHECK_EVERY`] sweeps at most), so a host with many zombies costs a
//! bounded number of lookups per sweep. Each
//! connection is reported once per way of being stuck ([`Record::Anomaly`]); the report also
//! counts how many connections are stuck each way right now, for the gauge.
//!
//! The sweep also audits every live connection against the kernel's table on a slow rotation
//! (once per [`AUDIT_EVERY`] sweeps), and on every sweep for a few sweeps after the kernel
//! reported dropped close records ([`Tracker::audit_all`]): a connection whose kernel record is
//! gone, or belongs to a newer connection, on two lookups (each sweep follows a drain of the
//! ring buffer, so a close sent before the first lookup has arrived by the second; a lookup
//! made while the reader is behind, its last drain stopped for time, does not count) was lost
//! (its close event dropped from a full ring buffer, or its record evicted from a full table)
//! and is reported partial (`lost`). A connection the kernel has no record of is never flagged
//! stuck: it is gone, or about to be reported lost.

use tcpobs_common::{SockRecord, tcp_state};

use super::{
    Conn, Tracker,
    conn::{STALL_IDLE, STALL_UNKNOWN},
    exchange::last_data_ns,
    stalls::{StallView, StallViews},
};
use crate::model::{AnomalyRecord, Process, Record, Stuck};

/// Thresholds per way of being stuck (ns); 0 turns a check off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StuckThresholds {
    pub syn_sent_ns: u64,
    pub no_data_ns: u64,
    pub idle_ns: u64,
    pub close_wait_ns: u64,
    pub fin_wait2_ns: u64,
    pub stalled_receiver_ns: u64,
    pub blackhole_ns: u64,
    pub accept_queue_ns: u64,
}

impl StuckThresholds {
    pub(super) fn of(&self, stuck: Stuck) -> u64 {
        match stuck {
            Stuck::SynSent => self.syn_sent_ns,
            Stuck::NoData => self.no_data_ns,
            Stuck::Idle => self.idle_ns,
            Stuck::CloseWait => self.close_wait_ns,
            Stuck::FinWait2 => self.fin_wait2_ns,
            Stuck::StalledReceiver => self.stalled_receiver_ns,
            Stuck::Blackhole => self.blackhole_ns,
            Stuck::AcceptQueueFull => self.accept_queue_ns,
        }
    }

    /// How long a connection must be quiet to be a stall suspect (`None`: both checks off).
    fn stall_quiet_ns(&self) -> Option<u64> {
        [self.stalled_receiver_ns, self.blackhole_ns]
            .into_iter()
            .filter(|&ns| ns != 0)
            .min()
    }
}

/// What the kernel's record says about a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelView {
    /// The record's generation (its `start_ns`).
    pub start_ns: u64,
    /// Last send/recv (ns), 0 if none.
    pub last_data_ns: u64,
    /// Bytes moved in either direction.
    pub bytes: u64,
    /// The socket's state (`tcp_state`).
    pub state: u8,
    /// Since when, if the record knows (`CLOSE_WAIT`); 0 otherwise.
    pub state_since_ns: u64,
    /// The process the record names (first seen in process context), if any.
    pub process: Option<Process>,
}

impl KernelView {
    /// What the hang detector takes of the kernel's record of a socket.
    pub(crate) fn of(rec: &SockRecord) -> Self {
        Self {
            start_ns: rec.start_ns,
            last_data_ns: last_data_ns(rec),
            bytes: rec.bytes_sent.saturating_add(rec.bytes_recv),
            state: rec.state,
            state_since_ns: if rec.state == tcp_state::CLOSE_WAIT {
                rec.close_wait_ns
            } else {
                0
            },
            process: Process::from_kernel(&rec.task),
        }
    }
}

/// Result of one sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepReport {
    /// Connections (and, for `accept_queue_full`, listeners) stuck right now, indexed like
    /// [`Stuck::ALL`].
    pub stuck: [u64; Stuck::ALL.len()],
    /// Kernel lookups made.
    pub lookups: u64,
    /// Connections found lost by the audit (those in `outlived` included).
    pub lost: u64,
    /// Connections whose kernel record outlived the socket, by socket and generation: the
    /// caller removes the stale records.
    pub outlived: Vec<(u64, u64)>,
}

/// Already-flagged stuck connections are re-checked against the kernel at least once per this
/// many sweeps (spread by connection id); known-idle stall suspects are read again as often.
const RECHECK_EVERY: u64 = 30;

/// Re-checks of already-flagged connections a sweep may make (each a lookup of about 1 µs,
/// with the live table locked) before they are spread over several sweeps.
const RECHECK_BUDGET: u64 = 1_000;

/// The stride of the re-checks when `flagged` connections are stuck: every sweep up to the
/// budget, then spread so that a sweep makes about [`RECHECK_BUDGET`] of them.
fn recheck_stride(flagged: u64) -> u64 {
    flagged.div_ceil(RECHECK_BUDGET).clamp(1, RECHECK_EVERY)
}

/// How long a connection must be quiet to be read for whether its record outlived its socket,
/// when both stall checks are off (otherwise the smaller of their thresholds).
const GONE_QUIET_NS: u64 = 10_000_000_000;

/// Every live connection is checked against the kernel's table once per this many sweeps.
pub(super) const AUDIT_EVERY: u64 = 60;

/// At most about this many lookups per sweep when every connection is audited (each is a
/// system call, made with the live table locked).
const AUDIT_CAP: u64 = 16_384;

/// A state a socket in the table can be in, short of `CLOSE` (whose event is on its way).
pub(super) fn is_open_state(state: u8) -> bool {
    use tcp_state::*;
    matches!(
        state,
        ESTABLISHED | SYN_SENT | SYN_RECV | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
    )
}

fn index(stuck: Stuck) -> usize {
    stuck as usize
}

impl Conn {
    /// How the tracker's view (and this sweep's reading, if any) has the connection stuck, and
    /// since when.
    fn candidate(
        &self,
        now: u64,
        thresholds: &StuckThresholds,
        stall: Option<StallView>,
    ) -> Option<(Stuck, u64)> {
        use tcpobs_common::tcp_state::*;
        let (stuck, since) = match (self.state, stall) {
            (SYN_SENT, _) => (Stuck::SynSent, self.start_ns),
            (_, Some(StallView::Blackhole { since_ns })) => (Stuck::Blackhole, since_ns),
            (_, Some(StallView::StalledReceiver { since_ns })) => (
                Stuck::StalledReceiver,
                since_ns.unwrap_or(self.last_activity_ns),
            ),
            // A long write in progress: neither idle nor without data.
            (ESTABLISHED, Some(StallView::Moving)) => return None,
            (ESTABLISHED, _) if !self.saw_data => (
                Stuck::NoData,
                self.established_ns().unwrap_or(self.state_since_ns),
            ),
            (ESTABLISHED, _) => (Stuck::Idle, self.last_activity_ns),
            (CLOSE_WAIT, _) => (Stuck::CloseWait, self.state_since_ns),
            (FIN_WAIT2, _) => (Stuck::FinWait2, self.state_since_ns),
            _ => return None,
        };
        let threshold = thresholds.of(stuck);
        (threshold != 0 && now.saturating_sub(since) >= threshold).then_some((stuck, since))
    }

    /// Whether the kernel's record may have this connection idle while the tracker's view
    /// cannot tell: established, no data known to the tracker, and quiet for the idle
    /// threshold since its last known activity. The kernel folds exchanges without sending
    /// them (unless every exchange is wanted), so the data of a connection reaches the tracker
    /// only through its record (read here) or at its close.
    fn maybe_idle(&self, now: u64, thresholds: &StuckThresholds, stall: Option<StallView>) -> bool {
        self.state == tcp_state::ESTABLISHED
            && !self.saw_data
            && thresholds.idle_ns != 0
            && stall != Some(StallView::Moving)
            && now.saturating_sub(self.last_activity_ns) >= thresholds.idle_ns
    }

    /// Whether the stall check should read this connection's TCP state now: quiet and open
    /// (a reading of a state other than `ESTABLISHED` or `CLOSE_WAIT` only tells whether the
    /// record outlived its socket), or read last sweep as gone, to be confirmed.
    fn stall_suspect(&self, now: u64, quiet_ns: u64, recheck: bool) -> bool {
        if self.gone > 0 {
            return true;
        }
        is_open_state(self.state)
            && now.saturating_sub(self.last_activity_ns) >= quiet_ns
            && (self.stall_check != STALL_IDLE
                || recheck
                || matches!(self.stuck, Some(Stuck::StalledReceiver | Stuck::Blackhole)))
    }
}

impl Tracker {
    /// The connections whose TCP state the stall check wants read before the next sweep
    /// (appended to `out`): open, quiet for at least the smaller stall threshold, and not known
    /// idle since they last moved data (those are read again on the slow rotation); and those
    /// whose last reading found them gone.
    pub(crate) fn stall_suspects(
        &self,
        now: u64,
        thresholds: &StuckThresholds,
        out: &mut Vec<u64>,
    ) {
        // With both stall checks off, connections are still read to know they are not gone.
        let quiet = thresholds.stall_quiet_ns().unwrap_or(GONE_QUIET_NS);
        let sweep = self.sweeps + 1;
        out.extend(self.conns.iter().filter_map(|(sock, conn)| {
            let recheck = (conn.id + sweep).is_multiple_of(RECHECK_EVERY);
            conn.stall_suspect(now, quiet, recheck).then_some(sock)
        }));
    }

    /// [`Tracker::sweep_with`] without readings of the stall suspects.
    #[cfg(test)]
    pub(crate) fn sweep(
        &mut self,
        now: u64,
        thresholds: &StuckThresholds,
        lookup: impl FnMut(u64) -> Option<KernelView>,
        out: &mut Vec<Record>,
    ) -> SweepReport {
        self.sweep_with(now, thresholds, lookup, &StallViews::default(), out)
    }

    /// Whether the reader has events left to read; set before each sweep.
    pub(crate) fn set_reader_behind(&mut self, behind: bool) {
        self.reader_behind = behind;
    }

    /// Has the next sweeps audit every live connection against the kernel's table `rounds`
    /// times (the kernel reported close records it could not send). A sweep makes at most
    /// about [`AUDIT_CAP`] lookups: a bigger table is audited over several sweeps a round.
    pub(crate) fn audit_all(&mut self, rounds: u8) {
        let stride = self.conns.len() as u64 / AUDIT_CAP + 1;
        self.audit_stride = stride;
        self.audit_all = self.audit_all.max(u64::from(rounds) * stride);
    }

    /// Flags stuck connections. `lookup` reads the kernel's record of a socket (`None` if it
    /// has none); `stalls` are this sweep's readings of the stall suspects. Anomalies for newly
    /// stuck connections are appended to `out`.
    pub(crate) fn sweep_with(
        &mut self,
        now: u64,
        thresholds: &StuckThresholds,
        mut lookup: impl FnMut(u64) -> Option<KernelView>,
        stalls: &StallViews,
        out: &mut Vec<Record>,
    ) -> SweepReport {
        self.sweeps += 1;
        self.dns.expire(now);
        let sweep = self.sweeps;
        let audit_all = self.audit_all > 0;
        self.audit_all = self.audit_all.saturating_sub(1);
        let stride = self.audit_stride.max(1);
        let recheck = self.recheck_stride.max(1);
        let count_misses = !self.reader_behind;
        let stall_checks = thresholds.stall_quiet_ns().is_some();
        let mut report = SweepReport::default();
        let mut vanished = Vec::new();
        let counts = &mut self.counts;
        self.conns.for_each_mut(|sock, conn| {
            let stall = stalls
                .get(&sock)
                .filter(|(start_ns, _)| *start_ns == conn.start_ns)
                .map(|&(_, view)| view);
            if stall == Some(StallView::Gone) {
                // Its socket closed without the close hooks (a skipped program run): no close
                // will come. Two readings a sweep apart, in case the destroy hook was running.
                conn.gone += 1;
                if conn.gone >= 2 {
                    vanished.push(sock);
                    report.outlived.push((sock, conn.start_ns));
                }
                return;
            }
            // What a reading says of stalls is for established and CLOSE_WAIT connections;
            // the others are read only to know they are not gone.
            let stall_state = stall_checks
                && matches!(conn.state, tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT);
            if stall.is_some() {
                conn.gone = 0;
                if stall == Some(StallView::Idle) || !stall_state {
                    conn.stall_check = STALL_IDLE;
                }
            }
            let stall = stall.filter(|_| stall_state);
            let mut candidate = conn.candidate(now, thresholds, stall);
            let audit = (audit_all && (conn.id + sweep).is_multiple_of(stride))
                || (conn.id + sweep).is_multiple_of(AUDIT_EVERY);
            // What the kernel's record is read for, besides the audit: a connection that
            // looks stuck (not yet reported that way, or on the slow rotation), or that may be
            // idle by the record's data ([`Conn::maybe_idle`]). Each read is one map lookup
            // (about 1 µs). A connection moving data is read at most once per idle threshold
            // (each read moves its last activity forward); one without data, once per sweep
            // between the idle and the no-data thresholds, then on the rotation. At worst every
            // connection once per sweep: 10k connections, about 10 ms a sweep (1 s by default).
            let needs_kernel = audit
                || match candidate {
                    // SYN_SENT is never left silently: the open or the close follows.
                    Some((Stuck::SynSent, _)) => false,
                    None => conn.maybe_idle(now, thresholds, stall),
                    Some(_) => {
                        !conn.stuck.is_some_and(|stuck| conn.flagged.contains(stuck))
                            || (conn.id + sweep).is_multiple_of(recheck)
                    }
                };
            if needs_kernel {
                report.lookups += 1;
                match lookup(sock).filter(|view| view.start_ns == conn.start_ns) {
                    Some(view) => {
                        conn.missing = 0;
                        // Data the tracker may not have seen yet: a burst still in progress.
                        conn.saw_data |= view.bytes > 0;
                        if view.last_data_ns > conn.last_activity_ns {
                            conn.last_activity_ns = view.last_data_ns;
                            conn.stall_check = STALL_UNKNOWN;
                        }
                        // An owner the tracker has not heard of: an accepted socket that only
                        // received so far (its burst is still in the kernel's record).
                        conn.learn_process(view.process);
                        if view.state != conn.state && is_open_state(view.state) {
                            // A state entered without an event (see the module docs), or
                            // whose event was skipped (a flood).
                            counts.remove(conn.role, conn.state);
                            counts.add(conn.role, view.state);
                            let since = match view.state_since_ns {
                                0 => now,
                                since => since.min(now),
                            };
                            conn.enter(view.state, since);
                        }
                        candidate = conn.candidate(now, thresholds, stall);
                    }
                    None => {
                        // Gone from the kernel (or about to be: its close may be on its
                        // way): nothing to flag.
                        if count_misses {
                            conn.missing += 1;
                            if conn.missing >= 2 {
                                vanished.push(sock);
                            }
                        }
                        return;
                    }
                }
            }
            match candidate {
                Some((stuck, since)) => {
                    report.stuck[index(stuck)] += 1;
                    if conn.stuck != Some(stuck) {
                        conn.unstick(now, out);
                        (conn.stuck, conn.stuck_since_ns) = (Some(stuck), since);
                    }
                    if !conn.flagged.contains(stuck) {
                        conn.flagged.insert(stuck);
                        out.push(Record::Anomaly(AnomalyRecord {
                            conn_id: conn.id,
                            stuck,
                            role: conn.role,
                            addrs: conn.addrs,
                            process: conn.process(),
                            state: conn.state,
                            since_ns: since,
                            at_ns: now,
                            threshold_ns: thresholds.of(stuck),
                        }));
                    }
                }
                None => conn.unstick(now, out),
            }
        });
        for sock in vanished {
            self.abandon(sock, out);
            report.lost += 1;
        }
        self.stats.closes_unseen += report.outlived.len() as u64;
        self.recheck_stride = recheck_stride(report.stuck.iter().sum());
        report
    }
}

#[cfg(test)]
mod tests {
    use tcpobs_common::{
        BurstEvent, EventHeader, OpenEvent, StateEvent, direction, kind, role, tcp_state,
    };

    use super::*;
    use crate::kernel::decode::KernelEvent;

    const S: u64 = 1_000_000_000;

    fn thresholds() -> StuckThresholds {
        StuckThresholds {
            syn_sent_ns: 3 * S,
            no_data_ns: 10 * S,
            idle_ns: 60 * S,
            close_wait_ns: 5 * S,
            fin_wait2_ns: 30 * S,
            stalled_receiver_ns: 2 * S,
            blackhole_ns: 3 * S,
            accept_queue_ns: 2 * S,
        }
    }

    fn hdr(kind: u32, sock: u64, ts_ns: u64) -> EventHeader {
        EventHeader {
            kind,
            ts_ns,
            sock,
            start_ns: 0,
            ..Default::default()
        }
    }

    fn open(tracker: &mut Tracker, sock: u64, event_kind: u32, state: u8, at: u64) {
        let event = OpenEvent {
            hdr: hdr(event_kind, sock, at),
            role: role::CLIENT,
            state,
            ..Default::default()
        };
        let event = if event_kind == kind::CONNECT {
            KernelEvent::Connect(&event)
        } else {
            KernelEvent::Open(&event)
        };
        tracker.handle(&event, &mut Vec::new());
    }

    /// The kernel's record is there (generation 0) and has nothing to add.
    fn quiet(_sock: u64) -> Option<KernelView> {
        Some(KernelView::default())
    }

    fn anomalies(out: &[Record]) -> Vec<Stuck> {
        out.iter()
            .filter_map(|record| match record {
                Record::Anomaly(anomaly) => Some(anomaly.stuck),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn flags_each_way_once_on_the_first_sweep_past_its_threshold() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::CONNECT, tcp_state::SYN_SENT, 0);
        open(&mut tracker, 2, kind::OPEN, tcp_state::ESTABLISHED, 0);
        open(&mut tracker, 3, kind::OPEN, tcp_state::ESTABLISHED, 0);
        tracker.handle(
            &KernelEvent::State(&StateEvent {
                hdr: hdr(kind::STATE, 3, S),
                old_state: tcp_state::ESTABLISHED,
                new_state: tcp_state::CLOSE_WAIT,
                ..Default::default()
            }),
            &mut Vec::new(),
        );
        let no_kernel = quiet;
        let mut out = Vec::new();
        // One second before the close_wait threshold (CLOSE_WAIT since 1 s, threshold 5 s).
        let report = tracker.sweep(5 * S, &thresholds(), no_kernel, &mut out);
        assert_eq!(anomalies(&out), [Stuck::SynSent]);
        assert_eq!(report.stuck, [1, 0, 0, 0, 0, 0, 0, 0]);
        out.clear();
        let report = tracker.sweep(6 * S, &thresholds(), no_kernel, &mut out);
        assert_eq!(
            anomalies(&out),
            [Stuck::CloseWait],
            "first sweep past the threshold"
        );
        assert_eq!(report.stuck, [1, 0, 0, 1, 0, 0, 0, 0]);
        out.clear();
        let report = tracker.sweep(11 * S, &thresholds(), no_kernel, &mut out);
        assert_eq!(anomalies(&out), [Stuck::NoData]);
        assert_eq!(
            report.stuck,
            [1, 1, 0, 1, 0, 0, 0, 0],
            "still stuck, not reported again"
        );
    }

    #[test]
    fn the_kernel_record_vetoes_idle_and_no_data() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        open(&mut tracker, 2, kind::OPEN, tcp_state::ESTABLISHED, 0);
        // Socket 2 had an exchange at 1 s (it ended at 2 s, when the next request began).
        tracker.handle(
            &KernelEvent::Burst(&BurstEvent {
                hdr: hdr(kind::BURST, 2, 2 * S),
                request: tcpobs_common::Burst {
                    first_ns: S,
                    last_ns: S,
                    bytes: 10,
                    calls: 1,
                    dir: direction::OUT,
                    _pad: [0; 3],
                },
                ..Default::default()
            }),
            &mut Vec::new(),
        );
        // The kernel saw socket 1 send at 9 s (a burst still in progress) and socket 2 at 61 s.
        let kernel = |sock| {
            Some(match sock {
                1 => KernelView {
                    start_ns: 0,
                    last_data_ns: 9 * S,
                    bytes: 5,
                    state: tcp_state::ESTABLISHED,
                    state_since_ns: 0,
                    process: None,
                },
                _ => KernelView {
                    start_ns: 0,
                    last_data_ns: 61 * S,
                    bytes: 30,
                    state: tcp_state::ESTABLISHED,
                    state_since_ns: 0,
                    process: None,
                },
            })
        };
        let mut out = Vec::new();
        let report = tracker.sweep(63 * S, &thresholds(), kernel, &mut out);
        assert!(anomalies(&out).is_empty(), "{out:?}");
        assert_eq!(report.lookups, 2);
        // The tracker keeps what the kernel said: without it now, still nothing is stuck.
        let mut out = Vec::new();
        let report = tracker.sweep(63 * S, &thresholds(), quiet, &mut out);
        assert!(anomalies(&out).is_empty(), "{out:?}");
        assert_eq!(report.stuck, [0; 8]);
        // A minute of real silence later, socket 1 is a zombie.
        let report = tracker.sweep(70 * S, &thresholds(), quiet, &mut out);
        assert_eq!(anomalies(&out), [Stuck::Idle]);
        assert_eq!(report.stuck, [0, 0, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn an_episode_ends_when_the_connection_moves_on() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        tracker.handle(
            &KernelEvent::State(&StateEvent {
                hdr: hdr(kind::STATE, 1, S),
                old_state: tcp_state::ESTABLISHED,
                new_state: tcp_state::CLOSE_WAIT,
                ..Default::default()
            }),
            &mut Vec::new(),
        );
        let mut out = Vec::new();
        tracker.sweep(7 * S, &thresholds(), quiet, &mut out);
        assert_eq!(anomalies(&out), [Stuck::CloseWait]);
        let mut out = Vec::new();
        tracker.handle(
            &KernelEvent::State(&StateEvent {
                hdr: hdr(kind::STATE, 1, 9 * S),
                old_state: tcp_state::CLOSE_WAIT,
                new_state: tcp_state::LAST_ACK,
                ..Default::default()
            }),
            &mut out,
        );
        assert_eq!(out, [Record::Unstuck(Stuck::CloseWait, 8 * S)]);
        let conn = tracker.live().next().unwrap();
        assert!(conn.flagged().contains(Stuck::CloseWait));
    }

    #[test]
    fn a_state_left_without_an_event_is_read_from_the_kernel() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        tracker.handle(
            &KernelEvent::State(&StateEvent {
                hdr: hdr(kind::STATE, 1, S),
                old_state: tcp_state::ESTABLISHED,
                new_state: tcp_state::CLOSE_WAIT,
                ..Default::default()
            }),
            &mut Vec::new(),
        );
        // The application closed (LAST_ACK, which sends no event) and the FIN goes unanswered.
        let kernel = |_| {
            Some(KernelView {
                start_ns: 0,
                state: tcp_state::LAST_ACK,
                state_since_ns: 0,
                ..KernelView::default()
            })
        };
        let mut out = Vec::new();
        let report = tracker.sweep(40 * S, &thresholds(), kernel, &mut out);
        assert!(anomalies(&out).is_empty(), "{out:?}");
        assert_eq!((report.lookups, report.stuck), (1, [0; 8]));
        assert_eq!(tracker.live().next().unwrap().state(), tcp_state::LAST_ACK);
        let open = &tracker.counts().open[0];
        let (last_ack, close_wait) = (
            open[usize::from(tcp_state::LAST_ACK)],
            open[usize::from(tcp_state::CLOSE_WAIT)],
        );
        assert_eq!((last_ack, close_wait), (1, 0), "the gauge follows");
    }

    #[test]
    fn a_close_wait_whose_event_was_skipped_is_timed_from_the_record() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        // The kernel skipped the CLOSE_WAIT event (a flood) and the daemon audits.
        tracker.audit_all(3);
        let kernel = |_| {
            Some(KernelView {
                start_ns: 0,
                state: tcp_state::CLOSE_WAIT,
                state_since_ns: 2 * S,
                ..KernelView::default()
            })
        };
        let mut out = Vec::new();
        tracker.sweep(8 * S, &thresholds(), kernel, &mut out);
        let flagged: Vec<_> = out
            .iter()
            .filter_map(|record| match record {
                Record::Anomaly(anomaly) => Some((anomaly.stuck, anomaly.since_ns)),
                _ => None,
            })
            .collect();
        assert_eq!(flagged, [(Stuck::CloseWait, 2 * S)]);
        assert_eq!(
            tracker.live().next().unwrap().state(),
            tcp_state::CLOSE_WAIT
        );
    }

    #[test]
    fn a_miss_while_the_reader_is_behind_does_not_count() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        let gone = |_| None;
        let mut out = Vec::new();
        tracker.audit_all(3);
        tracker.set_reader_behind(true);
        for sweep in 0..3 {
            let report = tracker.sweep(sweep * S, &StuckThresholds::default(), gone, &mut out);
            assert_eq!((report.lookups, report.lost), (1, 0));
        }
        assert_eq!(
            tracker.live().count(),
            1,
            "its close may still be in the ring"
        );
        tracker.audit_all(3);
        tracker.set_reader_behind(false);
        let lost: u64 = (3..5)
            .map(|sweep| {
                tracker
                    .sweep(sweep * S, &StuckThresholds::default(), gone, &mut out)
                    .lost
            })
            .sum();
        assert_eq!(lost, 1);
    }

    #[test]
    fn connections_gone_from_the_kernel_are_reported_lost() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        open(&mut tracker, 2, kind::OPEN, tcp_state::ESTABLISHED, 0);
        let alive = |sock| {
            (sock == 2).then_some(KernelView {
                start_ns: 0,
                ..KernelView::default()
            })
        };
        let mut out = Vec::new();
        let mut lost = 0;
        // Two full audit rotations: socket 1 is missing both times.
        for sweep in 0..2 * AUDIT_EVERY {
            lost += tracker
                .sweep(sweep * S, &StuckThresholds::default(), alive, &mut out)
                .lost;
        }
        assert_eq!(lost, 1);
        assert_eq!(tracker.live().count(), 1);
        assert_eq!(tracker.stats().lost, 1);
        let partial: Vec<_> = out
            .iter()
            .filter_map(|record| match record {
                Record::Connection(c) => Some(c.partial),
                _ => None,
            })
            .collect();
        assert_eq!(partial, [Some(crate::model::PartialReason::Lost)]);
    }

    #[test]
    fn after_dropped_closes_every_connection_is_audited_and_phantoms_are_not_flagged() {
        let mut tracker = Tracker::new();
        // Socket 1's close was dropped (no kernel record); socket 2 is alive; both have been
        // quiet past the no-data threshold.
        open(&mut tracker, 1, kind::OPEN, tcp_state::ESTABLISHED, 0);
        open(&mut tracker, 2, kind::OPEN, tcp_state::ESTABLISHED, 0);
        let alive = |sock| (sock == 2).then_some(KernelView::default());
        tracker.audit_all(2);
        let mut out = Vec::new();
        let first = tracker.sweep(11 * S, &thresholds(), alive, &mut out);
        assert_eq!(anomalies(&out), [Stuck::NoData], "socket 2 only: {out:?}");
        assert_eq!((first.lookups, first.lost), (2, 0));
        let second = tracker.sweep(12 * S, &thresholds(), alive, &mut out);
        assert_eq!((second.lookups, second.lost), (2, 1));
        assert_eq!(anomalies(&out), [Stuck::NoData], "no anomaly for socket 1");
        assert_eq!(tracker.live().count(), 1);
        assert_eq!(tracker.stats().lost, 1);
        // The window is over: only socket 2, flagged, is read again.
        let third = tracker.sweep(13 * S, &thresholds(), alive, &mut out);
        assert_eq!(third.lookups, 1);
    }

    #[test]
    fn a_big_table_is_audited_over_several_sweeps() {
        let mut tracker = Tracker::new();
        let n = AUDIT_CAP + AUDIT_CAP / 4;
        for sock in 1..=n {
            open(&mut tracker, sock, kind::OPEN, tcp_state::ESTABLISHED, 0);
        }
        tracker.audit_all(2);
        let mut out = Vec::new();
        let mut lost = 0;
        for sweep in 1..=4 {
            let report = tracker.sweep(sweep * S, &StuckThresholds::default(), |_| None, &mut out);
            assert!(report.lookups <= AUDIT_CAP, "{}", report.lookups);
            lost += report.lost;
        }
        assert_eq!(lost, n, "two rounds of two sweeps each");
        assert_eq!(tracker.live().count(), 0);
    }

    #[test]
    fn many_flagged_connections_are_rechecked_within_a_budget() {
        assert_eq!(recheck_stride(0), 1);
        assert_eq!(recheck_stride(RECHECK_BUDGET), 1);
        assert_eq!(recheck_stride(RECHECK_BUDGET + 1), 2);
        assert_eq!(recheck_stride(10 * RECHECK_BUDGET), 10);
        assert_eq!(recheck_stride(1_000 * RECHECK_BUDGET), RECHECK_EVERY);
    }

    #[test]
    fn zero_thresholds_turn_checks_off() {
        let mut tracker = Tracker::new();
        open(&mut tracker, 1, kind::CONNECT, tcp_state::SYN_SENT, 0);
        let mut out = Vec::new();
        let report = tracker.sweep(100 * S, &StuckThresholds::default(), |_| None, &mut out);
        assert!(out.is_empty());
        assert_eq!(report, SweepReport::default());
    }
}
