//! Connections the tracker sees only in part (already open, events without their open, a
//! socket reused without a close, still open at shutdown), the live counts, and the size of
//! a live connection.

use tcpobs_common::ShortCloseEvent;

use super::*;

/// A socket already open when tcpobs started: role unknown, partial, no exchange guessed.
#[test]
fn already_open_connections_are_partial_and_unclassified() {
    let mut sock = Sock::new(0xffff_0000_0000_3000, role::UNKNOWN, 10 * MS);
    sock.rec.flags = FLAG_PARTIAL;
    let events = sock
        .established(10 * MS)
        .recv(10 * MS, 10)
        .send(11 * MS, 20)
        .recv(12 * MS, 30)
        .state(tcp_state::CLOSE_WAIT, 13 * MS)
        .state(tcp_state::LAST_ACK, 14 * MS)
        .close(15 * MS, 0);
    let (exchanges, connections, tracker) = run(&events);
    assert!(exchanges.is_empty(), "{exchanges:?}");
    let connection = &connections[0];
    assert_eq!(connection.role, Role::Unknown);
    assert_eq!(connection.partial, Some(PartialReason::AlreadyOpen));
    assert_eq!(connection.connect_ns, None);
    let close = connection.close.as_ref().unwrap();
    assert_eq!(close.originator, CloseOriginator::Unknown);
    assert_eq!(close.closed_by, Some(Side::Peer));
    assert_eq!((connection.bytes_sent, connection.bytes_received), (20, 40));
    assert_eq!(tracker.stats(), TrackerStats::default());
}

/// A socket adopted (role unknown) in the moment between the hooks attaching and the seeding,
/// then given its role by the seeding (a second open of the same generation): the role counts
/// from then on, and the exchanges after it are classified.
#[test]
fn a_seeded_role_replaces_an_adopted_unknown() {
    let mut sock = Sock::new(0xffff_0000_0000_3000, role::UNKNOWN, 10 * MS);
    sock.rec.flags = FLAG_PARTIAL;
    let mut sock = sock.established(10 * MS).recv(10 * MS, 10);
    sock.rec.role = role::SERVER;
    let events = sock
        .established(11 * MS)
        .send(12 * MS, 20)
        .recv(13 * MS, 30)
        .send(14 * MS, 40)
        .state(tcp_state::CLOSE_WAIT, 15 * MS)
        .state(tcp_state::LAST_ACK, 16 * MS)
        .close(17 * MS, 0);
    let (exchanges, connections, tracker) = run_events(events, false);
    assert_eq!(connections.len(), 1, "one connection: {connections:#?}");
    let connection = &connections[0];
    assert_eq!(connection.role, Role::Server);
    assert_eq!(connection.partial, Some(PartialReason::AlreadyOpen));
    assert_eq!(
        classes(&exchanges),
        [ExchangeClass::Start, ExchangeClass::Last],
        "the request in progress at the seeding, then one after"
    );
    assert_eq!(connection.exchanges, 2);
    assert_eq!(
        connection.close.as_ref().unwrap().originator,
        CloseOriginator::Client
    );
    assert_eq!(tracker.live().count(), 0);
    assert_eq!(tracker.stats(), TrackerStats::default());
}

#[test]
fn events_for_unknown_connections_are_unmatched() {
    let events = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 80)
        .recv(MS, 80)
        .send(2 * MS, 80)
        .state(tcp_state::FIN_WAIT1, 3 * MS)
        .close(4 * MS, 0);
    // Drop the Open, as a full ring buffer would.
    let (exchanges, connections, tracker) = run(&events[1..]);
    assert_eq!(
        tracker.stats().unmatched,
        3,
        "a pair of bursts, a state change and the close, all without their open"
    );
    assert_eq!(connections[0].partial, Some(PartialReason::MissedOpen));
    // The close record alone still gives the outcome and the last exchange.
    assert_eq!(
        connections[0].close.as_ref().unwrap().originator,
        CloseOriginator::Client
    );
    assert_eq!(
        (connections[0].bytes_sent, connections[0].bytes_received),
        (160, 80)
    );
    assert_eq!(exchanges.len(), 1);
}

/// A new generation on a socket the tracker still holds: the old connection was lost.
#[test]
fn reused_socket_without_close_reports_the_old_connection_lost() {
    let old = Sock::client(0)
        .established(50 * US)
        .send(MS, 10)
        .recv(2 * MS, 10);
    let mut events = old.events;
    let new = Sock::client(10 * MS)
        .established(10 * MS + 50 * US)
        .close(20 * MS, 0);
    events.extend(new);
    let (exchanges, connections, tracker) = run(&events);
    assert_eq!(tracker.stats().lost, 1);
    assert_eq!(connections.len(), 2);
    assert_eq!(connections[0].partial, Some(PartialReason::Lost));
    assert!(connections[0].close.is_none());
    assert_eq!(connections[1].partial, None);
    assert_ne!(connections[0].id, connections[1].id);
    assert!(
        exchanges.is_empty(),
        "the old connection's bursts never left the kernel: {exchanges:?}"
    );
}

/// A one-request connection's close sent short (its record without the timeline spans, as the
/// kernel sends it) makes the same connection record as the whole close.
#[test]
fn a_short_close_makes_the_same_record_as_a_whole_one() {
    let whole: Vec<OwnedEvent> = Sock::client(0)
        .established(50 * US)
        .send(MS, 100)
        .recv(2 * MS, 200)
        .close(5 * MS, 0)
        .into_iter()
        .collect();
    let short: Vec<OwnedEvent> = whole
        .iter()
        .map(|event| match event {
            OwnedEvent::Close(close) => {
                assert_eq!(close.record.exchanges.kept, 0, "no span to leave out");
                OwnedEvent::ShortClose(ShortCloseEvent::of(close))
            }
            other => *other,
        })
        .collect();
    let (_, whole_connections, _) = run(&whole);
    let (_, short_connections, _) = run(&short);
    assert_eq!(whole_connections.len(), 1);
    assert_eq!(short_connections, whole_connections);
}

/// A close of an older generation read after the newer one's open (the ring buffer was full
/// and the close record was spilled): reported, and the live connection left alone.
#[test]
fn a_late_close_of_an_older_generation_leaves_the_newer_one_live() {
    let old: Vec<OwnedEvent> = Sock::client(0)
        .established(50 * US)
        .close(5 * MS, 0)
        .into_iter()
        .filter(|event| matches!(event, OwnedEvent::Close(_)))
        .collect();
    let new = Sock::client(10 * MS).established(10 * MS + 50 * US);
    let mut events = new.events.clone();
    events.extend(old);
    events.extend(new.close(20 * MS, 0));
    let (_, connections, tracker) = run(&events);
    assert_eq!(tracker.stats().lost, 0);
    let partial: Vec<_> = connections.iter().map(|c| c.partial).collect();
    assert_eq!(partial, [Some(PartialReason::MissedOpen), None]);
}

#[test]
fn shutdown_flushes_live_connections_as_partial() {
    for sent in [true, false] {
        let sock = Sock::server(0)
            .established(50 * US)
            .recv(MS, 10)
            .send(2 * MS, 10)
            .recv(3 * MS, 10);
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        for event in &sock.events {
            match event {
                // Sent because the daemon asked for every exchange: not folded.
                OwnedEvent::Burst(exchange) if sent => {
                    let exchange = BurstEvent {
                        folded: 0,
                        ..*exchange
                    };
                    tracker.handle(&OwnedEvent::Burst(exchange).event(), &mut out);
                }
                OwnedEvent::Burst(_) => {}
                _ => tracker.handle(&event.event(), &mut out),
            }
        }
        assert_eq!(tracker.live().count(), 1);
        // The second request ended the first exchange; it is in progress in the kernel.
        tracker.flush(10 * MS, |_| Some(sock.rec), &mut out);
        let (exchanges, connections, tracker) = split(out, tracker);
        assert_eq!(tracker.live().count(), 0);
        let expected: &[ExchangeClass] = if sent {
            &[ExchangeClass::Start, ExchangeClass::Continue]
        } else {
            &[ExchangeClass::Continue]
        };
        assert_eq!(classes(&exchanges), expected, "sent: {sent}");
        let flushed = exchanges.last().unwrap();
        assert_eq!(flushed.seq, 2);
        assert_eq!(flushed.request_bytes, 10);
        assert_eq!(flushed.idle_after_ns, None, "still open");
        if sent {
            assert_eq!(exchanges[0].response_ns, Some(MS));
            assert_eq!(exchanges[0].idle_after_ns, Some(MS));
        }
        let connection = &connections[0];
        assert_eq!(connection.partial, Some(PartialReason::Shutdown));
        assert_eq!(connection.lifetime_ns, 10 * MS);
        assert!(connection.close.is_none());
        assert_eq!(connection.exchanges, 2);
        assert_eq!(connection.max_response_begin_ns, Some(MS));
        assert_eq!((connection.bytes_sent, connection.bytes_received), (10, 20));
    }
}

/// A client's connect is known before it is established; the counters follow its states.
#[test]
fn connect_then_establish_is_one_connection_with_live_counts() {
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    let sock = Sock::client(0);
    let connect = OwnedEvent::Connect(OpenEvent {
        hdr: sock.hdr(kind::CONNECT, 0),
        endpoints: sock.rec.endpoints,
        role: role::CLIENT,
        state: tcp_state::SYN_SENT,
        ..Default::default()
    });
    tracker.handle(&connect.event(), &mut out);
    let syn_sent = usize::from(tcp_state::SYN_SENT);
    let established = usize::from(tcp_state::ESTABLISHED);
    assert_eq!(tracker.counts().open[0][syn_sent], 1);
    assert!(out.is_empty());
    let mut sock = sock.established(70 * US).send(MS, 10).recv(2 * MS, 20);
    for event in sock.events.drain(..) {
        tracker.handle(&event.event(), &mut out);
    }
    assert_eq!(
        tracker.live().count(),
        1,
        "the connect and the open are one connection"
    );
    assert_eq!(tracker.counts().open[0][syn_sent], 0);
    assert_eq!(tracker.counts().open[0][established], 1);
    let Record::Opened(opened) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(opened.connect_ns, 70 * US);
    assert_eq!(
        tracker.counts().bytes[0],
        [0, 0],
        "the kernel counts the bytes"
    );
    let close = sock.close(3 * MS, 0);
    assert_eq!(
        close.folded.bytes,
        [(Role::Client, [10, 0])],
        "the request, completed in the kernel"
    );
    let mut closed = Vec::new();
    tracker.handle(&close[0].event(), &mut closed);
    assert_eq!(tracker.counts().open[0][established], 0);
    assert_eq!(
        tracker.counts().bytes[0],
        [0, 20],
        "the close brings the response, still in progress"
    );
    assert_eq!(tracker.stats(), TrackerStats::default());
}

/// The live table holds one `Conn` per traced socket: 200,000 of them must fit the daemon's
/// 64 MiB (BENCHMARKS.md, scale). Growing it is a decision, not an accident.
#[test]
fn a_live_connection_stays_small() {
    assert!(
        std::mem::size_of::<super::Conn>() <= 152,
        "{}",
        std::mem::size_of::<super::Conn>()
    );
}

/// Fuzzed ring buffer records (`fuzz/regressions/ring_buffer/bytes-overflow`): a burst that
/// claims 2^64 - 1 bytes, then more bytes on the same connection. The byte counts saturate
/// rather than overflow (a panic in a debug build, a wrap to a small count in a release one).
#[test]
fn byte_counts_saturate_on_records_claiming_too_much() {
    let mut events = Sock::client(0)
        .established(50 * US)
        .send(100 * US, 80)
        .recv(MS, 80)
        .send(2 * MS, 80)
        .close(3 * MS, 0);
    for event in events.iter_mut() {
        if let OwnedEvent::Burst(burst) = event {
            burst.request.bytes = u64::MAX;
        }
    }
    let (exchanges, connections, tracker) = run(&events);
    assert_eq!(exchanges[0].request_bytes, u64::MAX);
    assert_eq!(
        (connections[0].bytes_sent, connections[0].bytes_received),
        (160, 80),
        "the connection's totals are the kernel's final record's"
    );
    // The byte counters: the kernel's folded totals (added by the daemon) and each close's
    // burst in progress (80 sent here) saturate too.
    let mut tracker = tracker;
    tracker.add_kernel_bytes(&[[u64::MAX, 1], [0; 2], [0; 2]]);
    tracker.add_kernel_bytes(&[[5, u64::MAX], [0; 2], [0; 2]]);
    assert_eq!(tracker.counts().bytes[0], [u64::MAX, u64::MAX]);
}
