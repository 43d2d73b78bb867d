//! The OTLP settings' tests: the specification's rules, precedence, and refusals.

use std::collections::HashMap;

use super::*;

fn resolve_with(flags: &OtlpFlags, vars: &[(&str, &str)]) -> Result<OtlpSettings, OtlpError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    resolve(flags, &|name| vars.get(name).cloned())
}

fn flags(endpoint: Option<&str>) -> OtlpFlags {
    OtlpFlags {
        endpoint: endpoint.map(str::to_owned),
        ..OtlpFlags::default()
    }
}

fn place(target: Option<&Target>) -> Option<(&str, &str, Protocol)> {
    target.map(|t| (t.authority.as_str(), t.path.as_str(), t.protocol))
}

#[test]
fn off_without_an_endpoint() {
    let settings = resolve_with(&OtlpFlags::default(), &[]).unwrap();
    assert!(!settings.enabled());
    assert_eq!(settings.describe(), Value::Null);
}

#[test]
fn http_endpoints_follow_the_specification_s_path_rules() {
    let settings = resolve_with(
        &OtlpFlags::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base/"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://logs.example:9000/custom/logs",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m.example"),
        ],
    )
    .unwrap();
    assert_eq!(
        place(settings.target(Signal::Traces)),
        Some(("collector:4318", "/base/v1/traces", Protocol::HttpProtobuf))
    );
    assert_eq!(
        place(settings.target(Signal::Logs)),
        Some(("logs.example:9000", "/custom/logs", Protocol::HttpProtobuf)),
        "a signal's own endpoint is used as is"
    );
    assert_eq!(
        place(settings.target(Signal::Metrics)),
        Some(("m.example:80", "/", Protocol::HttpProtobuf)),
        "no path: the root; no port: http's"
    );
}

#[test]
fn flags_stand_between_the_signal_s_variables_and_the_generic_ones() {
    let flags = OtlpFlags {
        endpoint: Some("http://[::1]:4317".into()),
        protocol: Some(Protocol::Grpc),
        signals: Some(vec![Signal::Traces, Signal::Metrics]),
    };
    let settings = resolve_with(
        &flags,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://127.0.0.1:4318",
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        place(settings.target(Signal::Traces)),
        Some((
            "[::1]:4317",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Protocol::Grpc
        ))
    );
    assert_eq!(settings.target(Signal::Logs), None, "not in --otlp-signals");
    assert_eq!(
        place(settings.target(Signal::Metrics)),
        Some(("127.0.0.1:4318", "/", Protocol::HttpProtobuf))
    );
}

#[test]
fn headers_timeouts_batches_and_the_resource() {
    let settings = resolve_with(
        &flags(Some("http://c:4318")),
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b, tenant=t1"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "only=logs"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.node.name=node-1,service.name=ignored,host.name=node-1",
            ),
            ("OTEL_SERVICE_NAME", "tcpobs-edge"),
        ],
    )
    .unwrap();
    let traces = settings.target(Signal::Traces).unwrap();
    assert_eq!(traces.headers.len(), 2);
    assert_eq!(traces.headers[0].0, "x-api-key");
    assert_eq!(traces.headers[0].1, "a b");
    assert_eq!(traces.timeout, Duration::from_millis(500));
    let logs = settings.target(Signal::Logs).unwrap();
    assert_eq!(
        logs.headers.len(),
        1,
        "the signal's own headers replace them"
    );
    assert_eq!(logs.timeout, Duration::from_millis(2500));
    assert_eq!(
        settings.traces,
        Batching {
            queue: 64,
            batch: 64,
            delay: Duration::from_millis(100)
        }
    );
    assert_eq!(settings.logs.batch, 10);
    assert_eq!(settings.metrics_interval, Duration::from_secs(1));
    let attribute = |key: &str| {
        settings
            .resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(attribute("service.name"), Some("tcpobs-edge"));
    assert_eq!(attribute("k8s.node.name"), Some("node-1"));
    assert_eq!(attribute("host.name"), Some("node-1"));
    assert_eq!(
        attribute("service.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        settings
            .resource
            .iter()
            .filter(|(k, _)| k == "host.name")
            .count(),
        1
    );
}

#[test]
fn signals_can_be_turned_off() {
    let settings = resolve_with(
        &flags(Some("http://c:4318")),
        &[("OTEL_TRACES_EXPORTER", "none")],
    )
    .unwrap();
    assert_eq!(settings.target(Signal::Traces), None);
    assert!(settings.target(Signal::Logs).is_some());
    let off = resolve_with(
        &flags(Some("http://c:4318")),
        &[("OTEL_SDK_DISABLED", "true")],
    )
    .unwrap();
    assert!(!off.enabled());
}

#[test]
fn bad_values_name_the_setting() {
    let signals_only = OtlpFlags {
        signals: Some(vec![Signal::Logs]),
        ..OtlpFlags::default()
    };
    for (flags, vars, setting, needle) in [
        (
            flags(Some("https://c:4318")),
            &[][..],
            "--otlp-endpoint",
            "https",
        ),
        (
            flags(None),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")][..],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://",
        ),
        (
            flags(None),
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:99999")][..],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "port",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")][..],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "udp")][..],
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            "udp",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")][..],
            "OTEL_EXPORTER_OTLP_HEADERS",
            "key=value",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")][..],
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "gzip",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")][..],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "milliseconds",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_RESOURCE_ATTRIBUTES", "a=1,b")][..],
            "OTEL_RESOURCE_ATTRIBUTES",
            "`b`",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_BSP_MAX_QUEUE_SIZE", "0")][..],
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "1 to",
        ),
        (
            flags(Some("http://c")),
            &[
                ("OTEL_BLRP_MAX_QUEUE_SIZE", "10"),
                ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "20"),
            ][..],
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
            "more than",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_LOGS_EXPORTER", "console")][..],
            "OTEL_LOGS_EXPORTER",
            "console",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")][..],
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "cumulative",
        ),
        (
            flags(Some("http://c")),
            &[("OTEL_METRIC_EXPORT_INTERVAL", "0")][..],
            "OTEL_METRIC_EXPORT_INTERVAL",
            "above zero",
        ),
        (
            signals_only,
            &[][..],
            "--otlp-signals",
            "logs needs an endpoint",
        ),
    ] {
        let err = resolve_with(&flags, vars).unwrap_err();
        assert_eq!(err.setting, setting, "{vars:?}: {err}");
        assert!(err.to_string().contains(needle), "{vars:?}: {err}");
    }
}

/// The flags are config file keys too, like every flag.
#[test]
fn the_flags_come_from_the_config_file_too() {
    let path = std::env::temp_dir().join(format!("tcpobs-otlp-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "otlp-endpoint = \"http://127.0.0.1:4317\"\notlp-protocol = \"grpc\"\n\
         otlp_signals = [\"logs\"]\n",
    )
    .unwrap();
    let settings = crate::config::Sources::new(["tcpobs", "--config", path.to_str().unwrap()])
        .load()
        .unwrap()
        .otlp;
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        place(settings.target(Signal::Logs)),
        Some((
            "127.0.0.1:4317",
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Protocol::Grpc
        ))
    );
    assert_eq!(settings.target(Signal::Traces), None);
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b%2Cc"), "a b,c");
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz"), "%zz");
}
