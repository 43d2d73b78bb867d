//! The byte writer (numbers, times, escapes, addresses, each compared with what std, chrono
//! and serde_json make of them) and every event, pinned byte for byte.

use std::{net::IpAddr, sync::Arc};

use chrono::DateTime;
use serde_json::Value;

use super::{
    events::{self, anomaly, connection, dns, exchange, tls},
    *,
};
use crate::{
    clock::BootEpoch as Epoch,
    metadata::Meta,
    model::{Addrs, Comm, DnsRecord, Process, Record, Resolved, Role, TlsRecord},
};

#[test]
fn objects_are_valid_json_with_plain_decimals() {
    let mut line = Line::default();
    let mut object = Object::new(&mut line, "test");
    object
        .secs(key!("a"), Some(70_000))
        .secs(key!("b"), Some(1_500_000_000))
        .secs(key!("c"), Some(0))
        .secs(key!("d"), None)
        .secs(key!("g"), Some(12_000_000_001))
        .str(key!("e"), "quote\" back\\ nl\n ctl\u{1}")
        .bool(key!("f"), true);
    object.end();
    let out = line.as_str();
    assert!(out.ends_with("}\n"));
    assert!(
        out.contains("\"a\":0.00007,\"b\":1.5,\"c\":0,\"d\":null"),
        "{out}"
    );
    assert!(out.contains("\"g\":12.000000001"), "{out}");
    let value: serde_json::Value = serde_json::from_str(out).unwrap();
    assert_eq!(value["type"], "test");
    assert_eq!(value["schema_version"], SCHEMA_VERSION);
    assert_eq!(value["e"], "quote\" back\\ nl\n ctl\u{1}");
}

/// Numbers and durations as std prints them, for every digit count and the edges.
#[test]
fn numbers_match_std() {
    let mut values: Vec<u64> = (0..1_100).collect();
    for power in 1..20 {
        let at = 10u64.pow(power);
        values.extend([at - 1, at, at + 1, at + at / 3, (at / 3).saturating_mul(7)]);
    }
    values.extend([
        u64::MAX - 1,
        u64::MAX,
        1 << 31,
        1_000_000_007,
        123_456_789_000,
    ]);
    for value in values {
        let mut out = Vec::new();
        push_u64(&mut out, value);
        assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        let mut out = Vec::new();
        push_secs(&mut out, value);
        let (whole, fraction) = (value / 1_000_000_000, value % 1_000_000_000);
        let expected = if fraction == 0 {
            whole.to_string()
        } else {
            format!("{whole}.{fraction:09}")
                .trim_end_matches('0')
                .to_owned()
        };
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{value} ns");
    }
}

#[test]
fn times_in_one_object_match_chrono() {
    use chrono::SecondsFormat;
    let stamps = [
        1_700_000_000_123_456_789,
        1_700_000_000_999_999_999,
        1_700_000_001_000_000_000,
        1_700_000_000_000_000_001,
        951_868_799_999_999_000, // 2000-02-29T23:59:59
        951_868_800_000_000_000,
    ];
    let mut line = Line::default();
    let mut object = Object::new(&mut line, "t");
    for (index, unix_ns) in stamps.iter().enumerate() {
        // A key made at run time, as `key!` makes them from literals.
        let name: &'static str = Box::leak(format!(",\"t{index}\":").into_boxed_str());
        object.time(Key::new(name, ""), *unix_ns);
    }
    object.end();
    let out = line.as_str();
    let value: serde_json::Value = serde_json::from_str(out).unwrap();
    for (index, unix_ns) in stamps.iter().enumerate() {
        let expected =
            DateTime::from_timestamp_nanos(*unix_ns).to_rfc3339_opts(SecondsFormat::Micros, true);
        assert_eq!(value[format!("t{index}")], expected, "{unix_ns}");
    }
}

#[test]
fn times_match_chrono() {
    use chrono::SecondsFormat;
    for unix_ns in [
        0,
        1_700_000_000_123_456_789,
        951_782_400_000_000_000, // 2000-02-29
        4_102_444_799_999_999_999,
        -1,
        1_000,
    ] {
        let mut line = Line::default();
        let mut object = Object::new(&mut line, "t");
        object.time(key!("at"), unix_ns);
        object.end();
        let out = line.as_str();
        let value: serde_json::Value = serde_json::from_str(out).unwrap();
        let expected =
            DateTime::from_timestamp_nanos(unix_ns).to_rfc3339_opts(SecondsFormat::Micros, true);
        assert_eq!(value["at"], expected, "{unix_ns}");
        assert_eq!(timestamp(unix_ns), expected, "outside events too");
    }
}

#[test]
fn addresses_print_as_std_does() {
    for ip in ["127.0.0.1", "10.200.0.255", "::1", "fd00::1:2"] {
        let ip: IpAddr = ip.parse().unwrap();
        let mut line = Line::default();
        let mut object = Object::new(&mut line, "t");
        object.ip(key!("ip"), ip);
        object.end();
        let out = line.as_str();
        assert!(out.contains(&format!("\"ip\":\"{ip}\"")), "{out}");
    }
}

fn process() -> Process {
    Process {
        pid: 42,
        comm: Comm::from_kernel(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
        cgroup: 0,
    }
}

/// A record of each kind that makes an event, with what its event is written with.
pub(crate) struct Sample {
    pub record: Record,
    pub anomalies: Vec<&'static str>,
    pub meta: Option<Meta>,
}

impl Sample {
    /// Its JSON event, appended to `out`.
    pub(crate) fn write_json(&self, out: &mut Line) {
        let meta = self.meta.as_ref();
        match &self.record {
            Record::Connection(record) => connection(out, record, &self.anomalies, meta, &Epoch),
            Record::Exchange(record) => exchange(out, record, meta, &Epoch),
            Record::Anomaly(record) => anomaly(out, record, meta, &Epoch),
            Record::Dns(record) => dns(out, record, &Epoch),
            Record::Tls(record) => tls(out, record, &Epoch),
            Record::Opened(_) | Record::Unstuck(..) => {}
        }
    }
}

/// Every event type (a connection with every field set, and one with each unset): the events
/// pinned below, and what OTLP's attributes are checked against (`otlp::attributes`).
pub(crate) fn samples() -> Vec<Sample> {
    use crate::{
        metadata::PodName,
        model::{
            AnomalyRecord, Close, CloseKind, CloseOriginator, ConnectionRecord, Diagnosis,
            DiagnosisParts, DnsLink, ExchangeClass, ExchangeRecord, ExchangeSpan, PartialReason,
            Side, Stuck, StuckSet, TcpCounters, TimelineSpans, TlsLink,
        },
    };

    const MS: u64 = 1_000_000;
    let meta = Meta {
        cgroup: Arc::from("/kubepods/pod1/abc"),
        container_id: Some(Arc::from("abc")),
        pod_uid: Some(Arc::from("1")),
        pod: Some(PodName {
            namespace: Arc::from("shop"),
            name: Arc::from("web-0"),
        }),
    };
    let addrs = Addrs::new(
        "10.0.0.1:40000".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let mut spans = TimelineSpans::default();
    spans.dns = Some(DnsLink {
        host: Arc::from("api.test"),
        start_ns: 0,
        duration_ns: MS,
    });
    spans.tls = Some(TlsLink {
        start_ns: 3 * MS,
        duration_ns: 2 * MS,
        ok: Some(false),
        calls: 2,
    });
    spans.push_exchange(
        2 * MS,
        &ExchangeSpan {
            seq: 1,
            start_ns: 6 * MS,
            duration_ns: 1_500_000,
        },
    );
    let mut stuck = StuckSet::default();
    stuck.insert(Stuck::Idle);
    stuck.insert(Stuck::SynSent);
    let mut record = ConnectionRecord {
        id: 7,
        role: Role::Client,
        partial: Some(PartialReason::AlreadyOpen),
        addrs,
        process: Some(process()),
        start_ns: 2 * MS,
        established_ns: Some(2 * MS + 70_000),
        connect_ns: Some(70_000),
        connect_failure: None,
        lifetime_ns: 1_000_000_123,
        exchanges: 2,
        bytes_sent: 100,
        bytes_received: 2_000,
        retransmits: 1,
        close: Some(Close {
            at_ns: 2 * MS + 1_000_000_123,
            originator: CloseOriginator::Server,
            closed_by: Some(Side::Peer),
            kind: CloseKind::Rst,
            rst: Some(Side::Peer),
            final_state: 1,
            teardown_ns: Some(12_345),
            close_wait_ns: Some(0),
            close_wait_unclosed: true,
            errno: 104,
        }),
        tcp: Some(TcpCounters {
            rtt_ns: Some(31_000),
            rtt_var_ns: None,
            total_retrans: 1,
            bytes_acked: 101,
            bytes_received: 2_000,
        }),
        max_response_begin_ns: Some(MS),
        max_idle_ns: None,
        stuck,
        stuck_at_end: Some((Stuck::Idle, 5)),
        spans: Some(Box::new(spans)),
        last_exchange: Some(ExchangeSpan {
            seq: 2,
            start_ns: 9 * MS,
            duration_ns: 3 * MS,
        }),
        diag: DiagnosisParts {
            syn_retransmits: Some(2),
            busy_ns: Some(3_016_000_000),
            rwnd_limited_ns: Some(3_000_000_000),
            sndbuf_limited_ns: Some(0),
            rto_count: Some(4),
            accept_wait_ns: Some(1_500_000_000),
            packet_drops: 3,
            drop_reason: Some(12),
            zero_window_probes: None,
        }
        .into(),
    };
    let exchange_record = ExchangeRecord {
        conn_id: 7,
        role: Role::Server,
        addrs,
        process: None,
        seq: 2,
        class: ExchangeClass::Last,
        start_ns: 9 * MS,
        connect_ns: None,
        idle_before_ns: Some(0),
        request_ns: Some(1),
        response_begin_ns: Some(20_000),
        response_end_ns: Some(300_000_000),
        response_ns: Some(300_020_000),
        idle_after_ns: Some(4_000_000_000),
        session_ns: 5_000_000_000,
        request_bytes: 10,
        response_bytes: 20,
        close_originator: Some(CloseOriginator::Client),
        folded: false,
    };
    let anomaly_record = AnomalyRecord {
        conn_id: 7,
        stuck: Stuck::CloseWait,
        role: Role::Unknown,
        addrs,
        process: Some(process()),
        state: 8,
        since_ns: MS,
        at_ns: 31 * MS,
        threshold_ns: 30 * MS,
    };
    let mut addresses = Resolved::default();
    addresses.push("192.0.2.1".parse().unwrap());
    addresses.more = true;
    let dns_record = DnsRecord {
        process: process(),
        host: Arc::from("a\"b.test"),
        host_truncated: true,
        start_ns: 0,
        duration_ns: 4_000_000_001,
        code: -2,
        addrs: addresses,
    };
    let tls_record = TlsRecord {
        conn_id: None,
        role: Role::Unknown,
        addrs: None,
        process: None,
        start_ns: 0,
        duration_ns: 999,
        ok: false,
        calls: 3,
        after_close: true,
    };
    let full = record.clone();
    record.spans = None;
    record.close = None;
    record.tcp = None;
    record.partial = None;
    record.process = None;
    record.stuck = StuckSet::default();
    record.diag = Diagnosis::default();
    let listener = AnomalyRecord {
        conn_id: 0,
        stuck: Stuck::AcceptQueueFull,
        role: Role::Server,
        addrs: Addrs::new(
            "0.0.0.0:8080".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
        ),
        state: 10,
        ..anomaly_record.clone()
    };
    let sample = |record, anomalies: &[&'static str], meta: Option<&Meta>| Sample {
        record,
        anomalies: anomalies.to_vec(),
        meta: meta.cloned(),
    };
    vec![
        sample(Record::Connection(full), &["reset", "stuck"], Some(&meta)),
        sample(Record::Connection(record), &[], None),
        sample(Record::Exchange(exchange_record), &[], Some(&meta)),
        sample(Record::Anomaly(anomaly_record), &[], None),
        sample(Record::Anomaly(listener), &[], None),
        sample(Record::Dns(dns_record), &[], None),
        sample(Record::Tls(tls_record), &[], None),
    ]
}

/// The bytes of every event type, pinned: a change here is a change of the JSON schema
/// (bump `SCHEMA_VERSION` if it is incompatible).
#[test]
fn every_event_is_pinned_byte_for_byte() {
    use crate::{
        app::daemon::Stats,
        export::output::OutputTotals,
        kernel::{
            libcalls::LibcallStats,
            reader::{KernelStats, ReaderStats},
        },
        tracker::TrackerStats,
    };

    let stats = Stats {
        reader: ReaderStats {
            events: [1, 2, 3, 4, 5, 6, 7],
            undecodable: 8,
            spills_read: 31,
            spills_evicted: 32,
            spills_unseen: [1, 2, 3],
            idle_waits: 36,
        },
        kernel: KernelStats {
            ringbuf_full: 9,
            table_insert_failed: 10,
            adopted: 11,
            tls_untracked: 12,
            connections_lost: [22, 23, 24],
            closes_lost: [25, 26, 27],
            seeded: 30,
            closes_spilled: 33,
            states_skipped: 34,
        },
        tracker: TrackerStats {
            unmatched: 13,
            lost: 14,
            closes_unseen: 35,
            dns_evicted: 15,
        },
        libcalls: LibcallStats {
            libraries: [16, 17],
            skipped: 18,
            tls_abandoned: 19,
        },
        output: OutputTotals {
            events_dropped: 20,
            write_errors: 21,
        },
    };

    let mut out = Line::default();
    for sample in samples() {
        sample.write_json(&mut out);
    }
    out.push_str(&stats.to_json_line());
    let mut line = Line::default();
    events::stats(
        &mut line,
        &stats.reader,
        &stats.kernel,
        &stats.tracker,
        &stats.libcalls,
        &stats.output,
    );
    assert_eq!(line.as_str(), stats.to_json_line());
    let expected = concat!(
        r#"{"type":"connection","schema_version":1,"id":7,"time":"1970-01-01T00:00:01.002000Z","start":"1970-01-01T00:00:00.002000Z","role":"client","partial":true,"partial_reason":"already_open","local_ip":"10.0.0.1","local_port":40000,"remote_ip":"2001:db8::1","remote_port":443,"pid":42,"comm":"curl","cgroup":"/kubepods/pod1/abc","container_id":"abc","pod_uid":"1","namespace":"shop","pod":"web-0","connect_s":0.00007,"connect_failure":null,"dns_host":"api.test","dns_s":0.001,"tls_handshake_s":0.002,"tls_ok":false,"lifetime_s":1.000000123,"exchanges":2,"bytes_sent":100,"bytes_received":2000,"retransmits":1,"rtt_s":0.000031,"rtt_var_s":null,"tcp_total_retrans":1,"tcp_bytes_acked":101,"tcp_bytes_received":2000,"syn_retransmits":2,"rto_count":4,"busy_s":3.016,"rwnd_limited_s":3,"sndbuf_limited_s":0,"zero_window_probes":null,"accept_wait_s":1.5,"packet_drops":3,"drop_reason":"reason_12","open":false,"close_originator":"server","closed_by":"peer","close_kind":"rst","rst":"peer","final_state":"ESTABLISHED","teardown_s":0.000012345,"close_wait_s":0,"close_wait_unclosed":true,"error":"ECONNRESET","stuck":["syn_sent","idle"],"anomalies":["reset","stuck"],"phases":[{"name":"dns","start":"1970-01-01T00:00:00.000000Z","duration_s":0.001},{"name":"connect","start":"1970-01-01T00:00:00.002000Z","duration_s":0.00007},{"name":"tls","start":"1970-01-01T00:00:00.003000Z","duration_s":0.002},{"name":"exchange","start":"1970-01-01T00:00:00.006000Z","duration_s":0.0015,"seq":1},{"name":"exchange","start":"1970-01-01T00:00:00.009000Z","duration_s":0.003,"seq":2},{"name":"close","start":"1970-01-01T00:00:01.001987Z","duration_s":0.000012345}],"phases_omitted":0}"#,
        "\n",
        r#"{"type":"connection","schema_version":1,"id":7,"time":"1970-01-01T00:00:01.002000Z","start":"1970-01-01T00:00:00.002000Z","role":"client","partial":false,"partial_reason":null,"local_ip":"10.0.0.1","local_port":40000,"remote_ip":"2001:db8::1","remote_port":443,"pid":null,"comm":null,"cgroup":null,"container_id":null,"pod_uid":null,"namespace":null,"pod":null,"connect_s":0.00007,"connect_failure":null,"dns_host":null,"dns_s":null,"tls_handshake_s":null,"tls_ok":null,"lifetime_s":1.000000123,"exchanges":2,"bytes_sent":100,"bytes_received":2000,"retransmits":1,"rtt_s":null,"rtt_var_s":null,"tcp_total_retrans":null,"tcp_bytes_acked":null,"tcp_bytes_received":null,"syn_retransmits":null,"rto_count":null,"busy_s":null,"rwnd_limited_s":null,"sndbuf_limited_s":null,"zero_window_probes":null,"accept_wait_s":null,"packet_drops":0,"drop_reason":null,"open":true,"close_originator":null,"closed_by":null,"close_kind":null,"rst":null,"final_state":null,"teardown_s":null,"close_wait_s":null,"close_wait_unclosed":false,"error":null,"stuck":[],"anomalies":[],"phases":[{"name":"connect","start":"1970-01-01T00:00:00.002000Z","duration_s":0.00007},{"name":"exchange","start":"1970-01-01T00:00:00.009000Z","duration_s":0.003,"seq":2}],"phases_omitted":0}"#,
        "\n",
        r#"{"type":"exchange","schema_version":1,"conn_id":7,"time":"1970-01-01T00:00:00.009000Z","role":"server","client_ip":"2001:db8::1","client_port":443,"server_ip":"10.0.0.1","server_port":40000,"pid":null,"comm":null,"cgroup":"/kubepods/pod1/abc","container_id":"abc","pod_uid":"1","namespace":"shop","pod":"web-0","seq":2,"class":"last","connect_s":null,"idle_before_s":0,"request_s":0.000000001,"response_begin_s":0.00002,"response_end_s":0.3,"response_s":0.30002,"idle_after_s":4,"session_s":5,"request_bytes":10,"response_bytes":20,"close_originator":"client"}"#,
        "\n",
        r#"{"type":"anomaly","schema_version":1,"conn_id":7,"time":"1970-01-01T00:00:00.031000Z","phase":"close_wait","state":"CLOSE_WAIT","since":"1970-01-01T00:00:00.001000Z","age_s":0.03,"threshold_s":0.03,"role":"unknown","local_ip":"10.0.0.1","local_port":40000,"remote_ip":"2001:db8::1","remote_port":443,"pid":42,"comm":"curl","cgroup":null,"container_id":null,"pod_uid":null,"namespace":null,"pod":null,"hint":"CLOSE_WAIT leak: the peer closed and the application never called close(); fix the code path that drops the socket"}"#,
        "\n",
        r#"{"type":"anomaly","schema_version":1,"conn_id":null,"time":"1970-01-01T00:00:00.031000Z","phase":"accept_queue_full","state":"LISTEN","since":"1970-01-01T00:00:00.001000Z","age_s":0.03,"threshold_s":0.03,"role":"server","local_ip":"0.0.0.0","local_port":8080,"remote_ip":null,"remote_port":null,"pid":42,"comm":"curl","cgroup":null,"container_id":null,"pod_uid":null,"namespace":null,"pod":null,"hint":"listener not accepting: its accept queue stayed full, so the kernel drops new connections and SYNs; the application stopped calling accept() (hung, blocked or overloaded); check the listening process, raise its accept rate or the listen() backlog"}"#,
        "\n",
        r#"{"type":"dns","schema_version":1,"time":"1970-01-01T00:00:04.000000Z","start":"1970-01-01T00:00:00.000000Z","pid":42,"comm":"curl","host":"a\"b.test","host_truncated":true,"duration_s":4.000000001,"result":"permanent","error":"EAI_NONAME","addresses":["192.0.2.1"],"addresses_truncated":true}"#,
        "\n",
        r#"{"type":"tls","schema_version":1,"conn_id":null,"time":"1970-01-01T00:00:00.000000Z","start":"1970-01-01T00:00:00.000000Z","role":"unknown","local_ip":null,"local_port":null,"remote_ip":null,"remote_port":null,"pid":null,"comm":null,"duration_s":0.000000999,"ok":false,"calls":3}"#,
        "\n",
        r#"{"type":"stats","schema_version":1,"events_received":28,"events_undecodable":8,"events_lost":9,"sockets_untracked":10,"sockets_adopted":11,"sockets_seeded":30,"sockets_evicted":14,"closes_unseen":35,"unmatched_events":13,"dns_cache_evicted":15,"tls_untracked":12,"tls_abandoned":19,"phase_libraries_skipped":18,"output_events_dropped":20,"output_write_errors":21,"connections_lost_client":23,"connections_lost_server":25,"connections_lost_unknown":27,"close_events_lost":78,"close_events_spilled":33,"close_events_spill_evicted":32,"state_events_skipped":34}"#,
        "\n",
    );
    for (line, expected) in out.as_str().lines().zip(expected.lines()) {
        assert_eq!(line, expected);
    }
    assert_eq!(out.as_str(), expected);
}

#[test]
fn metadata_fields_are_null_when_unknown() {
    use std::sync::Arc;

    use crate::metadata::PodName;
    let mut line = Line::default();
    let mut object = Object::new(&mut line, "t");
    object.meta(None);
    object.end();
    let out = line.as_str();
    let value: serde_json::Value = serde_json::from_str(out).unwrap();
    for key in ["cgroup", "container_id", "pod_uid", "namespace", "pod"] {
        assert!(value[key].is_null(), "{key}: {out}");
    }
    let meta = Meta {
        cgroup: Arc::from("/kubepods/pod1/abc"),
        container_id: Some(Arc::from("abc")),
        pod_uid: Some(Arc::from("1")),
        pod: Some(PodName {
            namespace: Arc::from("shop"),
            name: Arc::from("web-0"),
        }),
    };
    let mut line = Line::default();
    let mut object = Object::new(&mut line, "t");
    object.meta(Some(&meta));
    object.end();
    let out = line.as_str();
    assert!(
        out.contains(r#""cgroup":"/kubepods/pod1/abc","container_id":"abc","pod_uid":"1","namespace":"shop","pod":"web-0""#),
        "{out}"
    );
}

#[test]
fn dns_events() {
    let mut addrs = Resolved::default();
    addrs.push("127.0.0.1".parse().unwrap());
    addrs.push("::1".parse().unwrap());
    let mut record = DnsRecord {
        process: process(),
        host: Arc::from("localhost"),
        host_truncated: false,
        start_ns: 1_000_000_000,
        duration_ns: 250_000,
        code: 0,
        addrs,
    };
    let mut out = Line::default();
    dns(&mut out, &record, &Epoch);
    let value: Value = serde_json::from_str(out.as_str()).unwrap();
    assert_eq!(value["type"], "dns");
    assert_eq!(value["host"], "localhost");
    assert_eq!(value["duration_s"], 0.00025);
    assert_eq!(value["result"], "ok");
    assert_eq!(value["error"], Value::Null);
    assert_eq!(value["addresses"], serde_json::json!(["127.0.0.1", "::1"]));
    assert_eq!(value["start"], "1970-01-01T00:00:01.000000Z");

    record.code = -3;
    record.addrs = Resolved::default();
    out.clear();
    dns(&mut out, &record, &Epoch);
    let value: Value = serde_json::from_str(out.as_str()).unwrap();
    assert_eq!(value["result"], "transient");
    assert_eq!(value["error"], "EAI_AGAIN");
    assert_eq!(value["addresses"], serde_json::json!([]));
}

#[test]
fn tls_events() {
    let mut record = TlsRecord {
        conn_id: Some(3),
        role: Role::Client,
        addrs: Some(Addrs::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        )),
        process: Some(process()),
        start_ns: 5,
        duration_ns: 1_500_000,
        ok: false,
        calls: 2,
        after_close: false,
    };
    let mut out = Line::default();
    tls(&mut out, &record, &Epoch);
    let value: Value = serde_json::from_str(out.as_str()).unwrap();
    assert_eq!(value["conn_id"], 3);
    assert_eq!(value["remote_port"], 443);
    assert_eq!(value["ok"], false);
    assert_eq!(value["duration_s"], 0.0015);
    assert_eq!(value["calls"], 2);
    record.conn_id = None;
    record.addrs = None;
    out.clear();
    tls(&mut out, &record, &Epoch);
    let value: Value = serde_json::from_str(out.as_str()).unwrap();
    assert_eq!(value["conn_id"], Value::Null);
    assert_eq!(value["local_ip"], Value::Null);
}
