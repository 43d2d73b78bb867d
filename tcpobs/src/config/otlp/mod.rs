//! OTLP export settings: the OpenTelemetry exporter's standard environment variables, with
//! tcpobs's flags (`--otlp-endpoint`, `--otlp-protocol`, `--otlp-signals`, also
//! `TCPOBS_OTLP_*` and config file keys) for the ones people set on a command line. Export is
//! off unless an endpoint is given.
//!
//! Per signal (traces, logs, metrics), following the OTLP exporter specification:
//! - endpoint: `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, used as is (for OTLP/HTTP the full URL,
//!   `/` if it has no path); otherwise `--otlp-endpoint`, then `OTEL_EXPORTER_OTLP_ENDPOINT`,
//!   plus `v1/<signal>` for OTLP/HTTP. For gRPC the path is the service's. Only `http://`:
//!   `https://` is refused (no TLS in this build), as is a URL without a scheme.
//! - protocol: `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, `--otlp-protocol`,
//!   `OTEL_EXPORTER_OTLP_PROTOCOL`; `http/protobuf` (the default) or `grpc`.
//! - headers: `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`
//!   (`key=value,...`, values percent-decoded).
//! - timeout of one request: `OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`
//!   (milliseconds, 10 s by default).
//! - compression: only `none` (`gzip` is refused).
//! - on or off: `--otlp-signals` (all three by default), `OTEL_<SIGNAL>_EXPORTER=none`,
//!   `OTEL_SDK_DISABLED=true`.
//!
//! Queues and batches: `OTEL_BSP_*` (traces) and `OTEL_BLRP_*` (logs) `SCHEDULE_DELAY`,
//! `MAX_QUEUE_SIZE`, `MAX_EXPORT_BATCH_SIZE`; the metrics' period is
//! `OTEL_METRIC_EXPORT_INTERVAL`, their temporality cumulative (the only
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` taken). The resource: `service.name` `tcpobs` (or
//! `OTEL_SERVICE_NAME`), `service.version`, `host.name`, and `OTEL_RESOURCE_ATTRIBUTES` (which
//! wins; `k8s.node.name` comes from there).
//!
//! Every value is checked at start-up; a bad one exits with code 2 and names the variable or
//! flag.

use std::{fmt, time::Duration};

use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use thiserror::Error;

/// One of the three OTLP signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub const ALL: [Self; 3] = [Self::Traces, Self::Logs, Self::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
            Self::Metrics => "metrics",
        }
    }

    /// Its part of a variable's name: `OTEL_EXPORTER_OTLP_<this>_ENDPOINT`.
    fn env(self) -> &'static str {
        match self {
            Self::Traces => "TRACES",
            Self::Logs => "LOGS",
            Self::Metrics => "METRICS",
        }
    }

    /// The gRPC method that takes its Export requests.
    fn grpc_path(self) -> &'static str {
        match self {
            Self::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Self::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Self::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How OTLP travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/HTTP: a POST of the protobuf message (HTTP/1.1).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC (HTTP/2).
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::Grpc => "grpc",
        }
    }
}

/// Where and how one signal is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub protocol: Protocol,
    /// `host:port`, as connected to and sent as the `Host` (`:authority`).
    pub authority: String,
    /// OTLP/HTTP: the signal's path; gRPC: `/<service>/Export`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Bounds one request, connecting included.
    pub timeout: Duration,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "http://{}{} ({})",
            self.authority,
            self.path,
            self.protocol.as_str()
        )
    }
}

/// A queue and its batches (traces and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Records waiting to be sent, at most; more are dropped and counted.
    pub queue: usize,
    /// Records per Export request, at most.
    pub batch: usize,
    /// A batch that is not full goes out this long after its first record.
    pub delay: Duration,
}

/// The settings of OTLP export, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    /// Per signal ([`Signal::index`]): where it goes, `None` when off.
    pub targets: [Option<Target>; 3],
    /// Resource attributes, in the order they are sent.
    pub resource: Vec<(String, String)>,
    pub traces: Batching,
    pub logs: Batching,
    /// How often metrics are sent.
    pub metrics_interval: Duration,
}

impl Default for OtlpSettings {
    /// Export off.
    fn default() -> Self {
        Self {
            targets: [None, None, None],
            resource: Vec::new(),
            traces: Batching {
                queue: 2048,
                batch: 512,
                delay: Duration::from_secs(5),
            },
            logs: Batching {
                queue: 2048,
                batch: 512,
                delay: Duration::from_secs(1),
            },
            metrics_interval: Duration::from_secs(60),
        }
    }
}

impl OtlpSettings {
    pub fn target(&self, signal: Signal) -> Option<&Target> {
        self.targets[signal.index()].as_ref()
    }

    pub fn enabled(&self) -> bool {
        self.targets.iter().any(Option::is_some)
    }

    /// For `GET /config`: where each signal goes (headers are left out: they may hold
    /// credentials).
    pub(crate) fn describe(&self) -> Value {
        if !self.enabled() {
            return Value::Null;
        }
        let target = |signal: Signal| self.target(signal).map(ToString::to_string);
        json!({
            "traces": target(Signal::Traces),
            "logs": target(Signal::Logs),
            "metrics": target(Signal::Metrics),
        })
    }
}

/// The flags' part: `--otlp-endpoint`, `--otlp-protocol`, `--otlp-signals` (`None`: not
/// given, every signal).
#[derive(Clone, Debug, Default)]
pub(crate) struct OtlpFlags {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    pub signals: Option<Vec<Signal>>,
}

/// A setting that is refused, and why; the message names the variable or flag.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid value for {setting}: {problem}")]
pub struct OtlpError {
    pub setting: String,
    pub problem: String,
}

fn refuse(setting: impl Into<String>, problem: impl Into<String>) -> OtlpError {
    OtlpError {
        setting: setting.into(),
        problem: problem.into(),
    }
}

/// Reads the variables through `env` (empty values count as unset, as the specification
/// says) and checks them with the flags.
pub(crate) fn resolve(
    flags: &OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OtlpSettings, OtlpError> {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut settings = OtlpSettings::default();
    settings.resource = resource(&var)?;
    settings.traces = batching(&var, "OTEL_BSP", settings.traces)?;
    settings.logs = batching(&var, "OTEL_BLRP", settings.logs)?;
    if let Some(ms) = millis(&var, "OTEL_METRIC_EXPORT_INTERVAL")? {
        if ms.is_zero() {
            return Err(refuse("OTEL_METRIC_EXPORT_INTERVAL", "must be above zero"));
        }
        settings.metrics_interval = ms;
    }
    let temporality = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
    match var(temporality).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("cumulative") => {}
        Some(other) => {
            return Err(refuse(
                temporality,
                format!(
                    "`{other}`: tcpobs sends cumulative metrics (its counters and histograms \
                     run from its start)"
                ),
            ));
        }
    }
    if let Some(disabled) = var("OTEL_SDK_DISABLED") {
        match disabled.to_ascii_lowercase().as_str() {
            "true" => return Ok(settings),
            "false" => {}
            _ => return Err(refuse("OTEL_SDK_DISABLED", "expected true or false")),
        }
    }
    for signal in Signal::ALL {
        let chosen = flags
            .signals
            .as_ref()
            .is_none_or(|signals| signals.contains(&signal));
        let exporter = format!("OTEL_{}_EXPORTER", signal.env());
        let wanted = match var(&exporter).as_deref() {
            None | Some("otlp") => chosen,
            Some("none") => false,
            Some(other) => {
                return Err(refuse(
                    exporter,
                    format!("`{other}`: tcpobs exports `otlp` (or `none`)"),
                ));
            }
        };
        if !wanted {
            continue;
        }
        let target = target(signal, flags, &var)?;
        if target.is_none() && flags.signals.is_some() {
            return Err(refuse(
                "--otlp-signals",
                format!(
                    "{} needs an endpoint: --otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT or \
                     OTEL_EXPORTER_OTLP_{}_ENDPOINT",
                    signal.as_str(),
                    signal.env()
                ),
            ));
        }
        settings.targets[signal.index()] = target;
    }
    Ok(settings)
}

/// The signal's target, `None` without an endpoint.
fn target(
    signal: Signal,
    flags: &OtlpFlags,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Target>, OtlpError> {
    let own = |what: &str| format!("OTEL_EXPORTER_OTLP_{}_{what}", signal.env());
    let generic = |what: &str| format!("OTEL_EXPORTER_OTLP_{what}");
    let (protocol_setting, protocol) = match var(&own("PROTOCOL")) {
        Some(value) => (own("PROTOCOL"), Some(value)),
        None => match flags.protocol {
            Some(protocol) => ("--otlp-protocol".to_owned(), Some(protocol.as_str().into())),
            None => (generic("PROTOCOL"), var(&generic("PROTOCOL"))),
        },
    };
    let protocol = match protocol.as_deref() {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some("http/json") => {
            return Err(refuse(
                protocol_setting,
                "http/json is not supported: use http/protobuf or grpc",
            ));
        }
        Some(other) => {
            return Err(refuse(
                protocol_setting,
                format!("`{other}`: use http/protobuf or grpc"),
            ));
        }
    };
    let (endpoint_setting, url, own_endpoint) = match var(&own("ENDPOINT")) {
        Some(url) => (own("ENDPOINT"), url, true),
        None => match &flags.endpoint {
            Some(url) => ("--otlp-endpoint".to_owned(), url.trim().to_owned(), false),
            None => match var(&generic("ENDPOINT")) {
                Some(url) => (generic("ENDPOINT"), url, false),
                None => return Ok(None),
            },
        },
    };
    let (authority, base_path) = split_url(&url).map_err(|problem| {
        refuse(
            endpoint_setting.clone(),
            format!("`{url}`: {problem} (OTLP/TLS is not built in)"),
        )
    })?;
    let path = match protocol {
        Protocol::Grpc => signal.grpc_path().to_owned(),
        Protocol::HttpProtobuf if own_endpoint => match base_path {
            "" => "/".to_owned(),
            path => path.to_owned(),
        },
        Protocol::HttpProtobuf => {
            format!("{}/v1/{}", base_path.trim_end_matches('/'), signal.as_str())
        }
    };
    let headers_setting = [own("HEADERS"), generic("HEADERS")]
        .into_iter()
        .find(|name| var(name).is_some());
    let headers = match &headers_setting {
        Some(name) => headers(name, &var(name).unwrap_or_default())?,
        None => Vec::new(),
    };
    for name in [own("COMPRESSION"), generic("COMPRESSION")] {
        match var(&name).as_deref() {
            None | Some("none") => {}
            Some(other) => {
                return Err(refuse(
                    name,
                    format!("`{other}`: tcpobs sends uncompressed (none)"),
                ));
            }
        }
    }
    let mut timeout = Duration::from_secs(10);
    for name in [generic("TIMEOUT"), own("TIMEOUT")] {
        if let Some(value) = millis(var, &name)? {
            if value.is_zero() {
                return Err(refuse(name, "must be above zero"));
            }
            timeout = value;
        }
    }
    Ok(Some(Target {
        protocol,
        authority,
        path,
        headers,
        timeout,
    }))
}

/// `http://host[:port][/path]` → (`host:port`, path). The port defaults to 80, as in any
/// `http://` URL.
fn split_url(url: &str) -> Result<(String, &str), &'static str> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err("https is not supported: use http:// (a node-local collector)");
        }
        _ => return Err("expected http://HOST:PORT"),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.starts_with(':') || authority.contains('@') {
        return Err("expected http://HOST:PORT");
    }
    let has_port = match authority.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((host, port)) => {
            !host.is_empty() && !port.contains(']') && {
                port.parse::<u16>().map_err(|_| "bad port")?;
                true
            }
        }
        None => false,
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

/// `key=value,key2=value2`, values percent-decoded (the W3C baggage format the
/// specification uses).
fn pairs(setting: &str, text: &str) -> Result<Vec<(String, String)>, OtlpError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| refuse(setting, format!("`{pair}` is not key=value")))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(refuse(setting, format!("`{pair}` has no key")));
            }
            Ok((key.to_owned(), percent_decode(value.trim())))
        })
        .collect()
}

fn headers(setting: &str, text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, OtlpError> {
    pairs(setting, text)?
        .into_iter()
        .map(|(key, value)| {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| refuse(setting, format!("`{key}` is not a header name")))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                refuse(
                    setting,
                    format!("the value of `{key}` is not a header value"),
                )
            })?;
            Ok((name, value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn millis(var: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<Duration>, OtlpError> {
    var(name)
        .map(|value| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| refuse(name, format!("`{value}` is not a number of milliseconds")))
        })
        .transpose()
}

fn batching(
    var: &dyn Fn(&str) -> Option<String>,
    prefix: &str,
    default: Batching,
) -> Result<Batching, OtlpError> {
    let count = |what: &str, default: usize| -> Result<usize, OtlpError> {
        let name = format!("{prefix}_{what}");
        match var(&name) {
            None => Ok(default),
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| refuse(name, format!("`{value}`: expected 1 to 1000000"))),
        }
    };
    let queue = count("MAX_QUEUE_SIZE", default.queue)?;
    let batch = count("MAX_EXPORT_BATCH_SIZE", default.batch.min(queue))?;
    if batch > queue {
        return Err(refuse(
            format!("{prefix}_MAX_EXPORT_BATCH_SIZE"),
            format!("{batch} is more than {prefix}_MAX_QUEUE_SIZE ({queue})"),
        ));
    }
    let name = format!("{prefix}_SCHEDULE_DELAY");
    let delay = millis(var, &name)?.unwrap_or(default.delay);
    if delay.is_zero() {
        return Err(refuse(name, "must be above zero"));
    }
    Ok(Batching {
        queue,
        batch,
        delay,
    })
}

/// The resource's attributes: tcpobs's, then `OTEL_RESOURCE_ATTRIBUTES`, then
/// `OTEL_SERVICE_NAME`; a later one replaces an earlier one of the same key.
fn resource(var: &dyn Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, OtlpError> {
    let mut attributes = vec![
        ("service.name".to_owned(), "tcpobs".to_owned()),
        (
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    if let Some(host) = host_name() {
        attributes.push(("host.name".to_owned(), host));
    }
    let mut set = |key: String, value: String| match attributes.iter_mut().find(|(k, _)| *k == key)
    {
        Some(slot) => slot.1 = value,
        None => attributes.push((key, value)),
    };
    if let Some(text) = var("OTEL_RESOURCE_ATTRIBUTES") {
        for (key, value) in pairs("OTEL_RESOURCE_ATTRIBUTES", &text)? {
            set(key, value);
        }
    }
    if let Some(name) = var("OTEL_SERVICE_NAME") {
        set("service.name".to_owned(), name);
    }
    Ok(attributes)
}

/// This host's name (the UTS namespace's: in a pod without host networking, the pod's;
/// `OTEL_RESOURCE_ATTRIBUTES` can say `host.name`).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests;
