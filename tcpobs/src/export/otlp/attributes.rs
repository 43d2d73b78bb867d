//! What spans and log records say about a record: its JSON event's fields as OTLP attributes
//! (the same fields, so the two outputs never drift apart: the event is written by
//! `json::events` and read back), renamed to OpenTelemetry's semantic conventions where one
//! exists and `tcpobs.<field>` otherwise; the error a connection ended with; and the trace
//! and span ids, derived from the connection id so that every record of a connection (its
//! exchanges, anomalies and handshake, logged before it closes) names the trace its close
//! will send.

use std::{
    fmt,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{
    Deserializer as _,
    de::{MapAccess, Visitor},
};
use serde_json::Value as Json;

use super::{
    proto::{AnyValue, KeyValue, Value},
    wire::{Attributes, Scalar, Writer},
};
use crate::model::{CloseKind, ConnectFailure, ConnectionRecord, Side};

pub(crate) fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

pub(crate) fn string(value: impl Into<String>) -> Value {
    Value::String(value.into())
}

/// The attribute a JSON event field becomes, as the two parts of its key.
fn attribute_key(field: &str) -> Option<[&str; 2]> {
    let conventional = match field {
        // Carried by the record itself: its event name and timestamp.
        "type" | "schema_version" | "time" => return None,
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
        other => return Some(["tcpobs.", other]),
    };
    Some(["", conventional])
}

/// Writes the fields of one JSON event line as attributes (durations, `*_s`, as doubles);
/// spans leave out the timeline (the child spans are) and the start (the span's).
struct Fields<'w> {
    writer: &'w mut Writer,
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys are plain ASCII names: borrowed from the line.
        while let Some(field) = map.next_key::<&'de str>()? {
            let value: Json = map.next_value()?;
            if let Some(key) = attribute_key(field) {
                let not_on_span = matches!(field, "phases" | "start");
                self.writer
                    .json(&key, &value, field.ends_with("_s"), not_on_span);
            }
        }
        Ok(())
    }
}

/// The attributes of a JSON event line, then what `extra` adds.
pub(crate) fn from_event(line: &[u8], extra: impl FnOnce(&mut Writer)) -> Attributes {
    let mut writer = Writer::with_capacity(line.len() * 2, 48);
    let parsed = serde_json::Deserializer::from_slice(line).deserialize_map(Fields {
        writer: &mut writer,
    });
    if parsed.is_err() {
        return Attributes::default();
    }
    extra(&mut writer);
    writer.finish()
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
        super::proto::{ArrayValue, KeyValueList},
        *,
    };

    fn decoded(attributes: &Attributes, on_span: bool) -> Vec<KeyValue> {
        let mut buf = bytes::BytesMut::new();
        super::super::wire::Message::new(&mut buf).attributes(1, attributes, on_span);
        KeyValueList::decode(buf.freeze()).unwrap().values
    }

    fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn event_fields_become_conventional_attributes() {
        let line = br#"{"type":"connection","schema_version":1,"id":7,"time":"t","start":"s","local_ip":"127.0.0.1","local_port":40000,"remote_port":443,"pid":9,"comm":"curl","dns_host":"api.example","connect_s":0.000078527,"teardown_s":0,"container_id":"c0ffee","pod_uid":"u-1","namespace":"shop","pod":"web-1","stuck":[],"phases":[{"name":"dns","seq":null}],"open":false}
"#;
        let encoded = from_event(line, |writer| {
            writer.scalar("error.type", Scalar::Str("reset"));
        });
        let attributes = decoded(&encoded, true);
        assert_eq!(
            find(&attributes, "tcpobs.connection.id"),
            Some(&Value::Int(7))
        );
        assert_eq!(
            find(&attributes, "network.local.address"),
            Some(&string("127.0.0.1"))
        );
        assert_eq!(
            find(&attributes, "network.peer.port"),
            Some(&Value::Int(443))
        );
        assert_eq!(find(&attributes, "process.pid"), Some(&Value::Int(9)));
        assert_eq!(
            find(&attributes, "process.executable.name"),
            Some(&string("curl"))
        );
        assert_eq!(
            find(&attributes, "server.address"),
            Some(&string("api.example"))
        );
        assert_eq!(
            find(&attributes, "tcpobs.connect_s"),
            Some(&Value::Double(0.000078527))
        );
        assert_eq!(
            find(&attributes, "tcpobs.teardown_s"),
            Some(&Value::Double(0.0)),
            "durations stay doubles"
        );
        assert_eq!(find(&attributes, "tcpobs.open"), Some(&Value::Bool(false)));
        assert_eq!(
            find(&attributes, "tcpobs.stuck"),
            Some(&Value::Array(ArrayValue { values: vec![] }))
        );
        assert_eq!(find(&attributes, "error.type"), Some(&string("reset")));
        for (key, value) in [
            ("container.id", "c0ffee"),
            ("k8s.pod.uid", "u-1"),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "web-1"),
        ] {
            assert_eq!(find(&attributes, key), Some(&string(value)), "{key}");
        }
        for gone in [
            "type",
            "tcpobs.type",
            "tcpobs.time",
            "tcpobs.pod",
            "tcpobs.phases",
            "tcpobs.start",
        ] {
            assert_eq!(find(&attributes, gone), None, "{gone}");
        }
        assert_eq!(
            attributes[0].key, "tcpobs.connection.id",
            "in the event's order"
        );
        let logged = decoded(&encoded, false);
        assert_eq!(logged.len(), attributes.len() + 2);
        assert_eq!(find(&logged, "tcpobs.start"), Some(&string("s")));
        let Some(Value::Array(phases)) = find(&logged, "tcpobs.phases") else {
            panic!("{logged:?}");
        };
        assert_eq!(
            phases.values[0].value,
            Some(Value::Kvlist(KeyValueList {
                values: vec![kv("name", string("dns"))]
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
