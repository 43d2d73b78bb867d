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
    attributes::{self, Failure, Ids, SpanOf, kv, string},
    proto::{
        AnyValue, KeyValue, LogRecord, SeverityNumber, Span, SpanKind, Status, StatusCode, Value,
    },
};
use crate::{
    clock::{Clock, WallClock as _},
    export::output::{
        json::{Line, events},
        select::anomalies_of,
    },
    model::{ConnectionRecord, Record, Role},
};

/// W3C "sampled", and OTLP's bit saying the parent is known not to be remote.
const SPAN_FLAGS: u32 = 0x101;
const LOG_FLAGS: u32 = 0x01;

fn unix_ns(clock: &Clock, monotonic_ns: u64) -> u64 {
    u64::try_from(clock.unix_ns(monotonic_ns)).unwrap_or(0)
}

fn error_status(message: &str) -> Option<Status> {
    Some(Status {
        message: message.to_owned(),
        code: StatusCode::Error as i32,
    })
}

/// One lane's converter (it keeps a buffer for the JSON events).
pub(crate) struct Convert {
    clock: Clock,
    ids: Arc<Ids>,
    line: Line,
}

impl Convert {
    pub(crate) fn new(clock: Clock, ids: Arc<Ids>) -> Self {
        Self {
            clock,
            ids,
            line: Line::default(),
        }
    }

    /// The record's JSON event as attributes, worked out once per record for both lanes.
    fn attributes<'a>(&mut self, item: &'a Item) -> &'a [KeyValue] {
        item.attributes.get_or_init(|| {
            let (line, clock) = (&mut self.line, &self.clock);
            line.clear();
            let meta = item.meta.as_deref();
            match &item.record {
                Record::Connection(connection) => {
                    let anomalies = anomalies_of(connection, &item.thresholds);
                    events::connection(line, connection, &anomalies, meta, clock);
                }
                Record::Exchange(exchange) => events::exchange(line, exchange, meta, clock),
                Record::Anomaly(anomaly) => events::anomaly(line, anomaly, meta, clock),
                Record::Dns(dns) => events::dns(line, dns, clock),
                Record::Tls(tls) => events::tls(line, tls, clock),
                Record::Opened(_) | Record::Unstuck(..) => {}
            }
            let mut attributes = attributes::from_event(line.as_bytes(), &[]);
            if let Record::Connection(connection) = &item.record {
                attributes.extend(attributes::network(connection.addrs.local().ip()));
                if let Some(failure) = attributes::failures(connection).first() {
                    attributes.push(kv("error.type", string(failure.error_type)));
                }
            }
            attributes
        })
    }

    /// A connection's spans, root first.
    pub(crate) fn spans(&mut self, item: &Item, out: &mut Vec<Span>) {
        let Record::Connection(connection) = &item.record else {
            return;
        };
        let id = connection.id;
        let trace_id = self.ids.trace_id(id).to_vec();
        let root_id = self.ids.span_id(id, SpanOf::Root).to_vec();
        let failures = attributes::failures(connection);
        let status_of = |phase: Option<&str>| {
            failures
                .iter()
                .find(|failure: &&Failure| phase.is_none_or(|phase| failure.phase == phase))
                .and_then(|failure| error_status(&failure.message))
        };
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
        let attributes = self
            .attributes(item)
            .iter()
            .filter(|kv| !matches!(kv.key.as_str(), "tcpobs.phases" | "tcpobs.start"))
            .cloned()
            .collect();
        out.push(Span {
            trace_id: trace_id.clone(),
            span_id: root_id.clone(),
            parent_span_id: Vec::new(),
            name: "tcp.connection".to_owned(),
            kind: match connection.role {
                Role::Client => SpanKind::Client,
                Role::Server => SpanKind::Server,
                Role::Unknown => SpanKind::Internal,
            } as i32,
            start_time_unix_nano: unix_ns(&self.clock, root_start),
            end_time_unix_nano: unix_ns(&self.clock, root_end),
            attributes,
            status: status_of(None),
            flags: SPAN_FLAGS,
        });
        for entry in entries {
            let (span, attributes) = match entry.seq {
                Some(seq) => (
                    SpanOf::Exchange(seq),
                    vec![kv("tcpobs.exchange.seq", Value::Int(i64::from(seq)))],
                ),
                None => (
                    SpanOf::Phase(entry.name),
                    phase_attributes(connection, entry.name),
                ),
            };
            let start = unix_ns(&self.clock, entry.start_ns);
            out.push(Span {
                trace_id: trace_id.clone(),
                span_id: self.ids.span_id(id, span).to_vec(),
                parent_span_id: root_id.clone(),
                name: entry.name.to_owned(),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + entry.duration_ns,
                attributes,
                status: if entry.seq.is_none() {
                    status_of(Some(entry.name))
                } else {
                    None
                },
                flags: SPAN_FLAGS,
            });
        }
    }

    /// The record's log record.
    pub(crate) fn log(&mut self, item: &Item) -> LogRecord {
        let clock = self.clock;
        let (time_ns, warn, link) = match &item.record {
            Record::Connection(c) => (
                c.start_ns + c.lifetime_ns,
                !anomalies_of(c, &item.thresholds).is_empty(),
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
        let body = match &item.record {
            Record::Anomaly(anomaly) => Some(AnyValue {
                value: Some(string(anomaly.stuck.hint())),
            }),
            _ => None,
        };
        let (trace_id, span_id, flags) = match link {
            Some((conn_id, span)) => (
                self.ids.trace_id(conn_id).to_vec(),
                self.ids.span_id(conn_id, span).to_vec(),
                LOG_FLAGS,
            ),
            None => (Vec::new(), Vec::new(), 0),
        };
        LogRecord {
            time_unix_nano: unix_ns(&clock, time_ns),
            severity_number: severity_number as i32,
            severity_text: severity_text.to_owned(),
            body,
            attributes: self.attributes(item).to_vec(),
            flags,
            trace_id,
            span_id,
            observed_time_unix_nano: super::unix_now_ns(),
            event_name: format!("tcpobs.{}", item.event.as_str()),
        }
    }
}

/// What a phase span says beyond its name and times.
fn phase_attributes(connection: &ConnectionRecord, phase: &str) -> Vec<KeyValue> {
    match phase {
        "dns" => connection
            .dns()
            .map(|dns| vec![kv("dns.question.name", string(&*dns.host))])
            .unwrap_or_default(),
        "tls" => connection
            .tls()
            .map(|tls| {
                let mut attributes = vec![kv("tcpobs.tls.calls", Value::Int(i64::from(tls.calls)))];
                if let Some(ok) = tls.ok {
                    attributes.push(kv("tcpobs.tls.ok", Value::Bool(ok)));
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

    use super::*;
    use crate::{
        config::live::Thresholds,
        export::output::select::EventType,
        model::{
            Addrs, AnomalyRecord, Close, CloseKind, CloseOriginator, ConnectFailure, DnsLink,
            ExchangeSpan, Side, Stuck, StuckSet, TimelineSpans,
        },
    };

    fn item(record: Record, event: EventType) -> Item {
        Item {
            record,
            event,
            meta: None,
            thresholds: Thresholds::default(),
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
            max_idle_ns: None,
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

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_connection_is_a_span_tree_on_the_kernel_s_times() {
        let clock = Clock::default();
        let item = item(Record::Connection(connection()), EventType::Connection);
        let mut spans = Vec::new();
        converter(clock).spans(&item, &mut spans);
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
            Some(&Value::Int(1))
        );
        assert_eq!(
            attribute(&spans[1].attributes, "dns.question.name"),
            Some(&string("api.example"))
        );
        // A reset: the root and the close phase are errors, with the reason.
        let status = root.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "connection reset by this end");
        assert_eq!(spans[5].status, root.status);
        assert_eq!(spans[2].status, None);
        assert_eq!(
            attribute(&root.attributes, "error.type"),
            Some(&string("reset"))
        );
        assert_eq!(
            attribute(&root.attributes, "server.address"),
            Some(&string("api.example"))
        );
        assert_eq!(
            attribute(&root.attributes, "network.transport"),
            Some(&string("tcp"))
        );
        assert_eq!(attribute(&root.attributes, "tcpobs.phases"), None);
        assert_eq!(
            attribute(&root.attributes, "tcpobs.phases_omitted"),
            Some(&Value::Int(0))
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
        let mut spans = Vec::new();
        converter(Clock::default()).spans(&item, &mut spans);
        let status = spans[0].status.as_ref().unwrap();
        assert_eq!(status.message, "connect failed: refused");
        let connect = spans.iter().find(|s| s.name == "connect").unwrap();
        assert_eq!(connect.status, spans[0].status);
        assert_eq!(
            attribute(&spans[0].attributes, "error.type"),
            Some(&string("refused"))
        );
    }

    #[test]
    fn log_records_carry_the_event_and_its_trace() {
        let clock = Clock::default();
        let mut convert = converter(clock);
        let ids = Ids::from_seed([7, 8]);
        let conn = item(Record::Connection(connection()), EventType::Connection);
        let log = convert.log(&conn);
        assert_eq!(log.event_name, "tcpobs.connection");
        assert_eq!(log.time_unix_nano, unix_ns(&clock, 40_000));
        assert_eq!(log.trace_id, ids.trace_id(42));
        assert_eq!(log.span_id, ids.span_id(42, SpanOf::Root));
        assert_eq!(log.severity_text, "WARN", "a reset is an anomaly");
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
        let log = convert.log(&anomaly);
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
            Some(&string("close_wait"))
        );
        assert_eq!(
            attribute(&log.attributes, "tcpobs.threshold_s"),
            Some(&Value::Double(2e-6))
        );
    }
}
