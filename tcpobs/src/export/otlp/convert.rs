//! Records → spans and log records, on the export tasks (never on the ring buffer reader).
//!
//! A connection is one trace: a root span `tcp.connection` from its start (or its name
//! resolution, which comes first) to its close, and a child span per entry of its timeline
//! (`dns`, `connect`, `tls`, each `exchange` of the first 15 and the last, `close`), all with
//! the kernel's timestamps. The root carries the connection event's fields; a failed connect,
//! a reset, a timeout or a failed TLS handshake makes its status an error, with the reason,
//! and the phase it happened in gets the same status.
//!
//! Every event is also a log record: its fields as attributes, its time as the timestamp,
//! `event_name` `tcpobs.<type>`, WARN for anomalies (and for connections that are one, failed
//! resolutions and handshakes), linked to its connection's trace when it has one.

use std::sync::Arc;

use super::{
    Item,
    attributes::{self, EventAttributes, Failure, Ids, SpanOf},
    proto::{SeverityNumber, SpanKind, StatusCode},
    wire::{Attributes, Message, Messages, Scalar, Writer},
};
use crate::{
    clock::{Clock, WallClock as _},
    export::output::{
        json::{Line, events},
        select::{EventType, anomalies_of},
    },
    model::{ConnectionRecord, Record, Role},
};

/// W3C "sampled", and OTLP's bit saying the parent is known not to be remote.
const SPAN_FLAGS: u32 = 0x101;
const LOG_FLAGS: u32 = 0x01;

fn unix_ns(clock: &Clock, monotonic_ns: u64) -> u64 {
    u64::try_from(clock.unix_ns(monotonic_ns)).unwrap_or(0)
}

fn event_name(event: EventType) -> &'static str {
    match event {
        EventType::Connection => "tcpobs.connection",
        EventType::Exchange => "tcpobs.exchange",
        EventType::Anomaly => "tcpobs.anomaly",
        EventType::Dns => "tcpobs.dns",
        EventType::Tls => "tcpobs.tls",
    }
}

/// One span, as the `Span` message's fields.
struct SpanFields<'a> {
    trace_id: &'a [u8; 16],
    span_id: &'a [u8; 8],
    parent_span_id: Option<&'a [u8; 8]>,
    name: &'a str,
    kind: SpanKind,
    start_ns: u64,
    end_ns: u64,
    /// The record's attributes (those spans carry), for the root.
    attributes: Option<&'a Attributes>,
    /// More attributes.
    extra: &'a [(&'a str, Scalar<'a>)],
    failure: Option<&'a Failure>,
}

fn put_span(out: &mut Messages, span: &SpanFields<'_>) {
    let mut message = Message::new(&mut out.buf);
    message
        .bytes(1, span.trace_id)
        .bytes(2, span.span_id)
        .bytes(4, span.parent_span_id.map_or(&[][..], |id| &id[..]))
        .bytes(5, span.name.as_bytes())
        .varint(6, span.kind as u64)
        .fixed64(7, span.start_ns)
        .fixed64(8, span.end_ns);
    if let Some(attributes) = span.attributes {
        message.attributes(9, attributes, true);
    }
    for (key, value) in span.extra {
        message.attribute(9, key, *value);
    }
    if let Some(failure) = span.failure {
        message.status(15, StatusCode::Error as i32, &failure.message);
    }
    message.fixed32(16, SPAN_FLAGS);
    out.end();
}

/// One lane's converter.
pub(crate) struct Convert {
    clock: Clock,
    ids: Arc<Ids>,
    /// Where times and addresses are formatted.
    text: Line,
    writer: Writer,
}

impl Convert {
    pub(crate) fn new(clock: Clock, ids: Arc<Ids>) -> Self {
        Self {
            clock,
            ids,
            text: Line::default(),
            writer: Writer::default(),
        }
    }

    /// The record's event fields as attributes (and a connection's extra ones), worked out
    /// once per record for both lanes.
    fn attributes<'a>(&mut self, item: &'a Item) -> &'a Attributes {
        item.attributes.get_or_init(|| {
            let writer = &mut self.writer;
            let anomalies = match &item.record {
                Record::Connection(connection) => anomalies_of(connection, &item.limits),
                _ => Default::default(),
            };
            events::fields_of(
                &mut EventAttributes::new(writer, &mut self.text),
                &item.record,
                &anomalies,
                item.meta.as_deref(),
                &self.clock,
            );
            if let Record::Connection(connection) = &item.record {
                attributes::network(writer, connection.addrs.local().ip());
                // The idle gaps and response times its exchanges had at most (the JSON
                // event only shows them through `anomalies`).
                for (key, ns) in [
                    ("tcpobs.max_idle_s", connection.max_idle_ns),
                    (
                        "tcpobs.max_response_begin_s",
                        connection.max_response_begin_ns,
                    ),
                ] {
                    if let Some(ns) = ns {
                        writer.scalar(key, Scalar::seconds(ns));
                    }
                }
                if let Some(failure) = attributes::failures(connection).first() {
                    writer.scalar("error.type", Scalar::Str(failure.error_type));
                }
            }
            writer.finish()
        })
    }

    /// Writes a connection's spans, root first.
    pub(crate) fn spans(&mut self, item: &Item, out: &mut Messages) {
        let Record::Connection(connection) = &item.record else {
            return;
        };
        let id = connection.id;
        let trace_id = self.ids.trace_id(id);
        let root_id = self.ids.span_id(id, SpanOf::Root);
        let failures = attributes::failures(connection);
        let failure_in = |phase: &str| failures.iter().find(|failure| failure.phase == phase);
        let timeline = connection.timeline();
        let entries = timeline.entries();
        let end_ns = connection.start_ns + connection.lifetime_ns;
        let first = entries.iter().map(|e| e.start_ns).min().unwrap_or(end_ns);
        let last = entries
            .iter()
            .map(|e| e.start_ns + e.duration_ns)
            .max()
            .unwrap_or(end_ns);
        // The resolution comes before the socket: no child starts before its parent.
        let root_start = connection.start_ns.min(first);
        let root_end = end_ns.max(last);
        let clock = self.clock;
        put_span(
            out,
            &SpanFields {
                trace_id: &trace_id,
                span_id: &root_id,
                parent_span_id: None,
                name: "tcp.connection",
                kind: match connection.role {
                    Role::Client => SpanKind::Client,
                    Role::Server => SpanKind::Server,
                    Role::Unknown => SpanKind::Internal,
                },
                start_ns: unix_ns(&clock, root_start),
                end_ns: unix_ns(&clock, root_end),
                attributes: Some(self.attributes(item)),
                extra: &[],
                failure: failures.first(),
            },
        );
        for entry in entries {
            let (span, extra) = match entry.seq {
                Some(seq) => (
                    SpanOf::Exchange(seq),
                    vec![("tcpobs.exchange.seq", Scalar::Int(i64::from(seq)))],
                ),
                None => (
                    SpanOf::Phase(entry.name),
                    phase_attributes(connection, entry.name),
                ),
            };
            let start_ns = unix_ns(&clock, entry.start_ns);
            put_span(
                out,
                &SpanFields {
                    trace_id: &trace_id,
                    span_id: &self.ids.span_id(id, span),
                    parent_span_id: Some(&root_id),
                    name: entry.name,
                    kind: SpanKind::Internal,
                    start_ns,
                    end_ns: start_ns + entry.duration_ns,
                    attributes: None,
                    extra: &extra,
                    failure: entry
                        .seq
                        .is_none()
                        .then(|| failure_in(entry.name))
                        .flatten(),
                },
            );
        }
    }

    /// Writes the record's log record.
    pub(crate) fn log(&mut self, item: &Item, out: &mut Messages) {
        let clock = self.clock;
        let (time_ns, warn, link) = match &item.record {
            Record::Connection(c) => (
                c.start_ns + c.lifetime_ns,
                !anomalies_of(c, &item.limits).is_empty(),
                Some((c.id, SpanOf::Root)),
            ),
            Record::Exchange(e) => (
                e.start_ns,
                false,
                Some((e.conn_id, SpanOf::Exchange(e.seq))),
            ),
            Record::Anomaly(a) => (a.at_ns, true, Some((a.conn_id, SpanOf::Root))),
            Record::Dns(d) => (d.start_ns + d.duration_ns, d.failure().is_some(), None),
            Record::Tls(t) => (
                t.start_ns + t.duration_ns,
                !t.ok,
                t.conn_id.map(|id| (id, SpanOf::Phase("tls"))),
            ),
            Record::Opened(_) | Record::Unstuck(..) => (0, false, None),
        };
        let (severity_number, severity_text) = if warn {
            (SeverityNumber::Warn, "WARN")
        } else {
            (SeverityNumber::Info, "INFO")
        };
        let attributes = self.attributes(item);
        let mut message = Message::new(&mut out.buf);
        message
            .fixed64(1, unix_ns(&clock, time_ns))
            .varint(2, severity_number as u64)
            .bytes(3, severity_text.as_bytes());
        if let Record::Anomaly(anomaly) = &item.record {
            message.any_string(5, anomaly.stuck.hint());
        }
        message.attributes(6, attributes, false);
        if let Some((conn_id, span)) = link {
            message
                .fixed32(8, LOG_FLAGS)
                .bytes(9, &self.ids.trace_id(conn_id))
                .bytes(10, &self.ids.span_id(conn_id, span));
        }
        message
            .fixed64(11, super::unix_now_ns())
            .bytes(12, event_name(item.event).as_bytes());
        out.end();
    }
}

/// What a phase span says beyond its name and times.
fn phase_attributes<'a>(
    connection: &'a ConnectionRecord,
    phase: &str,
) -> Vec<(&'static str, Scalar<'a>)> {
    match phase {
        "dns" => connection
            .dns()
            .map(|dns| vec![("dns.question.name", Scalar::Str(&dns.host))])
            .unwrap_or_default(),
        "tls" => connection
            .tls()
            .map(|tls| {
                let mut attributes = vec![("tcpobs.tls.calls", Scalar::Int(i64::from(tls.calls)))];
                if let Some(ok) = tls.ok {
                    attributes.push(("tcpobs.tls.ok", Scalar::Bool(ok)));
                }
                attributes
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use prost::Message as _;

    use super::{
        super::proto::{KeyValue, LogRecord, Span, Value},
        *,
    };
    use crate::{
        config::live::Thresholds,
        export::output::select::AnomalyLimits,
        model::{
            Addrs, AnomalyRecord, Close, CloseKind, CloseOriginator, ConnectFailure, Diagnosis,
            DnsLink, ExchangeSpan, Side, Stuck, StuckSet, TimelineSpans,
        },
    };

    fn item(record: Record, event: EventType) -> Item {
        Item {
            record,
            event,
            meta: None,
            limits: AnomalyLimits::of(&Thresholds::default()),
            attributes: OnceLock::new(),
        }
    }

    fn connection() -> ConnectionRecord {
        let mut spans = TimelineSpans::default();
        spans.dns = Some(DnsLink {
            host: Arc::from("api.example"),
            start_ns: 9_000,
            duration_ns: 500,
        });
        spans.push_exchange(
            10_000,
            &ExchangeSpan {
                seq: 1,
                start_ns: 12_000,
                duration_ns: 3_000,
            },
        );
        ConnectionRecord {
            id: 42,
            role: Role::Client,
            partial: None,
            addrs: Addrs::new(
                "127.0.0.1:40000".parse().unwrap(),
                "127.0.0.1:443".parse().unwrap(),
            ),
            process: None,
            start_ns: 10_000,
            established_ns: Some(10_700),
            connect_ns: Some(700),
            connect_failure: None,
            lifetime_ns: 30_000,
            exchanges: 2,
            bytes_sent: 10,
            bytes_received: 20,
            retransmits: 0,
            diag: Diagnosis::default(),
            close: Some(Close {
                at_ns: 40_000,
                originator: CloseOriginator::Client,
                closed_by: Some(Side::Local),
                kind: CloseKind::Rst,
                rst: Some(Side::Local),
                final_state: 7,
                teardown_ns: Some(1_000),
                close_wait_ns: None,
                close_wait_unclosed: false,
                errno: 0,
            }),
            tcp: None,
            max_response_begin_ns: None,
            max_idle_ns: Some(2_500),
            stuck: StuckSet::default(),
            stuck_at_end: None,
            spans: Some(Box::new(spans)),
            last_exchange: Some(ExchangeSpan {
                seq: 2,
                start_ns: 20_000,
                duration_ns: 2_000,
            }),
        }
    }

    fn converter(clock: Clock) -> Convert {
        Convert::new(clock, Arc::new(Ids::from_seed([7, 8])))
    }

    fn attribute(attributes: &[KeyValue], key: &str) -> Option<Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    /// The spans written, as the schema reads them.
    fn spans(convert: &mut Convert, item: &Item) -> Vec<Span> {
        let mut out = Messages::default();
        convert.spans(item, &mut out);
        out.finish()
            .into_iter()
            .map(|bytes| Span::decode(bytes).unwrap())
            .collect()
    }

    fn log(convert: &mut Convert, item: &Item) -> LogRecord {
        let mut out = Messages::default();
        convert.log(item, &mut out);
        LogRecord::decode(out.finish().remove(0)).unwrap()
    }

    fn string(value: &str) -> Value {
        Value::String(value.to_owned())
    }

    #[test]
    fn a_connection_is_a_span_tree_on_the_kernel_s_times() {
        let clock = Clock::default();
        let item = item(Record::Connection(connection()), EventType::Connection);
        let spans = spans(&mut converter(clock), &item);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tcp.connection",
                "dns",
                "connect",
                "exchange",
                "exchange",
                "close"
            ]
        );
        let root = &spans[0];
        assert_eq!(root.kind, SpanKind::Client as i32);
        assert_eq!(
            root.start_time_unix_nano,
            unix_ns(&clock, 9_000),
            "from the resolution"
        );
        assert_eq!(root.end_time_unix_nano, unix_ns(&clock, 40_000));
        assert_eq!((root.flags, root.parent_span_id.len()), (SPAN_FLAGS, 0));
        for child in &spans[1..] {
            assert_eq!(child.parent_span_id, root.span_id);
            assert_eq!(child.trace_id, root.trace_id);
            assert!(child.start_time_unix_nano >= root.start_time_unix_nano);
            assert!(child.end_time_unix_nano <= root.end_time_unix_nano);
        }
        let durations: Vec<u64> = spans[1..]
            .iter()
            .map(|s| s.end_time_unix_nano - s.start_time_unix_nano)
            .collect();
        assert_eq!(durations, [500, 700, 3_000, 2_000, 1_000]);
        assert_eq!(
            attribute(&spans[3].attributes, "tcpobs.exchange.seq"),
            Some(Value::Int(1))
        );
        assert_eq!(
            attribute(&spans[1].attributes, "dns.question.name"),
            Some(string("api.example"))
        );
        // A reset: the root and the close phase are errors, with the reason.
        let status = root.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "connection reset by this end");
        assert_eq!(spans[5].status, root.status);
        assert_eq!(spans[2].status, None);
        assert_eq!(
            attribute(&root.attributes, "error.type"),
            Some(string("reset"))
        );
        assert_eq!(
            attribute(&root.attributes, "server.address"),
            Some(string("api.example"))
        );
        assert_eq!(
            attribute(&root.attributes, "network.transport"),
            Some(string("tcp"))
        );
        assert_eq!(attribute(&root.attributes, "tcpobs.phases"), None);
        assert_eq!(
            attribute(&root.attributes, "tcpobs.phases_omitted"),
            Some(Value::Int(0))
        );
        assert_eq!(
            attribute(&root.attributes, "tcpobs.max_idle_s"),
            Some(Value::Double(2.5e-6))
        );
    }

    #[test]
    fn a_refused_connect_is_an_error_on_the_root_and_the_connect() {
        let mut refused = connection();
        refused.connect_failure = Some(ConnectFailure::Refused);
        refused.connect_ns = None;
        refused.spans = None;
        refused.last_exchange = None;
        refused.close.as_mut().unwrap().teardown_ns = None;
        let item = item(Record::Connection(refused), EventType::Connection);
        let spans = spans(&mut converter(Clock::default()), &item);
        let status = spans[0].status.as_ref().unwrap();
        assert_eq!(status.message, "connect failed: refused");
        let connect = spans.iter().find(|s| s.name == "connect").unwrap();
        assert_eq!(connect.status, spans[0].status);
        assert_eq!(
            attribute(&spans[0].attributes, "error.type"),
            Some(string("refused"))
        );
    }

    #[test]
    fn log_records_carry_the_event_and_its_trace() {
        let clock = Clock::default();
        let mut convert = converter(clock);
        let ids = Ids::from_seed([7, 8]);
        let conn = item(Record::Connection(connection()), EventType::Connection);
        let log = log(&mut convert, &conn);
        assert_eq!(log.event_name, "tcpobs.connection");
        assert_eq!(log.time_unix_nano, unix_ns(&clock, 40_000));
        assert_eq!(log.trace_id, ids.trace_id(42));
        assert_eq!(log.span_id, ids.span_id(42, SpanOf::Root));
        assert_eq!(log.severity_text, "WARN", "a reset is an anomaly");
        assert_eq!(log.flags, LOG_FLAGS);
        assert!(attribute(&log.attributes, "tcpobs.phases").is_some());
        let anomaly = item(
            Record::Anomaly(AnomalyRecord {
                conn_id: 42,
                stuck: Stuck::CloseWait,
                role: Role::Server,
                addrs: connection().addrs,
                process: None,
                state: 8,
                since_ns: 1_000,
                at_ns: 5_000,
                threshold_ns: 2_000,
            }),
            EventType::Anomaly,
        );
        let log = super::tests::log(&mut convert, &anomaly);
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.event_name, "tcpobs.anomaly");
        assert_eq!(log.time_unix_nano, unix_ns(&clock, 5_000));
        assert_eq!(
            log.trace_id,
            ids.trace_id(42),
            "the trace its close will send"
        );
        assert_eq!(
            log.body.and_then(|b| b.value),
            Some(string(Stuck::CloseWait.hint()))
        );
        assert_eq!(
            attribute(&log.attributes, "tcpobs.phase"),
            Some(string("close_wait"))
        );
        assert_eq!(
            attribute(&log.attributes, "tcpobs.threshold_s"),
            Some(Value::Double(2e-6))
        );
    }
}
