//! `dns` and `tls` JSON events: one per name resolution, one per TLS handshake.

use super::{Line, Object, WallClock};
use crate::model::{DnsRecord, TlsRecord, phases::eai_name};

/// A `dns` event: one `getaddrinfo` call.
pub fn dns(out: &mut Line, record: &DnsRecord, clock: &impl WallClock) {
    let mut object = Object::new(out, "dns");
    object
        .time("time", clock.unix_ns(record.start_ns + record.duration_ns))
        .time("start", clock.unix_ns(record.start_ns))
        .u64("pid", u64::from(record.process.pid))
        .str("comm", record.process.comm.as_str())
        .str("host", &record.host)
        .bool("host_truncated", record.host_truncated)
        .secs("duration_s", Some(record.duration_ns))
        .str("result", record.result())
        .opt_str("error", (record.code != 0).then(|| eai_name(record.code)))
        .ips("addresses", record.addrs.as_slice().iter().copied())
        .bool("addresses_truncated", record.addrs.more);
    object.end();
}

/// A `tls` event: one handshake, once its outcome is known.
pub fn tls(out: &mut Line, record: &TlsRecord, clock: &impl WallClock) {
    let mut object = Object::new(out, "tls");
    object
        .opt_u64("conn_id", record.conn_id)
        .time("time", clock.unix_ns(record.start_ns + record.duration_ns))
        .time("start", clock.unix_ns(record.start_ns))
        .str("role", record.role.as_str());
    match record.addrs {
        Some(addrs) => object
            .ip("local_ip", addrs.local().ip())
            .u64("local_port", u64::from(addrs.local().port()))
            .ip("remote_ip", addrs.remote().ip())
            .u64("remote_port", u64::from(addrs.remote().port())),
        None => object
            .null("local_ip")
            .null("local_port")
            .null("remote_ip")
            .null("remote_port"),
    };
    object
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .secs("duration_s", Some(record.duration_ns))
        .bool("ok", record.ok)
        .u64("calls", u64::from(record.calls));
    object.end();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::model::{Addrs, Comm, Process, Role, phases::Resolved};

    struct Epoch;

    impl WallClock for Epoch {
        fn unix_ns(&self, monotonic_ns: u64) -> i64 {
            monotonic_ns as i64
        }
    }

    fn process() -> Process {
        Process {
            pid: 42,
            comm: Comm::from_kernel(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
            cgroup: 0,
        }
    }

    /// The bytes of every event type, pinned: a change here is a change of the JSON schema
    /// (bump `SCHEMA_VERSION` if it is incompatible).
    #[test]
    fn every_event_is_pinned_byte_for_byte() {
        use crate::{
            app::daemon::Stats,
            export::output::json::{anomaly, connection, exchange},
            kernel::{
                libcalls::LibcallStats,
                reader::{KernelStats, ReaderStats},
            },
            metadata::{Meta, PodName},
            model::{
                AnomalyRecord, Close, CloseKind, CloseOriginator, ConnPhases, ConnectionRecord,
                DnsLink, ExchangeClass, ExchangeRecord, ExchangeSpan, PartialReason, Phase,
                PhaseSet, Side, TcpCounters, TlsLink,
            },
            tracker::TrackerStats,
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
        let mut phases = ConnPhases::default();
        phases.dns = Some(DnsLink {
            host: Arc::from("api.test"),
            start_ns: 0,
            duration_ns: MS,
        });
        phases.tls = Some(TlsLink {
            start_ns: 3 * MS,
            duration_ns: 2 * MS,
            ok: Some(false),
            calls: 2,
        });
        phases.push_exchange(
            2 * MS,
            &ExchangeSpan {
                seq: 1,
                start_ns: 6 * MS,
                duration_ns: 1_500_000,
            },
        );
        let mut stuck = PhaseSet::default();
        stuck.insert(Phase::Idle);
        stuck.insert(Phase::SynSent);
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
            stuck_at_end: Some((Phase::Idle, 5)),
            phases: Some(Box::new(phases)),
            last_exchange: Some(ExchangeSpan {
                seq: 2,
                start_ns: 9 * MS,
                duration_ns: 3 * MS,
            }),
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
        };
        let anomaly_record = AnomalyRecord {
            conn_id: 7,
            phase: Phase::CloseWait,
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
        let stats = Stats {
            reader: ReaderStats {
                events: [1, 2, 3, 4, 5, 6, 7],
                undecodable: 8,
            },
            kernel: KernelStats {
                ringbuf_full: 9,
                table_insert_failed: 10,
                adopted: 11,
                tls_untracked: 12,
            },
            tracker: TrackerStats {
                unmatched: 13,
                lost: 14,
                dns_evicted: 15,
            },
            libcalls: LibcallStats {
                libraries: [16, 17],
                skipped: 18,
                tls_abandoned: 19,
            },
        };

        let mut out = Line::default();
        connection(&mut out, &record, &["reset", "stuck"], Some(&meta), &Epoch);
        record.phases = None;
        record.close = None;
        record.tcp = None;
        record.partial = None;
        record.process = None;
        record.stuck = PhaseSet::default();
        connection(&mut out, &record, &[], None, &Epoch);
        exchange(&mut out, &exchange_record, Some(&meta), &Epoch);
        anomaly(&mut out, &anomaly_record, None, &Epoch);
        dns(&mut out, &dns_record, &Epoch);
        tls(&mut out, &tls_record, &Epoch);
        out.push_str(&stats.to_json_line());
        let expected = concat!(
            r#"{"type":"connection","schema_version":1,"id":7,"time":"1970-01-01T00:00:01.002000Z","start":"1970-01-01T00:00:00.002000Z","role":"client","partial":true,"partial_reason":"already_open","local_ip":"10.0.0.1","local_port":40000,"remote_ip":"2001:db8::1","remote_port":443,"pid":42,"comm":"curl","cgroup":"/kubepods/pod1/abc","container_id":"abc","pod_uid":"1","namespace":"shop","pod":"web-0","connect_s":0.00007,"connect_failure":null,"dns_host":"api.test","dns_s":0.001,"tls_handshake_s":0.002,"tls_ok":false,"lifetime_s":1.000000123,"exchanges":2,"bytes_sent":100,"bytes_received":2000,"retransmits":1,"rtt_s":0.000031,"rtt_var_s":null,"tcp_total_retrans":1,"tcp_bytes_acked":101,"tcp_bytes_received":2000,"open":false,"close_originator":"server","closed_by":"peer","close_kind":"rst","rst":"peer","final_state":"ESTABLISHED","teardown_s":0.000012345,"close_wait_s":0,"close_wait_unclosed":true,"error":"ECONNRESET","stuck":["syn_sent","idle"],"anomalies":["reset","stuck"],"phases":[{"name":"dns","start":"1970-01-01T00:00:00.000000Z","duration_s":0.001},{"name":"connect","start":"1970-01-01T00:00:00.002000Z","duration_s":0.00007},{"name":"tls","start":"1970-01-01T00:00:00.003000Z","duration_s":0.002},{"name":"exchange","start":"1970-01-01T00:00:00.006000Z","duration_s":0.0015,"seq":1},{"name":"exchange","start":"1970-01-01T00:00:00.009000Z","duration_s":0.003,"seq":2},{"name":"close","start":"1970-01-01T00:00:01.001987Z","duration_s":0.000012345}],"phases_omitted":0}"#,
            "\n",
            r#"{"type":"connection","schema_version":1,"id":7,"time":"1970-01-01T00:00:01.002000Z","start":"1970-01-01T00:00:00.002000Z","role":"client","partial":false,"partial_reason":null,"local_ip":"10.0.0.1","local_port":40000,"remote_ip":"2001:db8::1","remote_port":443,"pid":null,"comm":null,"cgroup":null,"container_id":null,"pod_uid":null,"namespace":null,"pod":null,"connect_s":0.00007,"connect_failure":null,"dns_host":null,"dns_s":null,"tls_handshake_s":null,"tls_ok":null,"lifetime_s":1.000000123,"exchanges":2,"bytes_sent":100,"bytes_received":2000,"retransmits":1,"rtt_s":null,"rtt_var_s":null,"tcp_total_retrans":null,"tcp_bytes_acked":null,"tcp_bytes_received":null,"open":true,"close_originator":null,"closed_by":null,"close_kind":null,"rst":null,"final_state":null,"teardown_s":null,"close_wait_s":null,"close_wait_unclosed":false,"error":null,"stuck":[],"anomalies":[],"phases":[{"name":"connect","start":"1970-01-01T00:00:00.002000Z","duration_s":0.00007},{"name":"exchange","start":"1970-01-01T00:00:00.009000Z","duration_s":0.003,"seq":2}],"phases_omitted":0}"#,
            "\n",
            r#"{"type":"exchange","schema_version":1,"conn_id":7,"time":"1970-01-01T00:00:00.009000Z","role":"server","client_ip":"2001:db8::1","client_port":443,"server_ip":"10.0.0.1","server_port":40000,"pid":null,"comm":null,"cgroup":"/kubepods/pod1/abc","container_id":"abc","pod_uid":"1","namespace":"shop","pod":"web-0","seq":2,"class":"last","connect_s":null,"idle_before_s":0,"request_s":0.000000001,"response_begin_s":0.00002,"response_end_s":0.3,"response_s":0.30002,"idle_after_s":4,"session_s":5,"request_bytes":10,"response_bytes":20,"close_originator":"client"}"#,
            "\n",
            r#"{"type":"anomaly","schema_version":1,"conn_id":7,"time":"1970-01-01T00:00:00.031000Z","phase":"close_wait","state":"CLOSE_WAIT","since":"1970-01-01T00:00:00.001000Z","age_s":0.03,"threshold_s":0.03,"role":"unknown","local_ip":"10.0.0.1","local_port":40000,"remote_ip":"2001:db8::1","remote_port":443,"pid":42,"comm":"curl","cgroup":null,"container_id":null,"pod_uid":null,"namespace":null,"pod":null,"hint":"CLOSE_WAIT leak: the peer closed and the application never called close(); fix the code path that drops the socket"}"#,
            "\n",
            r#"{"type":"dns","schema_version":1,"time":"1970-01-01T00:00:04.000000Z","start":"1970-01-01T00:00:00.000000Z","pid":42,"comm":"curl","host":"a\"b.test","host_truncated":true,"duration_s":4.000000001,"result":"permanent","error":"EAI_NONAME","addresses":["192.0.2.1"],"addresses_truncated":true}"#,
            "\n",
            r#"{"type":"tls","schema_version":1,"conn_id":null,"time":"1970-01-01T00:00:00.000000Z","start":"1970-01-01T00:00:00.000000Z","role":"unknown","local_ip":null,"local_port":null,"remote_ip":null,"remote_port":null,"pid":null,"comm":null,"duration_s":0.000000999,"ok":false,"calls":3}"#,
            "\n",
            r#"{"type":"stats","schema_version":1,"events_received":28,"events_undecodable":8,"events_lost":9,"sockets_untracked":10,"sockets_adopted":11,"sockets_evicted":14,"unmatched_events":13,"dns_cache_evicted":15,"tls_untracked":12,"tls_abandoned":19,"phase_libraries_skipped":18}"#,
            "\n",
        );
        for (line, expected) in out.as_str().lines().zip(expected.lines()) {
            assert_eq!(line, expected);
        }
        assert_eq!(out.as_str(), expected);
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
}
