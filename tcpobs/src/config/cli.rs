//! The command line: every flag with its `TCPOBS_*` variable, help text and value parser.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::{
    config::{
        live::{CgroupRef, Cidr, EventSelection, Sample, ValueError},
        otlp::{Protocol, Signal},
    },
    export::metrics::labels::LabelSpec,
    kernel::loader::{StrategyChoice, StrategyError, TracepointMode},
};

const ABOUT: &str = "eBPF TCP connection lifecycle tracer: handshake time, request/response \
                     exchanges, idle gaps, reuse, and who closed each connection and how.";

const LONG_ABOUT: &str = "\
eBPF TCP connection lifecycle tracer.

tcpobs watches every TCP connection on this host from inside the kernel and reports, for each
one: how long the handshake took, its request/response exchanges (justniffer's timings: idle
before the first request, request, time to first response byte, response, idle after), how it
was reused (unique, start, continue, last), and who closed it and how (client or server, FIN,
RST or timeout). No packet capture and no change to applications.

It needs root (or CAP_BPF and CAP_PERFMON) and a kernel with BTF (Linux 5.10 or newer; it
attaches by fentry, tracepoints or kprobes, whichever the kernel allows, per hook family:
--probe-strategy).

With --phases on (the default) it also times name resolution (the C library's getaddrinfo)
and TLS handshakes (OpenSSL), on the host and in containers, and ties them to connections.

Events go to stdout (or --output): by default one JSON object per closed connection plus
anomaly events; --events exchanges adds one per exchange; --format justniffer prints
justniffer-style lines. Prometheus metrics and health are served on --listen (TLS and basic
auth with --web-config-file); the live connection table and runtime settings on
--admin-listen (a Unix socket by default). On SIGINT or SIGTERM it detaches, reports
connections still open as partial, and exits 0; on SIGHUP it re-reads --config.

With --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) it also sends each connection as a trace,
the events as log records and the metrics to an OpenTelemetry collector, by OTLP/HTTP or
OTLP/gRPC; the other OTEL_EXPORTER_OTLP_* and OTEL_* variables apply.

Every setting can also come from a TCPOBS_* environment variable or a key of the --config
file (the long flag name); a flag beats the environment, which beats the file.";

/// `on` or `off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    #[default]
    On,
    Off,
}

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatKind {
    /// Newline-delimited JSON events.
    #[default]
    Json,
    /// One justniffer-style line per exchange (see --log-format).
    Justniffer,
}

#[derive(Debug, Parser)]
#[command(name = "tcpobs", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// TOML file with settings (keys are the long flag names); re-read on SIGHUP.
    #[arg(long, value_name = "PATH", env = "TCPOBS_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Address for the metrics API (/metrics, /healthz, /readyz), or `none`. With
    /// --web-config-file it serves TLS and asks for basic auth.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9752",
        env = "TCPOBS_LISTEN"
    )]
    pub(crate) listen: String,

    /// Address for the admin API: every route, /connections and /config (whose PUT changes
    /// settings) included. `unix:PATH` is a socket only the daemon's user can open;
    /// `ADDR:PORT` needs --web-config-file with basic_auth_users; `none` for no admin API.
    #[arg(
        long,
        value_name = "unix:PATH|ADDR:PORT|none",
        default_value = "unix:/run/tcpobs/admin.sock",
        env = "TCPOBS_ADMIN_LISTEN"
    )]
    pub(crate) admin_listen: String,

    /// TLS and basic auth for the HTTP API, in the Prometheus exporter-toolkit's web config
    /// format (tls_server_config, basic_auth_users, http_server_config: the file
    /// node_exporter reads). Certificates and users are re-read on SIGHUP.
    #[arg(long, value_name = "PATH", env = "TCPOBS_WEB_CONFIG_FILE")]
    pub(crate) web_config_file: Option<PathBuf>,

    /// Most open connections per HTTP listener; past it, a new connection closes the oldest
    /// idle one.
    #[arg(long, value_name = "N", default_value_t = 256, env = "TCPOBS_HTTP_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..=65_536), hide_short_help = true)]
    pub(crate) http_max_connections: u32,

    /// Output format.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_FORMAT")]
    pub(crate) format: FormatKind,

    /// justniffer line format for --format justniffer, e.g. '%request.timestamp %dest.port
    /// %connection.time %connection %close.originator'. Default: the seed article's format.
    /// Keywords: %request.timestamp %source.ip %source.port %dest.ip %dest.port
    /// %connection.time %idle.time.0 %request.time %response.time %response.time.begin
    /// %response.time.end %idle.time.1 %session.time %session.requests %connection
    /// %close.originator %request.size %response.size. `%%` is a literal percent sign.
    #[arg(
        short = 'l',
        long = "log-format",
        value_name = "FORMAT",
        env = "TCPOBS_LOG_FORMAT"
    )]
    pub(crate) log_format: Option<String>,

    /// Write events to this file (appending; created if missing) instead of stdout.
    #[arg(short, long, value_name = "PATH", env = "TCPOBS_OUTPUT")]
    pub(crate) output: Option<PathBuf>,

    /// Events waiting to be written, at most, in bytes. A reader of the output slower than the
    /// events (or a stalled disk) never holds up tracing: past this, events are dropped and
    /// counted (`tcpobs_output_events_dropped_total{reason="output_slow"}`).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20,
          env = "TCPOBS_OUTPUT_QUEUE_BYTES", hide_short_help = true,
          value_parser = clap::value_parser!(u32).range(65_536..=1 << 30))]
    pub(crate) output_queue_bytes: u32,

    /// Which events to write: `connections` (one per connection at close, plus anomalies),
    /// `exchanges` (also one per exchange), `anomalies` (only anomalies and the connections
    /// that breached a threshold), or `none`. Runtime setting.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_EVENTS")]
    pub(crate) events: EventSelection,

    /// Sample the event output: per second, the first N events, then every Mth
    /// (`first=100,thereafter=10`). Left-out events are counted. Runtime setting.
    #[arg(long, value_name = "first=N,thereafter=M", env = "TCPOBS_SAMPLE")]
    pub(crate) sample: Option<Sample>,

    /// Slow handshake threshold; also how long SYN_SENT may last before the connection is
    /// flagged stuck. `0` turns it off. Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "1s", env = "TCPOBS_THRESHOLD_HANDSHAKE", value_parser = parse_duration)]
    pub(crate) threshold_handshake: Duration,

    /// Slow time-to-first-byte threshold. Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "1s", env = "TCPOBS_THRESHOLD_FIRST_BYTE", value_parser = parse_duration)]
    pub(crate) threshold_first_byte: Duration,

    /// Idle gap threshold; an ESTABLISHED connection idle this long is flagged as a zombie.
    /// Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "5m", env = "TCPOBS_THRESHOLD_IDLE", value_parser = parse_duration)]
    pub(crate) threshold_idle: Duration,

    /// How long CLOSE_WAIT may last (the application not closing after the peer did).
    /// Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "TCPOBS_THRESHOLD_CLOSE_WAIT", value_parser = parse_duration)]
    pub(crate) threshold_close_wait: Duration,

    /// How long FIN_WAIT2 may last (the peer not finishing its close). Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "60s", env = "TCPOBS_THRESHOLD_FIN_WAIT2", value_parser = parse_duration)]
    pub(crate) threshold_fin_wait2: Duration,

    /// How long an ESTABLISHED connection may carry no data at all. Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "TCPOBS_THRESHOLD_NO_DATA", value_parser = parse_duration)]
    pub(crate) threshold_no_data: Duration,

    /// How long a connection may have data waiting behind a zero window from a peer that is
    /// alive (the peer application stopped reading) before it is flagged `stalled_receiver`.
    /// Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "TCPOBS_THRESHOLD_STALLED_RECEIVER", value_parser = parse_duration)]
    pub(crate) threshold_stalled_receiver: Duration,

    /// How long sent data may go unacknowledged while the kernel retransmits before the
    /// connection is flagged `blackhole` (the peer or the path is gone). Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "TCPOBS_THRESHOLD_BLACKHOLE", value_parser = parse_duration)]
    pub(crate) threshold_blackhole: Duration,

    /// How long a listener's accept queue may stay full before it is flagged
    /// `accept_queue_full` (the application stopped accepting). Runtime setting.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "TCPOBS_THRESHOLD_ACCEPT_QUEUE", value_parser = parse_duration)]
    pub(crate) threshold_accept_queue: Duration,

    /// Whether connections closed by a reset count as anomalies. Runtime setting.
    #[arg(long, value_name = "BOOL", default_value_t = true, env = "TCPOBS_ANOMALY_RESETS", action = clap::ArgAction::Set)]
    pub(crate) anomaly_resets: bool,

    /// How often the hang detector sweeps the live connections.
    #[arg(long, value_name = "DURATION", default_value = "1s", env = "TCPOBS_SWEEP_INTERVAL", value_parser = parse_duration)]
    pub(crate) sweep_interval: Duration,

    /// Trace only connections whose local or remote port is N. Repeatable, or comma-separated.
    /// Filtered in the kernel: other sockets cost one lookup and send nothing. Runtime setting.
    #[arg(long = "port", value_name = "N", env = "TCPOBS_PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) ports: Vec<u16>,

    /// Trace only connections whose local and remote ports are both not N.
    #[arg(long = "exclude-port", value_name = "N", env = "TCPOBS_EXCLUDE_PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) exclude_ports: Vec<u16>,

    /// Trace only connections whose local or remote address is in CIDR (10.0.0.0/8,
    /// 2001:db8::/32). Repeatable. Runtime setting.
    #[arg(
        long = "cidr",
        value_name = "CIDR",
        env = "TCPOBS_CIDR",
        value_delimiter = ','
    )]
    pub(crate) cidrs: Vec<Cidr>,

    /// Trace only connections whose addresses are both outside CIDR.
    #[arg(
        long = "exclude-cidr",
        value_name = "CIDR",
        env = "TCPOBS_EXCLUDE_CIDR",
        value_delimiter = ','
    )]
    pub(crate) exclude_cidrs: Vec<Cidr>,

    /// Trace only connections of process PID (the connecting process, or the one listening
    /// on the port of an accepted connection), and only its name resolutions (and TLS
    /// handshakes on no traced connection). Repeatable. Runtime setting.
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "TCPOBS_PID",
        value_delimiter = ','
    )]
    pub(crate) pids: Vec<u32>,

    /// Trace only connections not owned by process PID (nor its name resolutions, nor its
    /// TLS handshakes on no traced connection).
    #[arg(
        long = "exclude-pid",
        value_name = "PID",
        env = "TCPOBS_EXCLUDE_PID",
        value_delimiter = ','
    )]
    pub(crate) exclude_pids: Vec<u32>,

    /// Trace only connections (and name resolutions) of processes in this cgroup v2 (a path,
    /// absolute or relative to the cgroup v2 mount, normally /sys/fs/cgroup, or an id).
    /// Repeatable. Runtime setting.
    #[arg(
        long = "cgroup",
        value_name = "PATH|ID",
        env = "TCPOBS_CGROUP",
        value_delimiter = ','
    )]
    pub(crate) cgroups: Vec<CgroupRef>,

    /// Trace only connections (and name resolutions) of processes outside this cgroup v2.
    #[arg(
        long = "exclude-cgroup",
        value_name = "PATH|ID",
        env = "TCPOBS_EXCLUDE_CGROUP",
        value_delimiter = ','
    )]
    pub(crate) exclude_cgroups: Vec<CgroupRef>,

    /// Add a label to the per-connection metrics: `local_port`, `remote_port`, `comm`, `pod` or
    /// `namespace`, optionally `=top:N` (the N busiest values, default 10) or `=v1,v2` (an
    /// allowlist); other values become `other`. Each kept value costs about 230 series per
    /// role.
    #[arg(
        long = "label",
        value_name = "NAME[=top:N|=V,...]",
        env = "TCPOBS_LABEL"
    )]
    pub(crate) labels: Vec<LabelSpec>,

    /// Most distinct combinations of --label values; past it, new ones are `other`.
    #[arg(long, value_name = "N", default_value_t = 100, env = "TCPOBS_LABEL_SERIES_CAP",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) label_series_cap: u32,

    /// How to attach each hook family: `auto` (per family, the first of fentry, tracepoint,
    /// kprobe whose programs all load and attach), one of `fentry`, `tracepoint`, `kprobe`
    /// (every family that has it must use it; the others choose as with auto), and/or
    /// `family=strategy` for one family (families: state, connect, data, close, resets,
    /// retransmits, drops, accept, probes, errors), comma-separated, e.g.
    /// `kprobe,state=tracepoint`. An optional family (drops, accept, probes, errors) can be
    /// `family=off`, not attached: `accept=off` when the accept family falls back to the system
    /// call tracepoint (`tcpobs --check` says `family=accept strategy=tracepoint`), which slows
    /// every system call on the host by a few nanoseconds; `accept_wait_s` is then null.
    #[arg(long, value_name = "STRATEGY", default_value = "auto", env = "TCPOBS_PROBE_STRATEGY",
          value_parser = parse_strategy_choice)]
    pub(crate) probe_strategy: StrategyChoice,

    /// Load and attach every hook family, print how each is attached (one
    /// `family=NAME strategy=STRATEGY programs=TYPES` line per family), and exit: 0 if all
    /// attached, 1 naming what the kernel lacks otherwise.
    #[arg(long)]
    pub(crate) check: bool,

    /// Time name resolution (uprobes on the C library's getaddrinfo) and TLS handshakes
    /// (uprobes on OpenSSL's libssl.so.3), on the host and in containers, and tie them to
    /// connections (`dns_host`, `tls_handshake_s`, `phases`). `off` attaches no uprobes.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_PHASES")]
    pub(crate) phases: Switch,

    /// Defer each established connection's open event: one that closes within about 100 ms
    /// needs none (its close stands for it), which spares a churned connection three of its five
    /// ring buffer events; a connection that stays open reaches the live table, the gauges and
    /// the hang detector 100 to 200 ms after it is established instead of at once. `off` sends
    /// every open at once.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_DEFER_OPENS")]
    pub(crate) defer_opens: Switch,

    /// Look for the phase families' libraries under this directory only (tests).
    #[arg(long, value_name = "PATH", env = "TCPOBS_PHASES_LIB_ROOT", hide = true)]
    pub(crate) phases_lib_root: Option<PathBuf>,

    /// Which tracepoint flavour to attach: `auto` (tp_btf where it loads, else the classic
    /// tracepoint, per hook), `btf` or `classic`.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_TRACEPOINTS")]
    pub(crate) tracepoints: TracepointMode,

    /// Capacity of the kernel socket table (each traced or filtered-out socket takes one
    /// entry, about 530 bytes of kernel memory, allocated up front, and 32 bytes in the queue
    /// of close records the ring buffer could not take: about 70 MiB at the default). When
    /// full, the least recently used socket is evicted and counted.
    #[arg(long, value_name = "N", default_value_t = 131_072, env = "TCPOBS_MAX_SOCKETS",
          value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    pub(crate) max_sockets: u32,

    /// Size of the kernel-to-daemon ring buffer in bytes: a power of two, at least 4096.
    /// Events that do not fit are dropped and counted, except close records, which wait in the
    /// socket table until the daemon reads them.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, env = "TCPOBS_RINGBUF_BYTES",
          value_parser = parse_ringbuf_bytes)]
    pub(crate) ringbuf_bytes: u32,

    /// How often the daemon drains the ring buffer when the kernel has not woken it
    /// (e.g. 10ms, 1s). Bounds the delay from a close to its event, except for close records
    /// spilled from a full ring buffer, which wait until the daemon has caught up. After ten
    /// drains in a row find the ring empty, the timer stops until the kernel wakes the daemon
    /// with the next event.
    #[arg(long, value_name = "DURATION", default_value = "10ms", env = "TCPOBS_DRAIN_INTERVAL",
          value_parser = parse_duration)]
    pub(crate) drain_interval: Duration,

    /// The daemon's own log level on stderr (error, warn, info, debug, trace), or a
    /// tracing filter such as `tcpobs=debug`. Runtime setting.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        env = "TCPOBS_LOG_LEVEL"
    )]
    pub(crate) log_level: String,

    /// Where cgroup v2 is mounted, to find the cgroup of a connection's process (its container
    /// and pod). Default: the cgroup2 mount in /proc/self/mountinfo (/sys/fs/cgroup).
    #[arg(
        long,
        value_name = "PATH",
        env = "TCPOBS_CGROUP_ROOT",
        hide_short_help = true
    )]
    pub(crate) cgroup_root: Option<PathBuf>,

    /// The kubelet's pod log directory, whose `<namespace>_<name>_<uid>` entries name the pods
    /// on this node.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/log/pods",
        env = "TCPOBS_POD_LOG_ROOT",
        hide_short_help = true
    )]
    pub(crate) pod_log_root: PathBuf,

    /// Send traces, logs and metrics by OTLP to this collector (`http://HOST:PORT`; no TLS),
    /// as OTEL_EXPORTER_OTLP_ENDPOINT does (which it replaces; the per-signal
    /// OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_ENDPOINT replace it). Off unless an endpoint
    /// is given. See the README's OpenTelemetry section for the OTEL_* variables.
    #[arg(long, value_name = "URL", env = "TCPOBS_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,

    /// OTLP transport: `http/protobuf` (default) or `grpc`, as OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(
        long,
        value_enum,
        value_name = "PROTOCOL",
        env = "TCPOBS_OTLP_PROTOCOL"
    )]
    pub(crate) otlp_protocol: Option<Protocol>,

    /// Which OTLP signals to send (all three by default): `traces` (one trace per
    /// connection), `logs` (the events), `metrics`. Comma-separated.
    #[arg(
        long,
        value_enum,
        value_name = "SIGNALS",
        env = "TCPOBS_OTLP_SIGNALS",
        value_delimiter = ','
    )]
    pub(crate) otlp_signals: Option<Vec<Signal>>,

    /// Kernel BTF to read `struct sock` offsets from.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/sys/kernel/btf/vmlinux",
        env = "TCPOBS_BTF",
        hide_short_help = true
    )]
    pub(crate) btf: PathBuf,
}

fn parse_strategy_choice(value: &str) -> Result<StrategyChoice, StrategyError> {
    value.parse()
}

fn parse_ringbuf_bytes(value: &str) -> Result<u32, ValueError> {
    let bytes: u32 = value
        .parse()
        .map_err(|_| ValueError::NotBytes(value.to_owned()))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(ValueError::RingbufSize(bytes));
    }
    Ok(bytes)
}

/// Parses `0`, `250us`, `10ms`, `2s`, `1m`, `1h`, `1d`.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, ValueError> {
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| ValueError::DurationWithoutUnit(value.to_owned()))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| ValueError::DurationWithoutNumber(value.to_owned()))?;
    let seconds = |factor: u64| Duration::from_secs(number.saturating_mul(factor));
    match unit {
        "us" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(ValueError::DurationUnit {
            unit: unit.to_owned(),
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("ms").is_err());
    }

    /// clap wraps `--help` at 100 columns but keeps the text's own line breaks, so a longer
    /// line prints as a stray short line.
    #[test]
    fn help_text_lines_fit_the_terminal() {
        for line in LONG_ABOUT.lines() {
            assert!(line.len() <= 100, "too long for --help: {line:?}");
        }
    }
}
