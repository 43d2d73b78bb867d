//! OpenTelemetry export end to end, into receivers nobody here wrote (the official Python
//! bindings behind a small sink, and rotel's collector), over both OTLP/HTTP and OTLP/gRPC:
//! a real HTTP request (curl and nginx), a TLS handshake with a DNS name, a refused connect
//! and a CLOSE_WAIT anomaly come out as span trees on the JSON events' times, with their
//! attributes and error statuses, log records and metric data points equal to `/metrics`'s;
//! a collector stopped mid-run costs counted drops, never tracing, and export resumes when
//! it returns ([`outage`]). Also: bad settings exit 2 naming the setting, the DaemonSet's OTLP
//! variant validates, and the README's collector configuration fits ([`setup`]).

mod outage;
mod setup;

use std::{
    io::Read as _,
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpobs_tests::{
    PATIENCE, closed_port,
    daemon::{Daemon, sample_value},
    listen,
    nginx::{BODY, Nginx, curl},
    otlp::{Kind, Received, Receiver, attribute, event_micros, event_nanos, nanos},
    phases::{Pki, Scratch, TLS_HOST, TlsServer, curl_tls_host, python_tls_client},
};

const NODE: &str = "otlp-test-node";

/// Quick batches and metrics every half second, so that the tests wait little.
const QUICK: [(&str, &str); 4] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
    ("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=otlp-test-node"),
];

fn start_daemon(
    receiver: &Receiver,
    protocol: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let endpoint = receiver.endpoint(protocol);
    let mut all = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol];
    all.extend_from_slice(args);
    let mut vars = QUICK.to_vec();
    vars.extend_from_slice(env);
    Daemon::start_with(&[], &all, &vars)
}

fn is_error(span: &Value) -> bool {
    span["status"]["code"]
        .as_str()
        .is_some_and(|code| code.to_ascii_uppercase().contains("ERROR"))
}

fn names(spans: &[Value]) -> Vec<String> {
    spans
        .iter()
        .map(|span| span["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The connection event's trace: one root, a child per phase with the phase's name,
/// parent, start (to the microsecond the JSON prints) and duration (to the nanosecond);
/// the root from the earliest phase to the close; the event's main fields as attributes.
fn assert_trace(spans: &[Value], event: &Value) {
    let root = &spans[0];
    let phases = event["phases"].as_array().unwrap();
    let expected: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names(&spans[1..]),
        expected,
        "one child span per phase, in order: {event:#}"
    );
    assert_eq!(root["name"], "tcp.connection");
    let kind = match event["role"].as_str() {
        Some("client") => "SPAN_KIND_CLIENT",
        _ => "SPAN_KIND_SERVER",
    };
    assert_eq!(root["kind"], kind);
    for (span, phase) in spans[1..].iter().zip(phases) {
        assert_eq!(span["parent_span_id"], root["span_id"], "{span:#}");
        assert_eq!(span["trace_id"], root["trace_id"]);
        let (start, end) = (
            nanos(span, "start_time_unix_nano"),
            nanos(span, "end_time_unix_nano"),
        );
        assert_eq!(
            end - start,
            event_nanos(&phase["duration_s"]),
            "{} lasts as long as in the JSON event",
            phase["name"]
        );
        assert_eq!(
            start / 1_000,
            event_micros(phase["start"].as_str().unwrap()),
            "{} starts when the JSON event says",
            phase["name"]
        );
    }
    let earliest = phases
        .iter()
        .map(|p| event_micros(p["start"].as_str().unwrap()))
        .chain([event_micros(event["start"].as_str().unwrap())])
        .min()
        .unwrap();
    assert_eq!(nanos(root, "start_time_unix_nano") / 1_000, earliest);
    assert_eq!(
        nanos(root, "end_time_unix_nano") / 1_000,
        event_micros(event["time"].as_str().unwrap()),
        "the root ends at the close"
    );
    for (key, field) in [
        ("tcpobs.connection.id", "id"),
        ("network.local.port", "local_port"),
        ("network.peer.address", "remote_ip"),
        ("network.peer.port", "remote_port"),
        ("process.pid", "pid"),
        ("process.executable.name", "comm"),
        ("tcpobs.exchanges", "exchanges"),
        ("tcpobs.lifetime_s", "lifetime_s"),
        ("tcpobs.close_kind", "close_kind"),
        ("tcpobs.phases_omitted", "phases_omitted"),
    ] {
        assert_eq!(
            attribute(root, key).unwrap_or(Value::Null),
            event[field],
            "{key} is the event's {field}"
        );
    }
    assert_eq!(attribute(root, "network.transport"), Some("tcp".into()));
    let resource = &root["resource"];
    assert_eq!(attribute(resource, "service.name"), Some("tcpobs".into()));
    assert_eq!(attribute(resource, "k8s.node.name"), Some(NODE.into()));
    assert!(attribute(resource, "host.name").is_some(), "{resource:#}");
}

fn connection_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "connection")
        .collect()
}

/// A histogram's samples in an exposition: (le, cumulative count) for `labels`.
fn buckets(exposition: &str, family: &str, labels: &str) -> Vec<(f64, u64)> {
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&format!("{family}_bucket{{"))?;
            let (inside, value) = rest.split_once("} ")?;
            if !inside.contains(labels) {
                return None;
            }
            let le = inside.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until every record handed to the exporter is exported or counted dropped; returns
/// /metrics at that moment.
fn settled(daemon: &Daemon, signals: &[&str]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, exposition) = daemon.api("GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let value = |sample: &str| sample_value(&exposition, sample).unwrap_or(-1.0);
        let pending: Vec<(&str, f64)> = signals
            .iter()
            .map(|signal| {
                let dropped: f64 = ["queue_full", "export_failed", "shutdown"]
                    .iter()
                    .map(|reason| {
                        value(&format!(
                            "tcpobs_otlp_dropped_total{{signal=\"{signal}\",reason=\"{reason}\"}}"
                        ))
                    })
                    .sum();
                let offered = value(&format!("tcpobs_otlp_offered_total{{signal=\"{signal}\"}}"));
                let exported = value(&format!(
                    "tcpobs_otlp_exported_total{{signal=\"{signal}\"}}"
                ));
                (*signal, offered - exported - dropped)
            })
            .collect();
        if pending.iter().all(|(_, n)| *n == 0.0) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "offered != exported + dropped: {pending:?}\n{exposition}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Equal but for the last bit: the exposition and the receivers print a double with
/// different digits, and serde_json's default parsing does not always round the last one
/// correctly.
fn same_f64(a: f64, b: f64) -> bool {
    (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs())
}

fn counter(exposition: &str, sample: &str) -> f64 {
    sample_value(exposition, sample).unwrap_or_else(|| panic!("no {sample}"))
}

/// curl making two requests on one connection to nginx, a refused connect, and a server
/// that never closes after its client did (CLOSE_WAIT, an anomaly), all traced and sent.
fn http_refused_and_anomaly(kind: Kind, protocol: &str) {
    let nginx = Nginx::start(closed_port(), "75s");
    let refused = closed_port();
    let (listener, lingering) = listen("127.0.0.1:0");
    let receiver = Receiver::start(kind);
    let ports = format!("{},{refused},{}", nginx.port, lingering.port());
    let daemon = start_daemon(
        &receiver,
        protocol,
        &["--port", &ports, "--threshold-close-wait", "1s"],
        &[],
    );

    let body = curl(&[&nginx.url("/"), &nginx.url("/")]);
    assert_eq!(body, BODY.repeat(2));
    assert!(TcpStream::connect(("127.0.0.1", refused)).is_err());
    let closing = TcpStream::connect(lingering).unwrap();
    let (mut held, _) = listener.accept().unwrap();
    drop(closing);
    daemon.wait_events("the CLOSE_WAIT anomaly", |events| {
        events.iter().any(|e| e["type"] == "anomaly")
    });
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    drop(held);

    let events = daemon.wait_events("every connection", |events| {
        let connections = connection_events(events);
        let found = |check: &dyn Fn(&&Value) -> bool| connections.iter().any(check);
        found(&|e| e["comm"] == "curl")
            && found(&|e| e["comm"] == "nginx" && e["partial"] == false)
            && found(&|e| e["connect_failure"] == "refused")
            && found(&|e| e["role"] == "server" && e["local_port"] == lingering.port())
    });
    let connections = connection_events(&events);
    let find = |check: &dyn Fn(&&&Value) -> bool| -> &Value {
        connections.iter().find(check).copied().unwrap()
    };
    let by_curl = find(&|e| e["comm"] == "curl");
    let by_nginx = find(&|e| e["comm"] == "nginx" && e["partial"] == false);
    let failed = find(&|e| e["connect_failure"] == "refused");
    let stuck = find(&|e| e["role"] == "server" && e["local_port"] == lingering.port());
    let anomaly = events.iter().find(|e| e["type"] == "anomaly").unwrap();
    assert_eq!(by_curl["exchanges"], 2, "{by_curl:#}");

    let id = |event: &Value| event["id"].as_u64().unwrap();
    let received = receiver.wait_for("the four traces and the anomaly", |received| {
        let complete = [by_curl, by_nginx, failed, stuck]
            .iter()
            .all(|event| received.trace_of(id(event)).is_some())
            && !received.logs_named("tcpobs.anomaly").is_empty();
        complete.then(|| Received {
            spans: received.spans.clone(),
            logs: received.logs.clone(),
            metrics: Vec::new(),
        })
    });
    for event in [by_curl, by_nginx, failed, stuck] {
        assert_trace(&received.trace_of(id(event)).unwrap(), event);
    }

    // The request: no error.
    let request = received.trace_of(id(by_curl)).unwrap();
    assert!(request.iter().all(|span| !is_error(span)), "{request:#?}");
    let exchanges: Vec<&Value> = request.iter().filter(|s| s["name"] == "exchange").collect();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(
        attribute(exchanges[1], "tcpobs.exchange.seq"),
        Some(2.into())
    );

    // The refused connect: an error, on the root and the connect, with the reason.
    let refusal = received.trace_of(id(failed)).unwrap();
    let connect = refusal.iter().find(|s| s["name"] == "connect").unwrap();
    for span in [&refusal[0], connect] {
        assert!(is_error(span), "{span:#}");
        assert_eq!(span["status"]["message"], "connect failed: refused");
    }
    assert_eq!(attribute(&refusal[0], "error.type"), Some("refused".into()));

    // The connection's log record: the event's time, linked to its trace.
    let log = received
        .logs_named("tcpobs.connection")
        .into_iter()
        .find(|log| attribute(log, "tcpobs.connection.id") == Some(id(by_curl).into()))
        .expect("curl's connection log record");
    assert_eq!(log["trace_id"], request[0]["trace_id"]);
    assert_eq!(log["span_id"], request[0]["span_id"]);
    assert_eq!(
        nanos(log, "time_unix_nano") / 1_000,
        event_micros(by_curl["time"].as_str().unwrap())
    );
    assert_eq!(log["severity_text"], "INFO");

    // The anomaly: WARN, the event's time and fields, the hint as its body, and the trace
    // its connection sent when it closed.
    let warning = received.logs_named("tcpobs.anomaly")[0];
    assert_eq!(warning["severity_number"], "SEVERITY_NUMBER_WARN");
    assert_eq!(warning["severity_text"], "WARN");
    assert_eq!(
        nanos(warning, "time_unix_nano") / 1_000,
        event_micros(anomaly["time"].as_str().unwrap())
    );
    assert_eq!(
        attribute(warning, "tcpobs.phase"),
        Some("close_wait".into())
    );
    assert_eq!(
        attribute(warning, "network.local.port"),
        Some(lingering.port().into())
    );
    assert_eq!(warning["body"]["string_value"], anomaly["hint"]);
    let stuck_trace = received.trace_of(id(stuck)).unwrap();
    assert_eq!(warning["trace_id"], stuck_trace[0]["trace_id"]);

    // Metrics: the handshake histogram and the refused connect, as /metrics has them.
    let exposition = settled(&daemon, &["traces", "logs"]);
    let family = "tcpobs_handshake_duration_seconds";
    let cumulative = buckets(&exposition, family, "role=\"client\"");
    let count = counter(&exposition, &format!("{family}_count{{role=\"client\"}}")) as u64;
    let refusals = counter(
        &exposition,
        "tcpobs_connect_failures_total{reason=\"refused\"}",
    ) as i64;
    assert!(
        count >= 1,
        "curl's connection, and the one left in CLOSE_WAIT"
    );
    let point = receiver.wait_for("the handshake histogram", |received| {
        received
            .points("system.network.tcp.handshake.duration")
            .into_iter()
            .find(|p| {
                attribute(p, "network.tcp.handshake.role") == Some("client".into())
                    && p["count"] == count
            })
    });
    let bounds: Vec<f64> = cumulative
        .iter()
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .collect();
    let per_bucket: Vec<u64> = cumulative
        .iter()
        .scan(0, |below, (_, n)| {
            let bucket = n - *below;
            *below = *n;
            Some(bucket)
        })
        .collect();
    let received_bounds: Vec<f64> = point["explicit_bounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    assert_eq!(received_bounds.len(), bounds.len());
    for (got, want) in received_bounds.iter().zip(&bounds) {
        assert!(
            same_f64(*got, *want),
            "tcpobs's own buckets: {got} != {want}"
        );
    }
    let received_counts: Vec<u64> = point["bucket_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(received_counts, per_bucket);
    let sum = counter(&exposition, &format!("{family}_sum{{role=\"client\"}}"));
    assert!(
        same_f64(point["sum"].as_f64().unwrap(), sum),
        "{point:#} {sum}"
    );
    let outcome = receiver.wait_for("the refused connect's data point", |received| {
        received
            .points("system.network.tcp.connections")
            .into_iter()
            .find(|p| attribute(p, "error.type") == Some("refused".into()))
    });
    assert_eq!(outcome["as_int"].as_i64(), Some(refusals));

    let dropped = counter(
        &exposition,
        "tcpobs_otlp_dropped_total{signal=\"traces\",reason=\"queue_full\"}",
    );
    assert_eq!(dropped, 0.0);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn http_refused_and_anomaly_over_http_into_the_sink() {
    http_refused_and_anomaly(Kind::Sink, "http/protobuf");
}

#[test]
fn http_refused_and_anomaly_over_grpc_into_rotel() {
    http_refused_and_anomaly(Kind::Rotel, "grpc");
}

/// curl resolving a name and handshaking TLS: dns, connect, tls, exchange and close on one
/// trace; a handshake that fails makes its span and the root errors.
#[test]
fn a_tls_handshake_with_a_dns_name_over_grpc() {
    let scratch = Scratch::new("otlp-tls");
    let pki = Pki::new(&scratch);
    let port = closed_port();
    let _server = TlsServer::start(&pki, port, 2, true);
    let receiver = Receiver::start(Kind::Sink);
    let daemon = start_daemon(&receiver, "grpc", &["--port", &port.to_string()], &[]);
    let ran = curl_tls_host(&scratch, &pki, port);
    assert_eq!(ran.stdout(), "200", "{:?}", ran.output);
    let refused = python_tls_client(port, &pki.other_ca);
    assert_eq!(
        refused.stdout().trim(),
        "failed SSLCertVerificationError",
        "{:?}",
        refused.output
    );
    let client_of = |events: &[Value], pid: u32| -> Option<Value> {
        connection_events(events)
            .into_iter()
            .find(|e| e["pid"] == pid && e["role"] == "client")
            .cloned()
    };
    let events = daemon.wait_events("both clients' connections", |events| {
        client_of(events, ran.pid).is_some() && client_of(events, refused.pid).is_some()
    });
    let good = client_of(&events, ran.pid).unwrap();
    let bad = client_of(&events, refused.pid).unwrap();
    assert_eq!(good["dns_host"], TLS_HOST);
    assert_eq!(bad["tls_ok"], false, "{bad:#}");
    let id = |event: &Value| event["id"].as_u64().unwrap();
    let received = receiver.wait_for("both traces", |received| {
        Some((received.trace_of(id(&good))?, received.trace_of(id(&bad))?))
    });
    let (trace, failed) = received;
    assert_trace(&trace, &good);
    assert_eq!(names(&trace[1..4]), ["dns", "connect", "tls"], "{trace:#?}");
    assert_eq!(
        attribute(&trace[0], "server.address"),
        Some(TLS_HOST.into())
    );
    assert_eq!(
        attribute(&trace[1], "dns.question.name"),
        Some(TLS_HOST.into())
    );
    let span_of = |spans: &[Value], name: &str| -> Value {
        spans.iter().find(|s| s["name"] == name).unwrap().clone()
    };
    let duration =
        |span: &Value| nanos(span, "end_time_unix_nano") - nanos(span, "start_time_unix_nano");
    assert_eq!(
        duration(&span_of(&trace, "dns")),
        event_nanos(&good["dns_s"])
    );
    assert_eq!(
        duration(&span_of(&trace, "tls")),
        event_nanos(&good["tls_handshake_s"])
    );
    assert!(trace.iter().all(|span| !is_error(span)), "{trace:#?}");

    assert_trace(&failed, &bad);
    let tls = span_of(&failed, "tls");
    for span in [&failed[0], &tls] {
        assert!(is_error(span), "{span:#}");
        assert_eq!(span["status"]["message"], "TLS handshake failed");
    }
    assert_eq!(
        attribute(&failed[0], "error.type"),
        Some("tls_handshake_failed".into())
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}
