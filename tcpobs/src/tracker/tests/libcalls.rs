//! Scenarios for the library calls around connections: resolutions tied to the connections they
//! answered, TLS handshakes settled by completion, `SSL_free` or the close, and the timeline.

use tcpobs_common::{DnsEvent, TlsEvent, libcalls::tls_step};

use super::*;
use crate::{
    config::live::Thresholds,
    export::output::select::{AnomalyLimits, anomalies_of},
    model::{DnsFailure, TIMELINE_EXCHANGES, TlsRecord},
    tracker::libcalls::DNS_WINDOW_NS,
};

const PID: u32 = 4242;

fn task() -> Task {
    Task {
        pid: PID,
        tid: PID,
        comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
        cgroup: 99,
    }
}

/// A client of process `PID` to 192.0.2.10:443, started at `start_ns`.
fn client(start_ns: u64) -> Sock {
    let mut sock = Sock::client(start_ns);
    sock.rec.task = task();
    sock.rec.endpoints.raddr[..4].copy_from_slice(&[192, 0, 2, 10]);
    sock.rec.endpoints.rport = 443;
    sock
}

fn dns(
    pid: u32,
    host: &str,
    start_ns: u64,
    end_ns: u64,
    code: i32,
    addrs: &[[u8; 4]],
) -> OwnedEvent {
    let mut event = DnsEvent {
        hdr: EventHeader {
            kind: kind::DNS,
            ts_ns: end_ns,
            ..Default::default()
        },
        task: Task { pid, ..task() },
        call_ns: start_ns,
        result: code,
        host_len: host.len() as u16,
        addr_count: addrs.len() as u8,
        ..Default::default()
    };
    event.host[..host.len()].copy_from_slice(host.as_bytes());
    for (index, addr) in addrs.iter().enumerate() {
        event.families[index] = 2;
        event.addrs[index][..4].copy_from_slice(addr);
    }
    OwnedEvent::Dns(event)
}

/// A handshake call's return (or `SSL_free`) on `sock`'s connection (`None`: no socket).
fn tls(
    sock: Option<&Sock>,
    start_ns: u64,
    at_ns: u64,
    ret: i32,
    step: u8,
    calls: u16,
) -> OwnedEvent {
    OwnedEvent::Tls(TlsEvent {
        hdr: EventHeader {
            kind: kind::TLS,
            ts_ns: at_ns,
            sock: sock.map_or(0, |sock| sock.sock),
            start_ns: sock.map_or(0, |sock| sock.rec.start_ns),
            ..Default::default()
        },
        task: task(),
        ssl: 0x5500,
        handshake_ns: start_ns,
        ret,
        func: 2,
        step,
        calls,
    })
}

fn handle_all(tracker: &mut Tracker, events: &[OwnedEvent]) -> Vec<Record> {
    let mut out = Vec::new();
    for event in events {
        tracker.handle(&event.event(), &mut out);
    }
    out
}

fn connection(out: &[Record]) -> &ConnectionRecord {
    out.iter()
        .find_map(|record| match record {
            Record::Connection(connection) => Some(connection),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no connection record: {out:#?}"))
}

fn tls_records(out: &[Record]) -> Vec<&TlsRecord> {
    out.iter()
        .filter_map(|record| match record {
            Record::Tls(tls) => Some(tls),
            _ => None,
        })
        .collect()
}

#[test]
fn a_connection_to_a_resolved_address_carries_its_resolution() {
    let mut tracker = Tracker::new();
    let mut out = handle_all(
        &mut tracker,
        &[
            dns(PID, "old.test", 0, MS, 0, &[[192, 0, 2, 10]]),
            dns(
                PID,
                "api.test",
                2 * MS,
                5 * MS,
                0,
                &[[192, 0, 2, 9], [192, 0, 2, 10]],
            ),
            // Another process resolving the same address is not this connection's.
            dns(
                PID + 1,
                "other.test",
                5 * MS,
                5 * MS + 10 * US,
                0,
                &[[192, 0, 2, 10]],
            ),
        ],
    );
    assert_eq!(out.len(), 3, "one dns record per call: {out:#?}");
    let events = client(6 * MS)
        .established(6 * MS + 70 * US)
        .send(7 * MS, 10)
        .recv(8 * MS, 20)
        .close(9 * MS, 0);
    out.extend(handle_all(&mut tracker, &events));
    let record = connection(&out);
    let dns = record.dns().unwrap_or_else(|| panic!("{record:#?}"));
    assert_eq!(&*dns.host, "api.test", "the latest matching resolution");
    assert_eq!((dns.start_ns, dns.duration_ns), (2 * MS, 3 * MS));
    let names: Vec<&str> = record.timeline().entries().iter().map(|e| e.name).collect();
    assert_eq!(names, ["dns", "connect", "exchange", "close"]);
}

#[test]
fn resolutions_do_not_stick_to_other_connections() {
    let mut tracker = Tracker::new();
    let mut out = handle_all(
        &mut tracker,
        &[
            dns(PID, "api.test", 0, MS, 0, &[[192, 0, 2, 99]]),
            dns(PID, "late.test", 0, MS, 0, &[[192, 0, 2, 10]]),
        ],
    );
    // Another address; then the right address, but after the window.
    let mut other = client(2 * MS);
    other.rec.endpoints.raddr[..4].copy_from_slice(&[192, 0, 2, 11]);
    out.extend(handle_all(
        &mut tracker,
        &other.established(3 * MS).close(4 * MS, 0),
    ));
    let late = client(MS + DNS_WINDOW_NS + 1);
    out.extend(handle_all(
        &mut tracker,
        &late
            .established(MS + DNS_WINDOW_NS + 2)
            .close(MS + DNS_WINDOW_NS + 3, 0),
    ));
    let connections: Vec<_> = out
        .iter()
        .filter_map(|record| match record {
            Record::Connection(connection) => Some(connection),
            _ => None,
        })
        .collect();
    assert_eq!(connections.len(), 2);
    assert!(
        connections.iter().all(|c| c.dns().is_none()),
        "{connections:#?}"
    );
}

#[test]
fn failed_resolutions_are_recorded_by_kind_and_not_cached() {
    let mut tracker = Tracker::new();
    let out = handle_all(
        &mut tracker,
        &[
            dns(PID, "nothing.invalid", 0, 300 * US, -2, &[]),
            dns(PID, "flaky.test", MS, 2 * MS, -3, &[]),
            // Numeric hosts are not resolutions.
            dns(
                PID,
                "192.0.2.10",
                3 * MS,
                3 * MS + 5 * US,
                0,
                &[[192, 0, 2, 10]],
            ),
        ],
    );
    let kinds: Vec<_> = out
        .iter()
        .map(|record| match record {
            Record::Dns(dns) => (&*dns.host, dns.failure(), dns.duration_ns),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("nothing.invalid", Some(DnsFailure::Permanent), 300 * US),
            ("flaky.test", Some(DnsFailure::Transient), MS),
        ]
    );
    let events = client(4 * MS).established(5 * MS).close(6 * MS, 0);
    let out = handle_all(&mut tracker, &events);
    assert!(connection(&out).dns().is_none());
}

#[test]
fn a_completed_handshake_is_tied_to_its_connection() {
    let mut tracker = Tracker::new();
    let sock = client(0).established(70 * US);
    let mut events = sock.events.clone();
    // Non-blocking: the first call returns -1 (would block), the second completes it.
    events.push(tls(
        Some(&sock),
        100 * US,
        200 * US,
        -1,
        tls_step::RETURN,
        1,
    ));
    events.push(tls(Some(&sock), 100 * US, 2 * MS, 1, tls_step::RETURN, 2));
    let mut out = handle_all(&mut tracker, &events);
    let sock = Sock {
        events: Vec::new(),
        ..sock
    };
    out.extend(handle_all(
        &mut tracker,
        &sock
            .send(100 * US, 300)
            .recv(MS, 3000)
            .send(3 * MS, 100)
            .recv(4 * MS, 500)
            .close(5 * MS, 0),
    ));
    // SSL_free after the close: already settled.
    out.extend(handle_all(
        &mut tracker,
        &[tls(
            Some(&client(0)),
            100 * US,
            6 * MS,
            0,
            tls_step::FREED,
            2,
        )],
    ));
    let handshakes = tls_records(&out);
    assert_eq!(handshakes.len(), 1, "{out:#?}");
    assert!(handshakes[0].ok);
    assert_eq!(handshakes[0].conn_id, Some(connection(&out).id));
    assert_eq!(
        (handshakes[0].duration_ns, handshakes[0].calls),
        (2 * MS - 100 * US, 2)
    );
    let tls = connection(&out).tls().unwrap();
    assert_eq!(tls.ok, Some(true));
    let names: Vec<&str> = connection(&out)
        .timeline()
        .entries()
        .iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["connect", "tls", "exchange", "exchange", "close"]);
}

#[test]
fn a_handshake_unfinished_at_close_failed() {
    let mut tracker = Tracker::new();
    let sock = client(0).established(70 * US);
    let mut events = sock.events.clone();
    events.push(tls(
        Some(&sock),
        100 * US,
        900 * US,
        -1,
        tls_step::RETURN,
        1,
    ));
    let out = handle_all(&mut tracker, &events);
    assert!(tls_records(&out).is_empty(), "undecided yet: {out:#?}");
    let sock = Sock {
        events: Vec::new(),
        ..sock
    };
    let out = handle_all(
        &mut tracker,
        &sock.send(100 * US, 300).recv(800 * US, 7).close(MS, 0),
    );
    let handshakes = tls_records(&out);
    assert_eq!(handshakes.len(), 1);
    assert!(!handshakes[0].ok);
    assert_eq!(handshakes[0].duration_ns, 800 * US);
    let position = |wanted: fn(&Record) -> bool| out.iter().position(wanted).unwrap();
    assert!(
        position(|r| matches!(r, Record::Tls(_)))
            < position(|r| matches!(r, Record::Connection(_))),
        "the handshake is reported before its connection"
    );
    assert_eq!(connection(&out).tls().unwrap().ok, Some(false));
    let anomalies = anomalies_of(connection(&out), &AnomalyLimits::of(&Thresholds::default()));
    assert!(anomalies.contains(&"tls_failure"), "{anomalies:?}");
}

#[test]
fn a_handshake_ending_after_its_connection_is_still_tied_to_it() {
    // A server's blocking SSL_accept returns after the client has already reset the
    // connection: the first news of the handshake comes after the close.
    let mut tracker = Tracker::new();
    let sock = Sock::server(0).established(70 * US);
    let mut out = handle_all(
        &mut tracker,
        &sock.recv(200 * US, 300).send(300 * US, 3000).close(MS, 0),
    );
    let sock = Sock::server(0);
    out.extend(handle_all(
        &mut tracker,
        &[
            tls(Some(&sock), 100 * US, 2 * MS, 1, tls_step::RETURN, 1),
            tls(Some(&sock), 100 * US, 3 * MS, 0, tls_step::FREED, 1),
        ],
    ));
    let handshakes = tls_records(&out);
    assert_eq!(handshakes.len(), 1, "{out:#?}");
    let closed = connection(&out);
    assert_eq!(
        (
            handshakes[0].conn_id,
            handshakes[0].role,
            handshakes[0].addrs
        ),
        (Some(closed.id), Role::Server, Some(closed.addrs))
    );
    assert!(handshakes[0].ok && handshakes[0].after_close);
    assert_eq!(handshakes[0].duration_ns, 2 * MS - 100 * US);
    assert!(closed.tls().is_none(), "written before the handshake ended");
    assert_eq!(tracker.stats(), TrackerStats::default());
}

#[test]
fn handshakes_without_a_connection_report_final_outcomes_only() {
    let mut tracker = Tracker::new();
    let out = handle_all(
        &mut tracker,
        &[
            tls(None, 0, MS, -1, tls_step::RETURN, 1),
            tls(None, 0, 2 * MS, 1, tls_step::RETURN, 2),
            tls(None, 5 * MS, 6 * MS, -1, tls_step::RETURN, 1),
            tls(None, 5 * MS, 7 * MS, 0, tls_step::FREED, 1),
        ],
    );
    let outcomes: Vec<_> = tls_records(&out)
        .iter()
        .map(|tls| (tls.conn_id, tls.ok, tls.duration_ns))
        .collect();
    assert_eq!(outcomes, [(None, true, 2 * MS), (None, false, 2 * MS)]);
    assert_eq!(
        tracker.stats(),
        TrackerStats::default(),
        "nothing unmatched"
    );
}

#[test]
fn the_timeline_lists_exchanges_and_allocates_only_for_keep_alive() {
    // One exchange: the last one is known at close, nothing is kept meanwhile.
    let mut tracker = Tracker::new();
    let sock = client(0).established(70 * US).send(MS, 10).recv(2 * MS, 20);
    let mut out = handle_all(&mut tracker, &sock.events);
    assert!(tracker.live().all(|conn| conn.spans.is_none()));
    let sock = Sock {
        events: Vec::new(),
        ..sock
    };
    out.extend(handle_all(&mut tracker, &sock.close(3 * MS, 0)));
    let record = connection(&out);
    assert!(record.spans.is_none());
    let entries = record.timeline();
    let entries: Vec<_> = entries.entries().iter().map(|e| (e.name, e.seq)).collect();
    assert_eq!(
        entries,
        [("connect", None), ("exchange", Some(1)), ("close", None)]
    );

    // Keep-alive beyond the timeline's bound: the first ones and the last.
    let mut sock = client(0).established(70 * US);
    let total = 30u64;
    for n in 0..total {
        sock = sock.send(MS + n * MS, 10).recv(MS + n * MS + 500 * US, 20);
    }
    let out = handle_all(&mut Tracker::new(), &sock.close(100 * MS, 0));
    let record = connection(&out);
    let seqs: Vec<u32> = record
        .timeline()
        .entries()
        .iter()
        .filter_map(|entry| entry.seq)
        .collect();
    let mut expected: Vec<u32> = (1..TIMELINE_EXCHANGES as u32).collect();
    expected.push(total as u32);
    assert_eq!(seqs, expected);
    assert_eq!(
        record.timeline_omitted(),
        total as u32 - TIMELINE_EXCHANGES as u32
    );
    let second = record.timeline().entries()[2];
    assert_eq!(
        (second.name, second.start_ns, second.duration_ns),
        ("exchange", 2 * MS, 500 * US)
    );
}

/// The connection event carries the library calls: `dns_host`, `dns_s`, `tls_handshake_s`,
/// `tls_ok` and the `phases` timeline.
#[test]
fn the_connection_event_shows_its_timeline() {
    let mut tracker = Tracker::new();
    let sock = client(2 * MS).established(2 * MS + 50 * US);
    let mut events = vec![dns(PID, "api.test", 0, MS, 0, &[[192, 0, 2, 10]])];
    events.extend(sock.events.iter().copied());
    events.push(tls(Some(&sock), 3 * MS, 4 * MS, 1, tls_step::RETURN, 1));
    let mut out = handle_all(&mut tracker, &events);
    let sock = Sock {
        events: Vec::new(),
        ..sock
    };
    out.extend(handle_all(
        &mut tracker,
        &sock.send(5 * MS, 10).recv(6 * MS, 20).close(7 * MS, 0),
    ));
    let mut line = crate::export::output::json::Line::default();
    crate::export::output::json::events::connection(
        &mut line,
        connection(&out),
        &[],
        None,
        &crate::clock::BootEpoch,
    );
    let value: serde_json::Value = serde_json::from_str(line.as_str()).unwrap();
    assert_eq!(value["dns_host"], "api.test");
    assert_eq!(value["dns_s"], 0.001);
    assert_eq!(value["tls_handshake_s"], 0.001);
    assert_eq!(value["tls_ok"], true);
    assert_eq!(value["phases_omitted"], 0);
    let phases: Vec<(String, String, f64)> = value["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|phase| {
            (
                phase["name"].as_str().unwrap().to_owned(),
                phase["start"].as_str().unwrap().to_owned(),
                phase["duration_s"].as_f64().unwrap(),
            )
        })
        .collect();
    let at = |ms: f64| format!("1970-01-01T00:00:00.{:06}Z", (ms * 1000.0) as u64);
    assert_eq!(
        phases,
        [
            ("dns".to_owned(), at(0.0), 0.001),
            ("connect".to_owned(), at(2.0), 0.00005),
            ("tls".to_owned(), at(3.0), 0.001),
            ("exchange".to_owned(), at(5.0), 0.001),
            ("close".to_owned(), at(7.0), 0.0),
        ]
    );
    assert_eq!(value["phases"][3]["seq"], 1);
}
