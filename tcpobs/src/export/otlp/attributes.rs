//! What spans and log records say about a record: its JSON event's fields as OTLP attributes
//! (the same fields, so the two outputs never drift apart: `json::events` writes both, through
//! [`Fields`]), renamed to OpenTelemetry's semantic conventions where one
//! exists and `tcpobs.<field>` otherwise; the error a connection ended with; and the trace
//! and span ids, derived from the connection id so that every record of a connection (its
//! exchanges, anomalies and handshake, logged before it closes) names the trace its close
//! will send.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use super::{
    proto::{AnyValue, KeyValue, Value},
    wire::{Scalar, Writer},
};
use crate::{
    clock::WallClock,
    export::output::json::{Fields, Key, Line, ip_text, time_text},
    model::{CloseKind, ConnectFailure, ConnectionRecord, Side, Timeline},
};

pub(crate) fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

pub(crate) fn string(value: impl Into<String>) -> Value {
    Value::String(value.into())
}

/// What a JSON event field becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AttributeKey {
    /// Nothing: the record itself carries it.
    Carried,
    /// The attribute of a semantic convention.
    Conventional(&'static str),
    /// `tcpobs.<field>`.
    Own,
}

/// What the JSON event field `field` becomes.
pub(super) fn attribute_key(field: &str) -> AttributeKey {
    AttributeKey::Conventional(match field {
        // Carried by the record itself: its event name and timestamp.
        "type" | "schema_version" | "time" => return AttributeKey::Carried,
        "id" | "conn_id" => "tcpobs.connection.id",
        "local_ip" => "network.local.address",
        "local_port" => "network.local.port",
        "remote_ip" => "network.peer.address",
        "remote_port" => "network.peer.port",
        "client_ip" => "client.address",
        "client_port" => "client.port",
        "server_ip" => "server.address",
        "server_port" => "server.port",
        // The name a client resolved to reach its peer.
        "dns_host" => "server.address",
        "pid" => "process.pid",
        "comm" => "process.executable.name",
        "container_id" => "container.id",
        "pod_uid" => "k8s.pod.uid",
        "namespace" => "k8s.namespace.name",
        "pod" => "k8s.pod.name",
        _ => return AttributeKey::Own,
    })
}

/// Writes an event's fields ([`events`](crate::export::output::json::events)) as
/// attributes: keys by [`attribute_key`], durations (`*_s`) as doubles, times as their JSON
/// text, nulls left out. Spans leave out the timeline (the child spans are) and the start
/// (the span's).
pub(crate) struct EventAttributes<'w> {
    writer: &'w mut Writer,
    /// Where times and addresses are formatted.
    text: &'w mut Line,
}

impl<'w> EventAttributes<'w> {
    pub(crate) fn new(writer: &'w mut Writer, text: &'w mut Line) -> Self {
        Self { writer, text }
    }

    /// The attribute key of field `key` (`tcpobs.<field>` is the key's own constant), and
    /// whether spans leave it out.
    #[inline(always)]
    fn key(key: Key) -> Option<(&'static str, bool)> {
        let field = key.name();
        let name = match attribute_key(field) {
            AttributeKey::Carried => return None,
            AttributeKey::Conventional(name) => name,
            AttributeKey::Own => key.attribute(),
        };
        Some((name, matches!(field, "phases" | "start")))
    }

    fn put(&mut self, key: Key, value: Scalar<'_>) -> &mut Self {
        if let Some((name, span_leaves_out)) = Self::key(key) {
            self.writer.attribute(name, value, span_leaves_out);
        }
        self
    }

    /// An attribute whose value is the text `format` writes in `text` (only if it is one).
    fn put_text(&mut self, key: Key, format: impl FnOnce(&mut Line) -> &str) -> &mut Self {
        if let Some((name, span_leaves_out)) = Self::key(key) {
            let text = format(self.text);
            self.writer
                .attribute(name, Scalar::Str(text), span_leaves_out);
        }
        self
    }
}

impl Fields for EventAttributes<'_> {
    fn str(&mut self, key: Key, value: &str) -> &mut Self {
        self.put(key, Scalar::Str(value))
    }

    fn u64(&mut self, key: Key, value: u64) -> &mut Self {
        let value = if key.name().ends_with("_s") {
            Scalar::Double(value as f64)
        } else {
            Scalar::Int(i64::try_from(value).unwrap_or(i64::MAX))
        };
        self.put(key, value)
    }

    fn bool(&mut self, key: Key, value: bool) -> &mut Self {
        self.put(key, Scalar::Bool(value))
    }

    fn null(&mut self, _key: Key) -> &mut Self {
        self
    }

    fn ip(&mut self, key: Key, value: IpAddr) -> &mut Self {
        self.put_text(key, |line| ip_text(line, value))
    }

    fn secs(&mut self, key: Key, ns: Option<u64>) -> &mut Self {
        match ns {
            Some(ns) => self.put(key, Scalar::seconds(ns)),
            None => self,
        }
    }

    fn time(&mut self, key: Key, unix_ns: i64) -> &mut Self {
        self.put_text(key, |line| time_text(line, unix_ns))
    }

    fn strs<'s>(&mut self, key: Key, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        if let Some((name, span_leaves_out)) = Self::key(key) {
            self.writer.array(name, span_leaves_out, |items| {
                for value in values {
                    items.scalar(Scalar::Str(value));
                }
            });
        }
        self
    }

    fn ips(&mut self, key: Key, values: impl IntoIterator<Item = IpAddr>) -> &mut Self {
        if let Some((name, span_leaves_out)) = Self::key(key) {
            let text = &mut *self.text;
            self.writer.array(name, span_leaves_out, |items| {
                for ip in values {
                    items.scalar(Scalar::Str(ip_text(text, ip)));
                }
            });
        }
        self
    }

    fn timeline(&mut self, key: Key, timeline: &Timeline, clock: &impl WallClock) -> &mut Self {
        if let Some((name, span_leaves_out)) = Self::key(key) {
            let text = &mut *self.text;
            self.writer.array(name, span_leaves_out, |items| {
                for entry in timeline.entries() {
                    let start = time_text(text, clock.unix_ns(entry.start_ns));
                    items.kvlist(&[
                        ("name", Some(Scalar::Str(entry.name))),
                        ("start", Some(Scalar::Str(start))),
                        ("duration_s", Some(Scalar::seconds(entry.duration_ns))),
                        ("seq", entry.seq.map(|seq| Scalar::Int(i64::from(seq)))),
                    ]);
                }
            });
        }
        self
    }
}

/// `network.transport` and `network.type` of a connection.
pub(crate) fn network(writer: &mut Writer, ip: IpAddr) {
    writer.scalar("network.transport", Scalar::Str("tcp"));
    writer.scalar(
        "network.type",
        Scalar::Str(if ip.is_ipv4() { "ipv4" } else { "ipv6" }),
    );
}

/// How a connection failed, for its span status and `error.type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The `error.type` value: semantic-conventions issue 3682's values for connection
    /// establishment (`refused`, `timed_out`, `host_unreachable`, `net_unreachable`,
    /// `_OTHER`), `reset`, `tls_handshake_failed`.
    pub error_type: &'static str,
    pub message: String,
    /// The timeline phase it belongs to: `connect`, `tls` or `close`.
    pub phase: &'static str,
}

const ENETUNREACH: u32 = 101;

/// What went wrong with a connection, in the order the span status reports them: the
/// connect, then the TLS handshake, then a reset or timeout at the end.
pub(crate) fn failures(record: &ConnectionRecord) -> Vec<Failure> {
    let mut found = Vec::new();
    let errno = record.close.as_ref().map_or(0, |close| close.errno);
    if let Some(failure) = record.connect_failure {
        let error_type = match failure {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timed_out",
            ConnectFailure::Unreachable if errno == ENETUNREACH => "net_unreachable",
            ConnectFailure::Unreachable => "host_unreachable",
            ConnectFailure::Other => "_OTHER",
        };
        found.push(Failure {
            error_type,
            message: format!("connect failed: {}", failure.as_str()),
            phase: "connect",
        });
    }
    if record.tls().is_some_and(|tls| tls.ok == Some(false)) {
        found.push(Failure {
            error_type: "tls_handshake_failed",
            message: "TLS handshake failed".to_owned(),
            phase: "tls",
        });
    }
    if record.connect_failure.is_none()
        && let Some(close) = &record.close
    {
        match close.kind {
            CloseKind::Rst => found.push(Failure {
                error_type: "reset",
                message: match close.rst {
                    Some(Side::Local) => "connection reset by this end".to_owned(),
                    Some(Side::Peer) => "connection reset by the peer".to_owned(),
                    None => "connection reset".to_owned(),
                },
                phase: "close",
            }),
            CloseKind::Timeout => found.push(Failure {
                error_type: "timed_out",
                message: "connection timed out".to_owned(),
                phase: "close",
            }),
            CloseKind::Fin | CloseKind::Error => {}
        }
    }
    found
}

/// Trace and span ids. A connection's are derived from its id and a seed drawn at start-up:
/// its trace id is known from its first record on, and two runs of tcpobs never share one.
#[derive(Debug)]
pub(crate) struct Ids {
    seed: [u64; 2],
}

/// Which span of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SpanOf {
    Root,
    Phase(&'static str),
    Exchange(u32),
}

fn mix(mut z: u64) -> u64 {
    // SplitMix64's finalizer.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Ids {
    pub(crate) fn new() -> Self {
        let mut seed = [0u8; 16];
        // SAFETY: a valid 16-byte buffer to fill.
        let filled = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if filled != 16 {
            // No entropy source: the clock and the pid differ enough between runs.
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let salt =
                u64::from(std::process::id()) << 32 | COUNTER.fetch_add(1, Ordering::Relaxed);
            seed[..8].copy_from_slice(&mix(now).to_ne_bytes());
            seed[8..].copy_from_slice(&mix(salt ^ now.rotate_left(17)).to_ne_bytes());
        }
        Self::from_seed([
            u64::from_ne_bytes(seed[..8].try_into().unwrap_or_default()),
            u64::from_ne_bytes(seed[8..].try_into().unwrap_or_default()),
        ])
    }

    pub(crate) fn from_seed(seed: [u64; 2]) -> Self {
        Self { seed }
    }

    fn id(&self, conn_id: u64, salt: u64, half: usize) -> u64 {
        let id = mix(self.seed[half] ^ mix(conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt));
        // An all-zero id is invalid.
        id.max(1)
    }

    pub(crate) fn trace_id(&self, conn_id: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.id(conn_id, 1, 0).to_be_bytes());
        id[8..].copy_from_slice(&self.id(conn_id, 2, 1).to_be_bytes());
        id
    }

    pub(crate) fn span_id(&self, conn_id: u64, span: SpanOf) -> [u8; 8] {
        let salt = match span {
            SpanOf::Root => 3,
            SpanOf::Phase("dns") => 4,
            SpanOf::Phase("connect") => 5,
            SpanOf::Phase("tls") => 6,
            SpanOf::Phase(_) => 7,
            SpanOf::Exchange(seq) => 8 + u64::from(seq),
        };
        self.id(conn_id, salt, 0).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::{
        super::{
            proto::{ArrayValue, KeyValueList},
            wire::{Attributes, oracle},
        },
        *,
    };
    use crate::{
        clock::BootEpoch as Epoch,
        export::output::json::{
            events,
            tests::{Sample, samples},
        },
        model::{Addrs, Record, Resolved},
    };

    fn decoded(attributes: &Attributes, on_span: bool) -> Vec<KeyValue> {
        let mut buf = Vec::new();
        super::super::wire::Message::new(&mut buf).attributes(1, attributes, on_span);
        KeyValueList::decode(&buf[..]).unwrap().values
    }

    fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// `record`'s attributes as the exporter writes them, and as the oracle reads them from
    /// its JSON event.
    fn both_ways(sample: &Sample) -> (Attributes, Attributes) {
        let mut writer = Writer::default();
        let mut text = Line::default();
        events::fields_of(
            &mut EventAttributes::new(&mut writer, &mut text),
            &sample.record,
            &sample.anomalies,
            sample.meta.as_ref(),
            &Epoch,
        );
        let mut line = Line::default();
        sample.write_json(&mut line);
        (writer.finish(), oracle::from_event(line.as_bytes()))
    }

    /// Equal, or doubles within a unit in the last place (the JSON decimal read back by
    /// serde_json, which does not always round to the nearest).
    fn same(ours: &Value, theirs: &Value) -> bool {
        let any = |a: &AnyValue, b: &AnyValue| match (&a.value, &b.value) {
            (Some(a), Some(b)) => same(a, b),
            (a, b) => a == b,
        };
        match (ours, theirs) {
            (Value::Double(a), Value::Double(b)) => (a - b).abs() <= f64::EPSILON * a.abs(),
            (Value::Array(a), Value::Array(b)) => {
                a.values.len() == b.values.len()
                    && a.values.iter().zip(&b.values).all(|(a, b)| any(a, b))
            }
            // In the event's order here, the oracle's map sorts them: the order of an
            // object's fields means nothing.
            (Value::Kvlist(a), Value::Kvlist(b)) => {
                let sorted = |list: &KeyValueList| {
                    let mut values = list.values.clone();
                    values.sort_by(|a, b| a.key.cmp(&b.key));
                    values
                };
                let (a, b) = (sorted(a), sorted(b));
                a.len() == b.len()
                    && a.iter().zip(&b).all(|(a, b)| {
                        a.key == b.key
                            && match (&a.value, &b.value) {
                                (Some(a), Some(b)) => any(a, b),
                                (a, b) => a == b,
                            }
                    })
            }
            (a, b) => a == b,
        }
    }

    /// What the pinned samples leave out: counters past `i64::MAX`, a TLS handshake with its
    /// addresses, resolutions with no address and with IPv6 ones, an anomaly and an exchange
    /// with metadata and a process, IPv4-mapped and link-local addresses.
    fn more_samples(samples: &[Sample]) -> Vec<Sample> {
        let meta = samples[0].meta.clone();
        let process = match &samples[0].record {
            Record::Connection(connection) => connection.process,
            _ => None,
        };
        let mut more = Vec::new();
        for sample in samples {
            let mut record = sample.record.clone();
            match &mut record {
                Record::Connection(connection) => {
                    connection.bytes_sent = u64::MAX;
                    connection.bytes_received = 1 << 63;
                    connection.lifetime_ns = 1 << 60;
                    connection.addrs = Addrs::new(
                        "[::ffff:10.0.0.1]:40000".parse().unwrap(),
                        "[fe80::1]:443".parse().unwrap(),
                    );
                }
                Record::Exchange(exchange) => exchange.process = process,
                Record::Anomaly(_) => {}
                Record::Dns(dns) => {
                    dns.addrs = Resolved::default();
                    dns.code = 0;
                    more.push(Sample {
                        record: Record::Dns(dns.clone()),
                        anomalies: Vec::new(),
                        meta: None,
                    });
                    dns.addrs.push("2001:db8::2".parse().unwrap());
                    dns.addrs.push("192.0.2.9".parse().unwrap());
                }
                Record::Tls(tls) => {
                    tls.conn_id = Some(u64::MAX);
                    tls.addrs = Some(Addrs::new(
                        "127.0.0.1:40000".parse().unwrap(),
                        "[::1]:443".parse().unwrap(),
                    ));
                    tls.ok = true;
                }
                Record::Opened(_) | Record::Unstuck(..) => continue,
            }
            more.push(Sample {
                record,
                anomalies: vec!["slow"],
                meta: meta.clone(),
            });
        }
        more
    }

    /// The attributes written from the events' fields are the JSON event's, read back: the
    /// same keys in the same order, the same values, for every event type with every field
    /// set and unset, on spans and on log records.
    #[test]
    fn attributes_are_the_json_event_read_back() {
        let mut samples = samples();
        assert_eq!(samples.len(), 7);
        samples.extend(more_samples(&samples));
        for sample in &samples {
            let (ours, theirs) = both_ways(sample);
            // Each attribute is what prost writes for the `KeyValue` it decodes to.
            for attribute in ours.each(false) {
                assert_eq!(
                    attribute,
                    KeyValue::decode(attribute).unwrap().encode_to_vec()
                );
            }
            for on_span in [true, false] {
                let (ours, theirs) = (decoded(&ours, on_span), decoded(&theirs, on_span));
                let keys =
                    |kvs: &[KeyValue]| kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
                assert_eq!(keys(&ours), keys(&theirs));
                for (a, b) in ours.iter().zip(&theirs) {
                    let value = |kv: &KeyValue| kv.value.clone().and_then(|v| v.value);
                    let (key, a, b) = (&a.key, value(a).unwrap(), value(b).unwrap());
                    assert!(same(&a, &b), "{key}: {a:?} against {b:?}");
                }
            }
        }
    }

    /// What a connection's attributes say, by their conventional names.
    #[test]
    fn a_connection_s_attributes() {
        let samples = samples();
        let (attributes, _) = both_ways(&samples[0]);
        let on_span = decoded(&attributes, true);
        for (key, value) in [
            ("tcpobs.connection.id", Value::Int(7)),
            ("network.local.address", string("10.0.0.1")),
            ("network.peer.address", string("2001:db8::1")),
            ("network.peer.port", Value::Int(443)),
            ("process.pid", Value::Int(42)),
            ("process.executable.name", string("curl")),
            ("server.address", string("api.test")),
            ("network.local.port", Value::Int(40000)),
            ("container.id", string("abc")),
            ("k8s.pod.uid", string("1")),
            ("k8s.namespace.name", string("shop")),
            ("k8s.pod.name", string("web-0")),
            ("tcpobs.connect_s", Value::Double(0.00007)),
            ("tcpobs.close_wait_s", Value::Double(0.0)),
            ("tcpobs.open", Value::Bool(false)),
            ("tcpobs.tls_ok", Value::Bool(false)),
        ] {
            assert_eq!(find(&on_span, key), Some(&value), "{key}");
        }
        assert_eq!(
            find(&on_span, "tcpobs.stuck"),
            Some(&Value::Array(ArrayValue {
                values: ["syn_sent", "idle"]
                    .map(|s| AnyValue {
                        value: Some(string(s))
                    })
                    .to_vec()
            }))
        );
        for gone in [
            "tcpobs.type",
            "tcpobs.time",
            "tcpobs.phases",
            "tcpobs.start",
        ] {
            assert_eq!(find(&on_span, gone), None, "{gone}");
        }
        // Null fields are left out.
        assert_eq!(find(&on_span, "tcpobs.rtt_var_s"), None);
        let logged = decoded(&attributes, false);
        assert_eq!(
            logged.len(),
            on_span.len() + 2,
            "the start and the timeline"
        );
        assert_eq!(
            find(&logged, "tcpobs.start"),
            Some(&string("1970-01-01T00:00:00.002000Z"))
        );
        let Some(Value::Array(phases)) = find(&logged, "tcpobs.phases") else {
            panic!("{logged:?}");
        };
        assert_eq!(phases.values.len(), 6);
        assert_eq!(
            phases.values[3].value,
            Some(Value::Kvlist(KeyValueList {
                values: vec![
                    kv("name", string("exchange")),
                    kv("start", string("1970-01-01T00:00:00.006000Z")),
                    kv("duration_s", Value::Double(0.0015)),
                    kv("seq", Value::Int(1)),
                ]
            }))
        );
    }

    #[test]
    fn ids_are_stable_per_connection_and_distinct() {
        let ids = Ids::from_seed([1, 2]);
        assert_eq!(ids.trace_id(5), ids.trace_id(5));
        assert_ne!(ids.trace_id(5), ids.trace_id(6));
        assert_ne!(ids.trace_id(5), Ids::from_seed([3, 4]).trace_id(5));
        let spans = [
            ids.span_id(5, SpanOf::Root),
            ids.span_id(5, SpanOf::Phase("dns")),
            ids.span_id(5, SpanOf::Phase("connect")),
            ids.span_id(5, SpanOf::Phase("tls")),
            ids.span_id(5, SpanOf::Phase("close")),
            ids.span_id(5, SpanOf::Exchange(1)),
            ids.span_id(5, SpanOf::Exchange(2)),
        ];
        for (i, a) in spans.iter().enumerate() {
            assert_ne!(*a, [0; 8]);
            for b in &spans[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let drawn = Ids::new();
        assert_ne!(drawn.trace_id(1), [0; 16]);
    }
}
