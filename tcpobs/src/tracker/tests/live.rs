//! What the live table and the hang detector know of a connection while it is open, when the
//! kernel folds its exchanges and sends none (the default): the kernel's record has the bytes,
//! the exchanges and the last data, the tracker none of them until the close.

use super::*;
use crate::{
    model::Stuck,
    tracker::{KernelTable, KernelView, LiveView, StuckThresholds},
};

const S: u64 = 1_000_000_000;

/// Plays a connection's events as the tracker gets them by default (no exchange events).
fn folded(sock: &Sock) -> Tracker {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for event in sock
        .events
        .iter()
        .filter(|event| !matches!(event, OwnedEvent::Burst(_)))
    {
        tracker.handle(&event.event(), &mut out);
    }
    tracker
}

fn ping_pong_client() -> Sock {
    Sock::client(0)
        .established(50 * US)
        .send(100 * MS, 4)
        .recv(200 * MS, 4)
}

fn ping_pong_server() -> Sock {
    Sock::server(0)
        .established(50 * US)
        .recv(100 * MS, 4)
        .send(200 * MS, 4)
}

/// One ping/pong: both ends show 4 bytes each way and one exchange (the one in progress), as
/// their connection events say at the close.
#[test]
fn the_live_view_takes_bytes_and_exchanges_from_the_kernel_record() {
    for sock in [ping_pong_client(), ping_pong_server()] {
        let mut tracker = folded(&sock);
        let (_, conn) = tracker.live_socks().next().unwrap();
        let unaware = LiveView {
            exchanges: 0,
            bytes_sent: 0,
            bytes_received: 0,
            last_activity_ns: 50 * US,
            state: tcp_state::ESTABLISHED,
        };
        assert_eq!(conn.live_view(None), unaware, "the tracker alone");
        let stale = SockRecord {
            start_ns: 7,
            ..sock.rec
        };
        assert_eq!(
            conn.live_view(Some(&stale)),
            unaware,
            "another generation's record"
        );
        let rec = sock.rec;
        tracker.set_kernel_table(Some(KernelTable::new(move |_| Some(rec))));
        let (key, conn) = tracker.live_socks().next().unwrap();
        let view = tracker.live_view(key, conn);
        assert_eq!(
            view,
            LiveView {
                exchanges: 1,
                bytes_sent: 4,
                bytes_received: 4,
                last_activity_ns: 200 * MS,
                state: tcp_state::ESTABLISHED,
            }
        );
        let (_, connections, _) = run(&sock.close(S, 0));
        let closed = &connections[0];
        assert_eq!(
            (closed.exchanges, closed.bytes_sent, closed.bytes_received),
            (view.exchanges, view.bytes_sent, view.bytes_received),
            "what the connection event says at the close"
        );
    }
}

/// The teardown states no event reports are the record's: a client that closed and waits for
/// the server's ACK is in `FIN_WAIT1`, one whose record is gone or of another generation shows
/// the tracker's state, and `CLOSE` (its close event on the way) is not a live state.
#[test]
fn the_live_view_takes_the_state_from_the_kernel_record() {
    let sock = ping_pong_client();
    let tracker = folded(&sock);
    let (_, conn) = tracker.live_socks().next().unwrap();
    let closing = SockRecord {
        state: tcp_state::FIN_WAIT1,
        ..sock.rec
    };
    assert_eq!(conn.live_view(Some(&closing)).state, tcp_state::FIN_WAIT1);
    let stale = SockRecord {
        start_ns: 7,
        ..closing
    };
    assert_eq!(conn.live_view(Some(&stale)).state, tcp_state::ESTABLISHED);
    let closed = SockRecord {
        state: tcp_state::CLOSE,
        ..sock.rec
    };
    assert_eq!(conn.live_view(Some(&closed)).state, tcp_state::ESTABLISHED);
    assert_eq!(conn.live_view(None).state, tcp_state::ESTABLISHED);
}

/// Keep-alive: the exchanges the kernel ended, plus the one in progress (here a request
/// without its response yet), as the close counts them.
#[test]
fn the_live_view_counts_the_folded_exchanges_and_the_one_in_progress() {
    let sock = Sock::client(0)
        .established(50 * US)
        .send(MS, 10)
        .recv(2 * MS, 100)
        .send(3 * MS, 10)
        .recv(4 * MS, 100)
        .send(5 * MS, 10);
    assert_eq!(sock.rec.exchanges.count, 2);
    let expected = LiveView {
        exchanges: 3,
        bytes_sent: 30,
        bytes_received: 200,
        last_activity_ns: 5 * MS,
        state: tcp_state::ESTABLISHED,
    };
    let tracker = folded(&sock);
    let (_, conn) = tracker.live_socks().next().unwrap();
    assert_eq!(conn.live_view(Some(&sock.rec)), expected);
    // With every exchange sent (`--events exchanges`), the tracker knows the first two; the
    // record still adds the one in progress, and nothing is counted twice.
    let (exchanges, _, tracker) = run_events(sock.events.iter().copied(), false);
    assert_eq!(exchanges.len(), 2);
    let (_, conn) = tracker.live_socks().next().unwrap();
    assert_eq!(conn.live_view(None).exchanges, 2);
    assert_eq!(conn.live_view(Some(&sock.rec)), expected);
    let (_, connections, _) = run(&sock.close(6 * MS, 0));
    assert_eq!(connections[0].exchanges, 3);
    // Between the exchanges (the last response received, no new request), the same count.
    let between = Sock::client(0)
        .established(50 * US)
        .send(MS, 10)
        .recv(2 * MS, 100)
        .send(3 * MS, 10)
        .recv(4 * MS, 100);
    let tracker = folded(&between);
    let (_, conn) = tracker.live_socks().next().unwrap();
    assert_eq!(conn.live_view(Some(&between.rec)).exchanges, 2);
    let (_, connections, _) = run(&between.close(6 * MS, 0));
    assert_eq!(connections[0].exchanges, 2);
}

fn idle_thresholds() -> StuckThresholds {
    StuckThresholds {
        idle_ns: 2 * S,
        no_data_ns: 30 * S,
        ..StuckThresholds::default()
    }
}

fn anomalies(out: &[Record]) -> Vec<(Stuck, u64, u64)> {
    out.iter()
        .filter_map(|record| match record {
            Record::Anomaly(anomaly) => Some((anomaly.stuck, anomaly.since_ns, anomaly.at_ns)),
            _ => None,
        })
        .collect()
}

/// The case: one ping/pong, then idle, with a 2 s idle threshold and the default 30 s
/// no-data one. The tracker has no data for the connection; the kernel's record is read once it
/// has been quiet for 2 s since its last known activity, and the connection is flagged idle 2 s
/// after its last data, not after 30 s.
#[test]
fn an_idle_connection_is_flagged_from_the_kernel_record_before_the_no_data_threshold() {
    for sock in [ping_pong_client(), ping_pong_server()] {
        let mut tracker = folded(&sock);
        let rec = sock.rec;
        let kernel = |_| Some(KernelView::of(&rec));
        let thresholds = idle_thresholds();
        let mut out = Vec::new();
        let report = tracker.sweep(S, &thresholds, kernel, &mut out);
        assert_eq!(report.lookups, 0, "quiet for 1 s: nothing to check");
        assert!(out.is_empty());
        // Quiet for 2 s since the open (as far as the tracker knows): the record says the
        // last data was at 200 ms.
        let report = tracker.sweep(2100 * MS, &thresholds, kernel, &mut out);
        assert_eq!(report.lookups, 1);
        assert!(anomalies(&out).is_empty(), "idle for 1.9 s only: {out:?}");
        let report = tracker.sweep(2300 * MS, &thresholds, kernel, &mut out);
        assert_eq!(report.lookups, 1);
        assert_eq!(
            anomalies(&out),
            [(Stuck::Idle, 200 * MS, 2300 * MS)],
            "idle since the pong"
        );
        assert_eq!(report.stuck[Stuck::Idle as usize], 1);
        // Reported once; read again each sweep (few are flagged), still idle.
        out.clear();
        let report = tracker.sweep(3300 * MS, &thresholds, kernel, &mut out);
        assert_eq!((report.lookups, report.stuck[Stuck::Idle as usize]), (1, 1));
        assert!(anomalies(&out).is_empty());
    }
}

/// A zombie that moves data again is no longer counted idle on the next sweep, although no
/// event tells the tracker of its data (the kernel folds the exchanges).
#[test]
fn an_idle_connection_that_moves_data_again_is_unflagged_on_the_next_sweep() {
    let sock = ping_pong_client();
    let mut tracker = folded(&sock);
    let rec = sock.rec;
    let thresholds = idle_thresholds();
    let mut out = Vec::new();
    let report = tracker.sweep(
        2300 * MS,
        &thresholds,
        |_| Some(KernelView::of(&rec)),
        &mut out,
    );
    assert_eq!(report.stuck[Stuck::Idle as usize], 1, "{out:?}");
    // Another request at 2.5 s: only the kernel's record knows.
    let rec = sock.send(2500 * MS, 4).rec;
    out.clear();
    let report = tracker.sweep(
        3300 * MS,
        &thresholds,
        |_| Some(KernelView::of(&rec)),
        &mut out,
    );
    assert_eq!((report.lookups, report.stuck[Stuck::Idle as usize]), (1, 0));
    assert!(
        // Idle from the pong (200 ms) to the sweep that saw the data.
        matches!(out[..], [Record::Unstuck(Stuck::Idle, ns)] if ns == 3100 * MS),
        "the episode ends: {out:?}"
    );
}

/// Without data in the kernel's record either, the connection is not idle: it is read each
/// sweep from the idle threshold on, and flagged `no_data` at its own threshold.
#[test]
fn a_connection_without_data_waits_for_the_no_data_threshold() {
    let sock = Sock::client(0).established(50 * US);
    let mut tracker = folded(&sock);
    let rec = sock.rec;
    let kernel = |_| Some(KernelView::of(&rec));
    let thresholds = idle_thresholds();
    let mut out = Vec::new();
    let report = tracker.sweep(6 * S, &thresholds, kernel, &mut out);
    assert_eq!(report.lookups, 1);
    assert!(out.is_empty(), "{out:?}");
    let report = tracker.sweep(31 * S, &thresholds, kernel, &mut out);
    assert_eq!(report.lookups, 1);
    assert_eq!(anomalies(&out), [(Stuck::NoData, 50 * US, 31 * S)]);
}

/// A connection that keeps moving data is read at most once per idle threshold: each reading
/// moves its last activity forward.
#[test]
fn a_busy_connection_is_read_once_per_idle_threshold() {
    let mut sock = ping_pong_client();
    let mut tracker = folded(&sock);
    let thresholds = idle_thresholds();
    let mut out = Vec::new();
    let mut lookups = 0;
    // A ping/pong every 500 ms for 10 s, a sweep every 100 ms.
    for tick in 1..=100u64 {
        let now = tick * 100 * MS;
        if tick % 5 == 0 {
            sock = sock.send(now - 50 * MS, 4).recv(now - 40 * MS, 4);
        }
        let rec = sock.rec;
        lookups += tracker
            .sweep(now, &thresholds, |_| Some(KernelView::of(&rec)), &mut out)
            .lookups;
    }
    assert!(anomalies(&out).is_empty(), "{out:?}");
    // At 2.1 s (2 s after the open), 4 s, 5.9 s (the audit's), 7.5 s and 9.5 s: each the
    // first sweep 2 s after the data the previous reading found.
    assert_eq!(lookups, 5);
}
