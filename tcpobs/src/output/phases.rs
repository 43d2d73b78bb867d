//! `dns` and `tls` JSON events: one per name resolution, one per TLS handshake.

use super::json::{Line, Object, WallClock};
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
