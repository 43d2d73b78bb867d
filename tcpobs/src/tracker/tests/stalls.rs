//! Why a connection is slow or stuck: stalls read from the kernel's live state, the owner the
//! kernel's record names, and what the close record says (chrono counters, RTOs, SYN
//! retransmits, accept wait, drops, retransmitted segments).

use tcpobs_common::diag::have;

use super::*;
use crate::{
    model::{Process, Stuck},
    tracker::{KernelView, StallView, StallViews, StuckThresholds},
};

const S: u64 = 1_000_000_000;

fn thresholds() -> StuckThresholds {
    StuckThresholds {
        syn_sent_ns: S,
        no_data_ns: 10 * S,
        idle_ns: 60 * S,
        close_wait_ns: 5 * S,
        fin_wait2_ns: 30 * S,
        stalled_receiver_ns: 2 * S,
        blackhole_ns: 3 * S,
        accept_queue_ns: 2 * S,
    }
}

fn anomalies(out: &[Record]) -> Vec<(u64, Stuck, u64)> {
    let mut found: Vec<_> = out
        .iter()
        .filter_map(|record| match record {
            Record::Anomaly(anomaly) => Some((anomaly.conn_id, anomaly.stuck, anomaly.since_ns)),
            _ => None,
        })
        .collect();
    found.sort_unstable();
    found
}

/// The kernel's record is there (generation 0) and adds nothing.
fn present(_sock: u64) -> Option<KernelView> {
    Some(KernelView::default())
}

/// Four established connections, quiet since 1 s, with one of each reading.
#[test]
fn readings_flag_stalled_receivers_and_black_holes_and_veto_idle() {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for sock in 1..=4u64 {
        let conn = Sock::new(sock, role::CLIENT, 0).established(S);
        for event in &conn.events {
            tracker.handle(&event.event(), &mut out);
        }
    }
    let mut suspects = Vec::new();
    tracker.stall_suspects(2 * S, &thresholds(), &mut suspects);
    assert!(suspects.is_empty(), "quiet for 1 s, under both thresholds");
    tracker.stall_suspects(4 * S, &thresholds(), &mut suspects);
    suspects.sort_unstable();
    assert_eq!(suspects, [1, 2, 3, 4], "quiet for 3 s: read them");
    let readings: StallViews = [
        (
            1,
            (
                0,
                StallView::StalledReceiver {
                    since_ns: Some(S + S / 2),
                },
            ),
        ),
        (2, (0, StallView::Blackhole { since_ns: S })),
        (3, (0, StallView::Moving)),
        (4, (0, StallView::Idle)),
    ]
    .into_iter()
    .collect();
    let report = tracker.sweep_with(12 * S, &thresholds(), present, &readings, &mut out);
    // Established at 1 s with no data: past no_data's 10 s, but 3 writes a big buffer still.
    assert_eq!(
        anomalies(&out),
        [
            (1, Stuck::StalledReceiver, S + S / 2),
            (2, Stuck::Blackhole, S),
            (4, Stuck::NoData, S)
        ],
        "{out:?}"
    );
    assert_eq!(report.stuck, [0, 1, 0, 0, 0, 1, 1, 0]);
    // Known idle since its last data: not read again (until the slow rotation).
    suspects.clear();
    tracker.stall_suspects(13 * S, &thresholds(), &mut suspects);
    suspects.sort_unstable();
    assert_eq!(suspects, [1, 2, 3]);
    // The peer reads again: the stalled episode ends when the next reading says so.
    out.clear();
    let readings: StallViews = [(1, (0, StallView::Moving))].into_iter().collect();
    tracker.sweep_with(14 * S, &thresholds(), present, &readings, &mut out);
    assert!(
        out.contains(&Record::Unstuck(
            Stuck::StalledReceiver,
            14 * S - (S + S / 2)
        )),
        "{out:?}"
    );
    // A reading of another generation of the socket is not this connection's.
    out.clear();
    let stale: StallViews = [(3, (7, StallView::Blackhole { since_ns: 0 }))]
        .into_iter()
        .collect();
    tracker.sweep_with(15 * S, &thresholds(), present, &stale, &mut out);
    assert!(
        !anomalies(&out).contains(&(3, Stuck::Blackhole, 0)),
        "{out:?}"
    );
}

/// A CLOSE_WAIT leak on an accepted socket that only received: no event has named its process
/// (its receive burst is still in the kernel's record), but the record has.
#[test]
fn an_anomaly_names_the_owner_the_kernel_knows() {
    let server = Sock::server(0)
        .established(S)
        .state(tcp_state::CLOSE_WAIT, 2 * S);
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for event in &server.events {
        tracker.handle(&event.event(), &mut out);
    }
    let owner = Process {
        pid: 77,
        comm: crate::model::Comm::from_kernel(b"leaky\0\0\0\0\0\0\0\0\0\0\0"),
        cgroup: 5,
    };
    let kernel = |_| {
        Some(KernelView {
            start_ns: 0,
            last_data_ns: S + S / 2,
            bytes: 4,
            state: tcp_state::CLOSE_WAIT,
            state_since_ns: 0,
            process: Some(owner),
        })
    };
    tracker.sweep_with(
        8 * S,
        &thresholds(),
        kernel,
        &StallViews::default(),
        &mut out,
    );
    let anomaly = out
        .iter()
        .find_map(|record| match record {
            Record::Anomaly(anomaly) => Some(anomaly),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(anomaly.stuck, Stuck::CloseWait);
    assert_eq!(anomaly.process, Some(owner));
}

/// What the close record says, as the connection reports it.
#[test]
fn the_close_record_explains_the_connection() {
    let mut client = Sock::client(0).established(S);
    client.rec.retransmits = 7;
    client.rec.tcp.valid = 1;
    client.rec.tcp.total_retrans = 9;
    client.rec.diag.syn_retrans = 2;
    client.rec.diag.chrono_j = [4, 750, 25];
    client.rec.diag.total_rto = 3;
    client.rec.diag.drops = 5;
    client.rec.diag.drop_reason = 12;
    client.rec.diag.have = have::CHRONO | have::RTO;
    let mut server = Sock::server(0).established(S);
    server.rec.retransmits = 4;
    server.rec.tcp.valid = 1;
    server.rec.tcp.total_retrans = 6;
    server.rec.diag.accept_ns = S + 300_000_000;
    let mut events = client.close(2 * S, 0).events;
    events.extend(server.close(2 * S, 0).events);
    let mut tracker = Tracker::new();
    tracker.set_kernel_facts(KernelFacts {
        hz: 250,
        probes: false,
    });
    let mut out = Vec::new();
    for event in &events {
        tracker.handle(&event.event(), &mut out);
    }
    let (_, connections, tracker) = split(out, tracker);
    let client = connections.iter().find(|c| c.role == Role::Client).unwrap();
    // The kernel's own segment count, SYN retransmits included.
    assert_eq!(client.retransmits, 9);
    let diag = client.diag.parts();
    assert_eq!(diag.syn_retransmits, Some(2));
    // busy includes the limited times (4 ms a jiffy).
    assert_eq!(diag.busy_ns, Some(3_116 * MS));
    assert_eq!(diag.rwnd_limited_ns, Some(3_000 * MS));
    assert_eq!(diag.sndbuf_limited_ns, Some(100 * MS));
    assert_eq!(diag.rto_count, Some(3));
    assert_eq!((diag.packet_drops, diag.drop_reason), (5, Some(12)));
    assert_eq!(diag.accept_wait_ns, None, "a client accepts nothing");
    assert_eq!(
        diag.zero_window_probes, None,
        "the probes family is not attached"
    );
    let server = connections.iter().find(|c| c.role == Role::Server).unwrap();
    let diag = server.diag.parts();
    // The child starts with the request's SYN-ACK retransmits; the hook counted the rest.
    assert_eq!(diag.syn_retransmits, Some(2));
    assert_eq!(diag.accept_wait_ns, Some(300 * MS));
    assert_eq!(diag.busy_ns, None, "not read");
    assert_eq!(diag.rto_count, None, "a kernel before 6.7");
    assert_eq!((diag.packet_drops, diag.drop_reason), (0, None));
    // tcpobs_retransmits_total adds up the connections' own counts.
    assert_eq!(tracker.counts().retransmits[..2], [9, 6]);
}

/// A connection whose socket closed without the close hooks (their runs skipped): the kernel's
/// record stays, in the state it last saw. The stall check reads it (whatever its state, once
/// quiet), and a second reading a sweep later that says the same reports it lost; a reading in
/// between that finds the socket alive starts over.
#[test]
fn a_record_that_outlived_its_socket_is_reported_lost_on_the_second_reading() {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    let closing = Sock::new(1, role::CLIENT, 0)
        .established(S)
        .state(tcp_state::FIN_WAIT2, 2 * S);
    let other = Sock::new(2, role::CLIENT, 0).established(S);
    for event in closing.events.iter().chain(&other.events) {
        tracker.handle(&event.event(), &mut out);
    }
    let mut suspects = Vec::new();
    tracker.stall_suspects(5 * S, &thresholds(), &mut suspects);
    suspects.sort_unstable();
    assert_eq!(suspects, [1, 2], "quiet for 3 s: FIN_WAIT2 is read too");
    let gone: StallViews = [(1, (0, StallView::Gone)), (2, (0, StallView::Gone))]
        .into_iter()
        .collect();
    let report = tracker.sweep_with(5 * S, &thresholds(), present, &gone, &mut out);
    assert_eq!(report.lost, 0, "one reading is not enough");
    assert!(report.outlived.is_empty());
    // Read again next sweep whatever else it says, even known idle.
    suspects.clear();
    tracker.stall_suspects(6 * S, &thresholds(), &mut suspects);
    suspects.sort_unstable();
    assert_eq!(suspects, [1, 2]);
    let mixed: StallViews = [(1, (0, StallView::Gone)), (2, (0, StallView::Idle))]
        .into_iter()
        .collect();
    out.clear();
    let report = tracker.sweep_with(6 * S, &thresholds(), present, &mixed, &mut out);
    assert_eq!(report.lost, 1);
    assert_eq!(report.outlived, [(1, 0)]);
    assert_eq!(tracker.stats().closes_unseen, 1);
    let (_, connections, mut tracker) = split(out, tracker);
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].partial, Some(PartialReason::Lost));
    // Socket 2 was alive at the second reading: it starts over (one more `Gone` is not enough).
    let gone: StallViews = [(2, (0, StallView::Gone))].into_iter().collect();
    let mut out = Vec::new();
    let report = tracker.sweep_with(40 * S, &thresholds(), present, &gone, &mut out);
    assert_eq!(report.lost, 0, "{out:?}");
    assert!(
        !out.iter()
            .any(|record| matches!(record, Record::Anomaly(_))),
        "a socket read as gone is not flagged stuck: {out:?}"
    );
}

/// A reading that found a connection idle belongs to its state: once it enters another, the
/// stall check reads it again as soon as it is quiet (not on the slow rotation).
#[test]
fn a_new_state_is_read_afresh() {
    let conn = Sock::new(1, role::CLIENT, 0)
        .established(S)
        .state(tcp_state::CLOSE_WAIT, 20 * S);
    let (opening, rest) = conn.events.split_at(conn.events.len() - 1);
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for event in opening {
        tracker.handle(&event.event(), &mut out);
    }
    let mut suspects = Vec::new();
    tracker.stall_suspects(4 * S, &thresholds(), &mut suspects);
    assert_eq!(suspects, [1]);
    let idle: StallViews = [(1, (0, StallView::Idle))].into_iter().collect();
    tracker.sweep_with(4 * S, &thresholds(), present, &idle, &mut out);
    suspects.clear();
    tracker.stall_suspects(5 * S, &thresholds(), &mut suspects);
    assert!(suspects.is_empty(), "known idle: {suspects:?}");
    for event in rest {
        tracker.handle(&event.event(), &mut out);
    }
    tracker.stall_suspects(23 * S, &thresholds(), &mut suspects);
    assert_eq!(suspects, [1], "in CLOSE_WAIT since 20 s, quiet for 3 s");
}
