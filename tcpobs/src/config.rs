//! Command-line settings. Every flag also reads a `TCPOBS_*` environment variable; a flag wins
//! over the environment. Invalid values exit with code 2 and name the setting.

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory as _, Parser, ValueEnum, error::ErrorKind};

use crate::{
    loader::{LoadOptions, TracepointMode},
    output::{EventSelection, Format, justniffer::LineFormat},
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

It needs root (or CAP_BPF and CAP_PERFMON) and a kernel with BTF (Linux 6.3 or newer for the
send/receive tracepoints).

Output goes to stdout (or --output): by default one JSON object per closed connection;
--events exchanges adds one per exchange; --format justniffer prints justniffer-style lines.
On SIGINT or SIGTERM it detaches, reports connections still open as partial, and exits 0.";

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FormatKind {
    /// Newline-delimited JSON events.
    #[default]
    Json,
    /// One justniffer-style line per exchange (see --log-format).
    Justniffer,
}

#[derive(Debug, Parser)]
#[command(name = "tcpobs", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Output format.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_FORMAT")]
    pub format: FormatKind,

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
    pub log_format: Option<String>,

    /// Write events to this file (appending; created if missing) instead of stdout.
    #[arg(short, long, value_name = "PATH", env = "TCPOBS_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Which JSON events to write: `connections` (one per connection, at close), `exchanges`
    /// (also one per request/response exchange), or `none`.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_EVENTS")]
    pub events: EventSelection,

    /// Trace only connections whose local or remote port is N. Repeat for several ports.
    /// Filtering happens in the kernel: other sockets produce no events at all.
    #[arg(long = "port", value_name = "N", env = "TCPOBS_PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Which tracepoint flavour to attach: `auto` (tp_btf where it loads, else the classic
    /// tracepoint, per hook), `btf` or `classic`.
    #[arg(long, value_enum, default_value_t, env = "TCPOBS_TRACEPOINTS")]
    pub tracepoints: TracepointMode,

    /// Capacity of the kernel socket table (each traced socket takes one entry, about 250 bytes
    /// of kernel memory, allocated up front). When full, the least recently used socket is
    /// evicted and counted.
    #[arg(long, value_name = "N", default_value_t = 131_072, env = "TCPOBS_MAX_SOCKETS",
          value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    pub max_sockets: u32,

    /// Size of the kernel-to-daemon ring buffer in bytes: a power of two, at least 4096.
    /// Events that do not fit are dropped and counted.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, env = "TCPOBS_RINGBUF_BYTES",
          value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// How often the daemon drains the ring buffer when the kernel has not woken it
    /// (e.g. 10ms, 1s). Bounds the delay from a close to its event.
    #[arg(long, value_name = "DURATION", default_value = "10ms", env = "TCPOBS_DRAIN_INTERVAL",
          value_parser = parse_duration)]
    pub drain_interval: Duration,

    /// The daemon's own log level on stderr (error, warn, info, debug, trace), or a
    /// tracing filter such as `tcpobs=debug`.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        env = "TCPOBS_LOG_LEVEL"
    )]
    pub log_level: String,

    /// Kernel BTF to read `struct sock` offsets from.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/sys/kernel/btf/vmlinux",
        env = "TCPOBS_BTF",
        hide_short_help = true
    )]
    pub btf: PathBuf,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub load: LoadOptions,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub drain_interval: Duration,
    pub log_level: String,
}

impl Cli {
    /// Checks what clap cannot; errors look like clap's and exit with code 2.
    pub fn into_settings(self) -> Result<Settings, clap::Error> {
        let invalid = |message: String| Cli::command().error(ErrorKind::ValueValidation, message);
        let format = match (self.format, self.log_format) {
            (FormatKind::Json, None) => Format::Json(self.events),
            (FormatKind::Json, Some(_)) => {
                return Err(invalid(
                    "--log-format only applies to --format justniffer".to_owned(),
                ));
            }
            (FormatKind::Justniffer, line) => Format::Justniffer(match line {
                Some(line) => line
                    .parse::<LineFormat>()
                    .map_err(|err| invalid(format!("invalid value for --log-format: {err}")))?,
                None => LineFormat::default(),
            }),
        };
        if self.drain_interval.is_zero() {
            return Err(invalid("--drain-interval must be above zero".to_owned()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|err| {
            invalid(format!(
                "invalid value '{}' for --log-level: {err}",
                self.log_level
            ))
        })?;
        Ok(Settings {
            load: LoadOptions {
                btf_path: self.btf,
                tracepoints: self.tracepoints,
                max_sockets: self.max_sockets,
                ringbuf_bytes: self.ringbuf_bytes,
                ports: self.ports,
            },
            format,
            output: self.output,
            drain_interval: self.drain_interval,
            log_level: self.log_level,
        })
    }
}

fn parse_ringbuf_bytes(value: &str) -> Result<u32, String> {
    let bytes: u32 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of bytes"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("{bytes} is not a power of two of at least 4096"));
    }
    Ok(bytes)
}

/// Parses `250us`, `10ms`, `2s`, `1m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{value}` needs a unit: us, ms, s or m"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{value}` does not start with a number"))?;
    match unit {
        "us" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!(
            "unknown unit `{unit}` in `{value}`: use us, ms, s or m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcpobs").chain(args.iter().copied()))?.into_settings()
    }

    #[test]
    fn defaults() {
        let settings = parse(&[]).unwrap();
        assert!(matches!(
            settings.format,
            Format::Json(EventSelection::Connections)
        ));
        assert_eq!(settings.load.ringbuf_bytes, 4 << 20);
        assert_eq!(settings.load.max_sockets, 131_072);
        assert!(settings.load.ports.is_empty());
        assert_eq!(settings.drain_interval, Duration::from_millis(10));
    }

    #[test]
    fn ports_repeat_and_split() {
        let settings = parse(&["--port", "80", "--port", "443,8080"]).unwrap();
        assert_eq!(settings.load.ports, [80, 443, 8080]);
        assert!(parse(&["--port", "0"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_setting() {
        for (args, needle) in [
            (&["--ringbuf-bytes", "5000"][..], "--ringbuf-bytes"),
            (&["--drain-interval", "10"], "--drain-interval"),
            (&["--format", "xml"], "--format"),
            (&["--format", "justniffer", "-l", "%nope"], "--log-format"),
            (&["-l", "%connection"], "--log-format"),
            (&["--log-level", "loud=="], "--log-level"),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
