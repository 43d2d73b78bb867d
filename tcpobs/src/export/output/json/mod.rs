//! NDJSON events: one object per line, each with `type` and `schema_version`.
//!
//! Written by hand rather than through serde: the field set is fixed, keys need no escaping,
//! and durations print as plain decimal seconds (`0.00007`, not `7e-5`). The daemon writes
//! two `connection` events per loopback connection, so this is its hottest code: the line is
//! built in bytes (no UTF-8 encoding of each character pushed), the field writers inline so
//! that a key is copied as a constant, and fixed-width numbers (a timestamp's microseconds, a
//! duration's fraction) are formatted in place.

pub mod events;

use std::{io::Write as _, net::IpAddr};

use chrono::{DateTime, Utc};

use crate::{
    metadata::Meta,
    model::{AnomalyRecord, ConnectionRecord, ExchangeRecord, phases::Timeline, state_name},
};

/// Bumped on any incompatible change to the JSON events.
pub const SCHEMA_VERSION: u32 = 1;

/// A buffer for JSON lines, reused from event to event. It remembers the last timestamp's
/// second (Unix) formatted as `YYYY-MM-DDTHH:MM:SS`: consecutive events, and the timestamps
/// within one (a connection's start, end and phases), mostly share their second.
pub struct Line {
    bytes: Vec<u8>,
    second: i64,
    second_text: [u8; 19],
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: Vec::new(),
            second: i64::MIN,
            second_text: [b'0'; 19],
        }
    }
}

impl Line {
    /// The lines written since the last `clear`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The same, as text (every writer puts valid UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Appends `text` as it is.
    pub fn push_str(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// Copies `value`'s `YYYY-MM-DDTHH:MM:SS` (UTC, Unix seconds) into the line.
    fn put_second(&mut self, secs: i64) {
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
        self.bytes.extend_from_slice(&self.second_text);
    }
}

/// Builds one JSON object on a line.
pub struct Object<'a> {
    line: &'a mut Line,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Starts an object of this `type`.
    pub fn new(line: &'a mut Line, kind: &str) -> Self {
        line.bytes.push(b'{');
        let mut object = Self { line, empty: true };
        object.str("type", kind);
        object.u64("schema_version", u64::from(SCHEMA_VERSION));
        object
    }

    fn out(&mut self) -> &mut Vec<u8> {
        &mut self.line.bytes
    }

    /// Writes the fields `fill` adds as an object inside this one's current value.
    fn nested(&mut self, fill: impl FnOnce(&mut Self)) {
        self.out().push(b'{');
        self.empty = true;
        fill(self);
        self.out().push(b'}');
        self.empty = false;
    }

    #[inline(always)]
    fn key(&mut self, key: &str) {
        let first = std::mem::replace(&mut self.empty, false);
        let out = self.out();
        if !first {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    }

    #[inline(always)]
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(self.out(), value);
        self
    }

    #[inline(always)]
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    pub fn ip(&mut self, key: &str, value: IpAddr) -> &mut Self {
        self.key(key);
        push_ip(self.out(), value);
        self
    }

    #[inline(always)]
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        push_u64(self.out(), value);
        self
    }

    #[inline(always)]
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u64(key, value),
            None => self.null(key),
        }
    }

    pub fn strs<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        self.key(key);
        let out = self.out();
        out.push(b'[');
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            escape_into(out, value);
        }
        out.push(b']');
        self
    }

    pub fn ips(&mut self, key: &str, values: impl IntoIterator<Item = IpAddr>) -> &mut Self {
        self.key(key);
        let out = self.out();
        out.push(b'[');
        for (index, ip) in values.into_iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            push_ip(out, ip);
        }
        out.push(b']');
        self
    }

    /// A timeline: `[{"name": ..., "start": ..., "duration_s": ...}, ...]` (exchanges also
    /// have `seq`).
    pub fn phases(&mut self, key: &str, timeline: &Timeline, clock: &impl WallClock) -> &mut Self {
        self.key(key);
        self.out().push(b'[');
        for (index, entry) in timeline.entries().iter().enumerate() {
            if index > 0 {
                self.out().push(b',');
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
        self.out().push(b']');
        self
    }

    #[inline(always)]
    pub fn opt_bool(&mut self, key: &str, value: Option<bool>) -> &mut Self {
        match value {
            Some(value) => self.bool(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.out().extend_from_slice(text);
        self
    }

    #[inline(always)]
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out().extend_from_slice(b"null");
        self
    }

    /// Nanoseconds as decimal seconds, trailing zeros trimmed.
    #[inline(always)]
    pub fn secs(&mut self, key: &str, ns: Option<u64>) -> &mut Self {
        match ns {
            Some(ns) => {
                self.key(key);
                push_secs(self.out(), ns);
                self
            }
            None => self.null(key),
        }
    }

    /// A UTC timestamp with microseconds (`2026-11-21T09:30:00.123456Z`) from Unix nanoseconds.
    #[inline(always)]
    pub fn time(&mut self, key: &str, unix_ns: i64) -> &mut Self {
        self.key(key);
        push_time(self.line, unix_ns);
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
        self.line.bytes.extend_from_slice(b"}\n");
    }
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    if value < 10 {
        out.push(b'0' + value as u8);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
}

/// `"a.b.c.d"` or `"v6"`, as `std` prints them.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// Nanoseconds as decimal seconds, trailing zeros trimmed.
fn push_secs(out: &mut Vec<u8>, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    let fraction = ns % 1_000_000_000;
    if fraction != 0 {
        let mut buffer = itoa::Buffer::new();
        let digits = fixed_width(&mut buffer, fraction, 1_000_000_000);
        let kept = digits.iter().rposition(|&digit| digit != b'0').unwrap_or(0);
        out.push(b'.');
        out.extend_from_slice(&digits[..=kept]);
    }
}

/// `"YYYY-MM-DDTHH:MM:SS.uuuuuuZ"` from Unix nanoseconds.
fn push_time(line: &mut Line, unix_ns: i64) {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) as u64 / 1_000;
    line.bytes.push(b'"');
    line.put_second(secs);
    line.bytes.push(b'.');
    let mut buffer = itoa::Buffer::new();
    line.bytes
        .extend_from_slice(fixed_width(&mut buffer, micros, 1_000_000));
    line.bytes.extend_from_slice(b"Z\"");
}

/// `value` (below `power`, a power of ten) with leading zeros to `power`'s number of zeros:
/// formats `power + value` and drops its leading `1`.
fn fixed_width(buffer: &mut itoa::Buffer, value: u64, power: u64) -> &[u8] {
    &buffer.format(power + value % power).as_bytes()[1..]
}

/// `value`'s last `digits.len()` decimal digits, zero-padded, as ASCII.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
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

fn escape_into(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
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
    out: &mut Line,
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
    out: &mut Line,
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
    out: &mut Line,
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
        let mut line = Line::default();
        let mut object = Object::new(&mut line, "test");
        object
            .secs("a", Some(70_000))
            .secs("b", Some(1_500_000_000))
            .secs("c", Some(0))
            .secs("d", None)
            .secs("g", Some(12_000_000_001))
            .str("e", "quote\" back\\ nl\n ctl\u{1}")
            .bool("f", true);
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
            object.time(&format!("t{index}"), *unix_ns);
        }
        object.end();
        let out = line.as_str();
        let value: serde_json::Value = serde_json::from_str(out).unwrap();
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
            let mut line = Line::default();
            let mut object = Object::new(&mut line, "t");
            object.time("at", unix_ns);
            object.end();
            let out = line.as_str();
            let value: serde_json::Value = serde_json::from_str(out).unwrap();
            let expected = DateTime::from_timestamp_nanos(unix_ns)
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            assert_eq!(value["at"], expected, "{unix_ns}");
        }
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
    fn addresses_print_as_std_does() {
        for ip in ["127.0.0.1", "10.200.0.255", "::1", "fd00::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut line = Line::default();
            let mut object = Object::new(&mut line, "t");
            object.ip("ip", ip);
            object.end();
            let out = line.as_str();
            assert!(out.contains(&format!("\"ip\":\"{ip}\"")), "{out}");
        }
    }
}
