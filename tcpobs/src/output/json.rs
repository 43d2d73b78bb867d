//! NDJSON events: one object per line, each with `type` and `schema_version`.
//!
//! Written by hand rather than through serde: the field set is fixed, keys need no escaping,
//! and durations print as plain decimal seconds (`0.00007`, not `7e-5`).

use std::{fmt::Write as _, net::IpAddr};

use chrono::{DateTime, Utc};

use crate::{
    meta::Meta,
    model::{AnomalyRecord, ConnectionRecord, ExchangeRecord, phases::Timeline, state_name},
};

/// Bumped on any incompatible change to the JSON events.
pub const SCHEMA_VERSION: u32 = 1;

/// Builds one JSON object on a line.
pub struct Object<'a> {
    out: &'a mut String,
    empty: bool,
    /// The last timestamp's second (Unix) and its `YYYY-MM-DDTHH:MM:SS`: the timestamps of
    /// one event (a connection's start, end and phases) mostly share their second.
    second: i64,
    second_text: [u8; 19],
}

impl<'a> Object<'a> {
    /// Starts an object of this `type`.
    pub fn new(out: &'a mut String, kind: &str) -> Self {
        out.push('{');
        let mut object = Self {
            out,
            empty: true,
            second: i64::MIN,
            second_text: [b'0'; 19],
        };
        object.str("type", kind);
        object.u64("schema_version", u64::from(SCHEMA_VERSION));
        object
    }

    /// Writes the fields `fill` adds as an object inside this one's current value.
    fn nested(&mut self, fill: impl FnOnce(&mut Self)) {
        self.out.push('{');
        self.empty = true;
        fill(self);
        self.out.push('}');
        self.empty = false;
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(self.out, value);
        self
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    pub fn ip(&mut self, key: &str, value: IpAddr) -> &mut Self {
        self.key(key);
        self.out.push('"');
        match value {
            IpAddr::V4(v4) => {
                for (index, octet) in v4.octets().into_iter().enumerate() {
                    if index > 0 {
                        self.out.push('.');
                    }
                    self.out.push_str(itoa::Buffer::new().format(octet));
                }
            }
            IpAddr::V6(v6) => {
                let _ = write!(self.out, "{v6}");
            }
        }
        self.out.push('"');
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.out.push_str(itoa::Buffer::new().format(value));
        self
    }

    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u64(key, value),
            None => self.null(key),
        }
    }

    pub fn strs<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        self.key(key);
        self.out.push('[');
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                self.out.push(',');
            }
            escape_into(self.out, value);
        }
        self.out.push(']');
        self
    }

    pub fn ips(&mut self, key: &str, values: impl IntoIterator<Item = IpAddr>) -> &mut Self {
        self.key(key);
        self.out.push('[');
        for (index, ip) in values.into_iter().enumerate() {
            if index > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "\"{ip}\"");
        }
        self.out.push(']');
        self
    }

    /// A timeline: `[{"name": ..., "start": ..., "duration_s": ...}, ...]` (exchanges also
    /// have `seq`).
    pub fn phases(&mut self, key: &str, timeline: &Timeline, clock: &impl WallClock) -> &mut Self {
        self.key(key);
        self.out.push('[');
        for (index, entry) in timeline.entries().iter().enumerate() {
            if index > 0 {
                self.out.push(',');
            }
            self.nested(|item| {
                item.str("name", entry.name)
                    .time("start", clock.unix_ns(entry.start_ns))
                    .secs("duration_s", Some(entry.duration_ns));
                if let Some(seq) = entry.seq {
                    item.u64("seq", u64::from(seq));
                }
            });
        }
        self.out.push(']');
        self
    }

    pub fn opt_bool(&mut self, key: &str, value: Option<bool>) -> &mut Self {
        match value {
            Some(value) => self.bool(key, value),
            None => self.null(key),
        }
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push_str("null");
        self
    }

    /// Nanoseconds as decimal seconds, trailing zeros trimmed.
    pub fn secs(&mut self, key: &str, ns: Option<u64>) -> &mut Self {
        let Some(ns) = ns else {
            return self.null(key);
        };
        self.key(key);
        self.out
            .push_str(itoa::Buffer::new().format(ns / 1_000_000_000));
        let mut fraction = ns % 1_000_000_000;
        if fraction != 0 {
            let mut width = 9;
            while fraction % 10 == 0 {
                fraction /= 10;
                width -= 1;
            }
            self.out.push('.');
            push_padded(self.out, fraction, width);
        }
        self
    }

    /// A UTC timestamp with microseconds (`2026-11-21T09:30:00.123456Z`) from Unix nanoseconds.
    pub fn time(&mut self, key: &str, unix_ns: i64) -> &mut Self {
        self.key(key);
        let secs = unix_ns.div_euclid(1_000_000_000);
        let micros = unix_ns.rem_euclid(1_000_000_000) as u64 / 1_000;
        if secs != self.second {
            self.second = secs;
            let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
            let of_day = secs.rem_euclid(86_400) as u64;
            let text = &mut self.second_text;
            put_digits(&mut text[0..4], year.clamp(0, 9999) as u64);
            for (at, separator, value) in [
                (4, b'-', u64::from(month)),
                (7, b'-', u64::from(day)),
                (10, b'T', of_day / 3_600),
                (13, b':', of_day / 60 % 60),
                (16, b':', of_day % 60),
            ] {
                text[at] = separator;
                put_digits(&mut text[at + 1..at + 3], value);
            }
        }
        let out = &mut *self.out;
        out.push('"');
        out.push_str(std::str::from_utf8(&self.second_text).unwrap_or("0000-00-00T00:00:00"));
        out.push('.');
        push_padded(out, micros, 6);
        out.push_str("Z\"");
        self
    }

    /// Where the process runs: `cgroup`, `container_id`, `pod_uid`, `namespace`, `pod`
    /// (`null` when unknown).
    pub fn meta(&mut self, meta: Option<&Meta>) -> &mut Self {
        self.opt_str("cgroup", meta.map(|m| &*m.cgroup))
            .opt_str("container_id", meta.and_then(|m| m.container_id.as_deref()))
            .opt_str("pod_uid", meta.and_then(|m| m.pod_uid.as_deref()))
            .opt_str("namespace", meta.and_then(Meta::namespace))
            .opt_str("pod", meta.and_then(Meta::pod_name))
    }

    /// Closes the object and the line.
    pub fn end(self) {
        self.out.push_str("}\n");
    }
}

/// `value`'s last `digits.len()` decimal digits, zero-padded, as ASCII.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `value` in decimal, zero-padded on the left to `width` digits.
fn push_padded(out: &mut String, value: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn escape_into(out: &mut String, value: &str) {
    out.push('"');
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(value);
        out.push('"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Converts the kernel's monotonic nanoseconds to wall-clock time.
pub trait WallClock {
    /// Nanoseconds since the Unix epoch.
    fn unix_ns(&self, monotonic_ns: u64) -> i64;

    fn wall(&self, monotonic_ns: u64) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.unix_ns(monotonic_ns))
    }
}

/// A `connection` event; `anomalies` says why it is one (see `select::anomalies_of`), `meta`
/// where its process runs.
pub fn connection(
    out: &mut String,
    record: &ConnectionRecord,
    anomalies: &[&str],
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    let mut object = Object::new(out, "connection");
    let end_ns = record.start_ns + record.lifetime_ns;
    object
        .u64("id", record.id)
        .time("time", clock.unix_ns(end_ns))
        .time("start", clock.unix_ns(record.start_ns))
        .str("role", record.role.as_str())
        .bool("partial", record.partial.is_some())
        .opt_str(
            "partial_reason",
            record.partial.map(|reason| reason.as_str()),
        )
        .ip("local_ip", record.addrs.local().ip())
        .u64("local_port", u64::from(record.addrs.local().port()))
        .ip("remote_ip", record.addrs.remote().ip())
        .u64("remote_port", u64::from(record.addrs.remote().port()))
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .meta(meta)
        .secs("connect_s", record.connect_ns)
        .opt_str(
            "connect_failure",
            record.connect_failure.map(|f| f.as_str()),
        )
        .opt_str("dns_host", record.dns().map(|dns| &*dns.host))
        .secs("dns_s", record.dns().map(|dns| dns.duration_ns))
        .secs("tls_handshake_s", record.tls().map(|tls| tls.duration_ns))
        .opt_bool("tls_ok", record.tls().and_then(|tls| tls.ok))
        .secs("lifetime_s", Some(record.lifetime_ns))
        .u64("exchanges", u64::from(record.exchanges))
        .u64("bytes_sent", record.bytes_sent)
        .u64("bytes_received", record.bytes_received)
        .u64("retransmits", u64::from(record.retransmits));
    let tcp = record.tcp.as_ref();
    object
        .secs("rtt_s", tcp.and_then(|t| t.rtt_ns))
        .secs("rtt_var_s", tcp.and_then(|t| t.rtt_var_ns))
        .opt_u64("tcp_total_retrans", tcp.map(|t| u64::from(t.total_retrans)))
        .opt_u64("tcp_bytes_acked", tcp.map(|t| t.bytes_acked))
        .opt_u64("tcp_bytes_received", tcp.map(|t| t.bytes_received));
    let close = record.close.as_ref();
    object
        .bool("open", close.is_none())
        .opt_str("close_originator", close.map(|c| c.originator.as_str()))
        .opt_str(
            "closed_by",
            close.and_then(|c| c.closed_by).map(|s| s.as_str()),
        )
        .opt_str("close_kind", close.map(|c| c.kind.as_str()))
        .opt_str("rst", close.and_then(|c| c.rst).map(|s| s.as_str()))
        .opt_str("final_state", close.map(|c| state_name(c.final_state)))
        .secs("teardown_s", close.and_then(|c| c.teardown_ns))
        .secs("close_wait_s", close.and_then(|c| c.close_wait_ns))
        .bool(
            "close_wait_unclosed",
            close.is_some_and(|c| c.close_wait_unclosed),
        )
        .opt_str(
            "error",
            close.and_then(|c| crate::model::errno_name(c.errno)),
        )
        .strs("stuck", record.stuck.iter().map(|phase| phase.as_str()))
        .strs("anomalies", anomalies.iter().copied())
        .phases("phases", &record.timeline(), clock)
        .u64("phases_omitted", u64::from(record.phases_omitted()));
    object.end();
}

/// An `anomaly` event: a live connection stuck in a phase.
pub fn anomaly(
    out: &mut String,
    record: &AnomalyRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    let mut object = Object::new(out, "anomaly");
    object
        .u64("conn_id", record.conn_id)
        .time("time", clock.unix_ns(record.at_ns))
        .str("phase", record.phase.as_str())
        .str("state", state_name(record.state))
        .time("since", clock.unix_ns(record.since_ns))
        .secs("age_s", Some(record.at_ns.saturating_sub(record.since_ns)))
        .secs("threshold_s", Some(record.threshold_ns))
        .str("role", record.role.as_str())
        .ip("local_ip", record.addrs.local().ip())
        .u64("local_port", u64::from(record.addrs.local().port()))
        .ip("remote_ip", record.addrs.remote().ip())
        .u64("remote_port", u64::from(record.addrs.remote().port()))
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .meta(meta)
        .str("hint", record.phase.hint());
    object.end();
}

/// An `exchange` event.
pub fn exchange(
    out: &mut String,
    record: &ExchangeRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    let (client, server) = record.addrs.client_server(record.role);
    let mut object = Object::new(out, "exchange");
    object
        .u64("conn_id", record.conn_id)
        .time("time", clock.unix_ns(record.start_ns))
        .str("role", record.role.as_str())
        .ip("client_ip", client.ip())
        .u64("client_port", u64::from(client.port()))
        .ip("server_ip", server.ip())
        .u64("server_port", u64::from(server.port()))
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .meta(meta)
        .u64("seq", u64::from(record.seq))
        .str("class", record.class.as_str())
        .secs("connect_s", record.connect_ns)
        .secs("idle_before_s", record.idle_before_ns)
        .secs("request_s", record.request_ns)
        .secs("response_begin_s", record.response_begin_ns)
        .secs("response_end_s", record.response_end_ns)
        .secs("response_s", record.response_ns)
        .secs("idle_after_s", record.idle_after_ns)
        .secs("session_s", Some(record.session_ns))
        .u64("request_bytes", record.request_bytes)
        .u64("response_bytes", record.response_bytes)
        .opt_str(
            "close_originator",
            record.close_originator.map(|o| o.as_str()),
        );
    object.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_valid_json_with_plain_decimals() {
        let mut out = String::new();
        let mut object = Object::new(&mut out, "test");
        object
            .secs("a", Some(70_000))
            .secs("b", Some(1_500_000_000))
            .secs("c", Some(0))
            .secs("d", None)
            .secs("g", Some(12_000_000_001))
            .str("e", "quote\" back\\ nl\n ctl\u{1}")
            .bool("f", true);
        object.end();
        assert!(out.ends_with("}\n"));
        assert!(
            out.contains("\"a\":0.00007,\"b\":1.5,\"c\":0,\"d\":null"),
            "{out}"
        );
        assert!(out.contains("\"g\":12.000000001"), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["type"], "test");
        assert_eq!(value["schema_version"], SCHEMA_VERSION);
        assert_eq!(value["e"], "quote\" back\\ nl\n ctl\u{1}");
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
        let mut out = String::new();
        let mut object = Object::new(&mut out, "t");
        for (index, unix_ns) in stamps.iter().enumerate() {
            object.time(&format!("t{index}"), *unix_ns);
        }
        object.end();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        for (index, unix_ns) in stamps.iter().enumerate() {
            let expected = DateTime::from_timestamp_nanos(*unix_ns)
                .to_rfc3339_opts(SecondsFormat::Micros, true);
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
            let mut out = String::new();
            let mut object = Object::new(&mut out, "t");
            object.time("at", unix_ns);
            object.end();
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            let expected = DateTime::from_timestamp_nanos(unix_ns)
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            assert_eq!(value["at"], expected, "{unix_ns}");
        }
    }

    #[test]
    fn metadata_fields_are_null_when_unknown() {
        use std::sync::Arc;

        use crate::meta::PodName;
        let mut out = String::new();
        let mut object = Object::new(&mut out, "t");
        object.meta(None);
        object.end();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
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
        let mut out = String::new();
        let mut object = Object::new(&mut out, "t");
        object.meta(Some(&meta));
        object.end();
        assert!(
            out.contains(r#""cgroup":"/kubepods/pod1/abc","container_id":"abc","pod_uid":"1","namespace":"shop","pod":"web-0""#),
            "{out}"
        );
    }

    #[test]
    fn addresses_print_as_std_does() {
        for ip in ["127.0.0.1", "10.200.0.255", "::1", "fd00::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            let mut object = Object::new(&mut out, "t");
            object.ip("ip", ip);
            object.end();
            assert!(out.contains(&format!("\"ip\":\"{ip}\"")), "{out}");
        }
    }
}
