//! Connections whose open the kernel deferred (`tcpobs_common::PendingList`): the close stands
//! for the open, or the open comes late, before or after the close, or twice.

use tcpobs_common::{ShortCloseEvent, deferral};

use super::*;

/// A server connection: one exchange, then the client closes (`CLOSE_WAIT`, then `LAST_ACK`,
/// which the kernel keeps in the record).
fn served() -> Vec<OwnedEvent> {
    let mut events: Vec<OwnedEvent> = Sock::server(0)
        .established(40 * US)
        .recv(MS, 100)
        .send(2 * MS, 300)
        .state(tcp_state::CLOSE_WAIT, 3 * MS)
        .state(tcp_state::LAST_ACK, 3 * MS + 10 * US)
        .close(3 * MS + 50 * US, 0)
        .into_iter()
        .collect();
    events.retain(|event| {
        !matches!(event, OwnedEvent::State(state) if state.new_state == tcp_state::LAST_ACK)
    });
    events
}

/// `events` as the kernel sends them when the open is deferred and the connection closes
/// first: no open, no `CLOSE_WAIT` event, and a close that carries the flag.
fn deferred(events: &[OwnedEvent]) -> Vec<OwnedEvent> {
    events
        .iter()
        .filter(|event| !matches!(event, OwnedEvent::Open(_) | OwnedEvent::State(_)))
        .map(|event| match event {
            OwnedEvent::Close(close) => {
                let mut close = *close;
                close.record.open_deferred = deferral::PENDING;
                OwnedEvent::Close(close)
            }
            other => *other,
        })
        .collect()
}

/// The open of `events`, sent late.
fn late_open(events: &[OwnedEvent]) -> OwnedEvent {
    let OwnedEvent::Open(open) = events[0] else {
        panic!("the scenario starts with its open");
    };
    OwnedEvent::Open(OpenEvent {
        deferred: 1,
        ..open
    })
}

/// Every record the tracker makes of `events`, and the tracker.
fn records(events: &[OwnedEvent]) -> (Vec<Record>, Tracker) {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for event in events {
        tracker.handle(&event.event(), &mut out);
    }
    (out, tracker)
}

fn opened(records: &[Record]) -> Vec<&OpenedRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Opened(opened) => Some(opened),
            _ => None,
        })
        .collect()
}

fn connections(records: &[Record]) -> Vec<&ConnectionRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Connection(connection) => Some(connection),
            _ => None,
        })
        .collect()
}

/// The close alone makes what the open, the state event and the close made: the open (its
/// handshake; the owner as the close knows it, the server's process here, which its open did
/// not know yet), and the same connection record.
#[test]
fn a_close_stands_for_its_deferred_open() {
    let sent = served();
    let (mut expected, _) = records(&sent);
    let process = connections(&expected)[0].process;
    for record in &mut expected {
        if let Record::Opened(opened) = record {
            assert_eq!(opened.process, None);
            opened.process = process;
        }
    }
    for close_form in ["whole", "short"] {
        let mut events = deferred(&sent);
        if close_form == "short" {
            let last = events.len() - 1;
            let OwnedEvent::Close(close) = events[last] else {
                panic!("the close comes last");
            };
            events[last] = OwnedEvent::ShortClose(ShortCloseEvent::of(&close));
        }
        let (got, tracker) = records(&events);
        assert_eq!(opened(&got), opened(&expected), "{close_form} close");
        assert_eq!(opened(&got)[0].connect_ns, 40 * US);
        assert_eq!(
            connections(&got),
            connections(&expected),
            "{close_form} close"
        );
        assert_eq!(connections(&got)[0].partial, None);
        assert_eq!(
            tracker.stats(),
            TrackerStats::default(),
            "nothing unmatched"
        );
        assert_eq!(tracker.live().count(), 0);
    }
}

/// The kernel's flush sent the open while another CPU sent the close that stands for it, and
/// the close was read first: the late open is dropped, and no connection is left live.
#[test]
fn a_deferred_open_read_after_its_close_is_dropped() {
    let sent = served();
    let mut events = deferred(&sent);
    events.push(late_open(&sent));
    let (got, tracker) = records(&events);
    assert_eq!(opened(&got).len(), 1);
    assert_eq!(connections(&got).len(), 1);
    assert_eq!(
        tracker.live().count(),
        0,
        "no connection made of the late open"
    );
    assert_eq!(tracker.stats(), TrackerStats::default());
}

/// The open read first (flushed while the connection lived), then the close that still
/// carried the flag, or a second copy of the open (a flush and another event's send racing):
/// one open, one connection.
#[test]
fn a_deferred_open_read_before_its_close_counts_once() {
    let sent = served();
    let (expected, _) = records(&sent);
    let mut events = deferred(&sent);
    events.insert(0, late_open(&sent));
    let mut twice = events.clone();
    twice.insert(1, late_open(&sent));
    for events in [events, twice] {
        let (got, tracker) = records(&events);
        assert_eq!(opened(&got), opened(&expected));
        assert_eq!(connections(&got), connections(&expected));
        assert_eq!(tracker.stats(), TrackerStats::default());
        assert_eq!(tracker.live().count(), 0);
    }
}

/// A late open of a connection still live makes it live, established when the kernel says.
#[test]
fn a_flushed_open_makes_a_live_connection() {
    let sent = served();
    let (got, tracker) = records(&[late_open(&sent)]);
    assert_eq!(opened(&got).len(), 1);
    assert_eq!(opened(&got)[0].connect_ns, 40 * US);
    assert_eq!(tracker.live().count(), 1);
}

/// A late open of a connection whose socket already carries a newer one (its close, read long
/// before, is out of the recent closes' reach): dropped, and the newer connection stays.
#[test]
fn a_late_open_of_an_older_generation_leaves_the_newer_one() {
    let old = served();
    let newer = Sock::server(10 * MS).established(10 * MS + 40 * US);
    let mut events = newer.events.clone();
    events.push(late_open(&old));
    let (got, tracker) = records(&events);
    assert_eq!(opened(&got).len(), 1, "the newer one's");
    assert!(connections(&got).is_empty(), "{got:#?}");
    assert_eq!(tracker.live().count(), 1, "the newer one, live");
    assert_eq!(tracker.stats(), TrackerStats::default(), "nothing lost");
}
