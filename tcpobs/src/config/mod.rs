//! Settings. Each has a flag, a `TCPOBS_*` environment variable and a key in the optional TOML
//! file (`--config`; keys are the long flag names, `-` or `_`), with precedence
//! flag > environment > file > default. Invalid values exit with code 2 and name the setting.
//! The settings that change while tcpobs runs ([`live::LiveSettings`]) can also change through
//! `PUT /config` and by re-reading the file on `SIGHUP` ([`control`]).
//!
//! The flags, with their help text and value parsers, are in `cli`, the file in `file`, and
//! reading all three (again on `SIGHUP`) in [`Sources`]; this module checks them into
//! [`Settings`].

mod cli;
pub mod control;
mod file;
pub mod live;
pub mod otlp;
#[cfg(test)]
mod proptests;
mod sources;

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory as _, error::ErrorKind};
use serde_json::{Value, json};

pub(crate) use self::cli::{FormatKind, Switch};
pub use self::{cli::Cli, sources::Sources};
use self::{
    control::check_log_level,
    live::{Filter, Filters, LiveSettings, Thresholds},
    otlp::{OtlpFlags, OtlpSettings},
};
use crate::{
    export::{
        http::web::Web,
        metrics::labels::LabelSpec,
        output::{Format, justniffer::LineFormat},
    },
    kernel::{
        filters::Resolved, folds::ExchangeOptions, libcalls::LibcallOptions, loader::LoadOptions,
    },
    metadata::MetaRoots,
};

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--check`: attach, report and exit.
    pub check: bool,
    pub(crate) load: LoadOptions,
    pub format: Format,
    pub output: Option<PathBuf>,
    /// `--output-queue-bytes`.
    pub output_queue_bytes: usize,
    /// The metrics API; `None`: none.
    pub(crate) listen: Option<SocketAddr>,
    /// The admin API; `None`: none.
    pub(crate) admin_listen: Option<Endpoint>,
    /// TLS and basic auth for the API (exporter-toolkit format).
    pub(crate) web_config: Option<PathBuf>,
    /// Most open connections per listener.
    pub(crate) http_max_connections: usize,
    /// Start-up values of the settings that can change while tcpobs runs.
    pub live: LiveSettings,
    pub(crate) drain_interval: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) labels: Vec<LabelSpec>,
    pub(crate) label_series_cap: usize,
    pub(crate) config: Option<PathBuf>,
    /// Where container and pod metadata are looked up.
    pub(crate) meta_roots: MetaRoots,
    /// OTLP export (off unless an endpoint is given).
    pub otlp: OtlpSettings,
}

impl Settings {
    /// The settings that need a restart, as `GET /config` shows them.
    pub(crate) fn statics(&self) -> Value {
        // A path need not be UTF-8; JSON's strings must (serde refuses such a `PathBuf`).
        let path = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
        json!({
            "config": path(&self.config),
            "listen": self.listen.map(|addr| addr.to_string()),
            "admin_listen": self.admin_listen.as_ref().map(ToString::to_string),
            "web_config_file": path(&self.web_config),
            "http_max_connections": self.http_max_connections,
            "format": match self.format { Format::Json => "json", Format::Justniffer(_) => "justniffer" },
            "output": path(&self.output),
            "output_queue_bytes": self.output_queue_bytes,
            "labels": self.labels.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "label_series_cap": self.label_series_cap,
            "probe_strategy": self.load.strategy.to_string(),
            "phases": if self.load.libcalls.enabled { "on" } else { "off" },
            "tracepoints": format!("{:?}", self.load.tracepoints).to_lowercase(),
            "max_sockets": self.load.max_sockets,
            "ringbuf_bytes": self.load.ringbuf_bytes,
            "drain_interval_s": self.drain_interval.as_secs_f64(),
            "sweep_interval_s": self.sweep_interval.as_secs_f64(),
            "otlp": self.otlp.describe(),
        })
    }
}

fn invalid(message: impl std::fmt::Display) -> clap::Error {
    Cli::command().error(ErrorKind::ValueValidation, message)
}

impl Cli {
    /// Checks what clap cannot; errors look like clap's and exit with code 2.
    pub(crate) fn into_settings(self) -> Result<Settings, clap::Error> {
        let format = match (self.format, self.log_format) {
            (FormatKind::Json, None) => Format::Json,
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
        for (name, interval) in [
            ("--drain-interval", self.drain_interval),
            ("--sweep-interval", self.sweep_interval),
        ] {
            if interval.is_zero() {
                return Err(invalid(format!("{name} must be above zero")));
            }
        }
        check_log_level(&self.log_level).map_err(|err| {
            invalid(format!(
                "invalid value '{}' for --log-level: {err}",
                self.log_level
            ))
        })?;
        let listen = match self.listen.as_str() {
            "none" | "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(format!(
                    "invalid value '{addr}' for --listen: expected ADDR:PORT or none"
                ))
            })?),
        };
        let admin_listen = match self.admin_listen.as_str() {
            "none" | "off" => None,
            value => Some(match value.strip_prefix("unix:") {
                Some("") => {
                    return Err(invalid(
                        "invalid value 'unix:' for --admin-listen: a socket path must follow \
                         unix:",
                    ));
                }
                Some(path) => Endpoint::Unix(path.into()),
                None => Endpoint::Tcp(value.parse().map_err(|_| {
                    invalid(format!(
                        "invalid value '{value}' for --admin-listen: expected unix:PATH, \
                         ADDR:PORT or none"
                    ))
                })?),
            }),
        };
        let web = match &self.web_config_file {
            Some(path) => Some(Web::check(path).map_err(|err| {
                invalid(format!(
                    "invalid value for --web-config-file: {}: {err}",
                    path.display()
                ))
            })?),
            None => None,
        };
        if let Some(Endpoint::Tcp(addr)) = &admin_listen {
            if web.as_ref().is_none_or(|web| web.users.is_empty()) {
                return Err(invalid(format!(
                    "--admin-listen {addr} is TCP: it needs --web-config-file with \
                     basic_auth_users, or anyone who reaches the port could change the \
                     daemon's settings; use --admin-listen unix:PATH"
                )));
            }
            if listen == Some(*addr) {
                return Err(invalid(format!(
                    "--admin-listen and --listen cannot both be {addr}"
                )));
            }
        }
        let filters = Filters {
            ports: Filter::from_flags("port", self.ports, self.exclude_ports).map_err(invalid)?,
            cidrs: Filter::from_flags("cidr", self.cidrs, self.exclude_cidrs).map_err(invalid)?,
            pids: Filter::from_flags("pid", self.pids, self.exclude_pids).map_err(invalid)?,
            cgroups: Filter::from_flags("cgroup", self.cgroups, self.exclude_cgroups)
                .map_err(invalid)?,
        };
        Resolved::new(&filters)
            .map_err(|err| invalid(format!("invalid value for --cgroup: {err}")))?;
        let live = LiveSettings {
            events: self.events,
            sample: self.sample,
            thresholds: Thresholds {
                handshake_s: self.threshold_handshake.as_secs_f64(),
                first_byte_s: self.threshold_first_byte.as_secs_f64(),
                idle_s: self.threshold_idle.as_secs_f64(),
                close_wait_s: self.threshold_close_wait.as_secs_f64(),
                fin_wait2_s: self.threshold_fin_wait2.as_secs_f64(),
                no_data_s: self.threshold_no_data.as_secs_f64(),
                resets: self.anomaly_resets,
                stalled_receiver_s: self.threshold_stalled_receiver.as_secs_f64(),
                blackhole_s: self.threshold_blackhole.as_secs_f64(),
                accept_queue_s: self.threshold_accept_queue.as_secs_f64(),
            },
            log_level: self.log_level,
            filters: filters.clone(),
        };
        live.validate()
            .map_err(|err| invalid(format!("invalid settings: {err}")))?;
        let otlp = otlp::resolve(
            &OtlpFlags {
                endpoint: self.otlp_endpoint,
                protocol: self.otlp_protocol,
                signals: self.otlp_signals,
            },
            &|name| std::env::var(name).ok(),
        )
        .map_err(invalid)?;
        Ok(Settings {
            check: self.check,
            load: LoadOptions {
                btf_path: self.btf,
                strategy: self.probe_strategy,
                tracepoints: self.tracepoints,
                max_sockets: self.max_sockets,
                ringbuf_bytes: self.ringbuf_bytes,
                filters,
                libcalls: LibcallOptions {
                    enabled: self.phases == Switch::On,
                    lib_root: self.phases_lib_root,
                },
                defer_opens: self.defer_opens == Switch::On,
                // Whether to fold is the metrics' call (`app::run`).
                exchanges: ExchangeOptions {
                    fold: None,
                    justniffer: matches!(format, Format::Justniffer(_)),
                },
            },
            format,
            output: self.output,
            output_queue_bytes: self.output_queue_bytes as usize,
            listen,
            admin_listen,
            web_config: self.web_config_file,
            http_max_connections: self.http_max_connections as usize,
            live,
            drain_interval: self.drain_interval,
            sweep_interval: self.sweep_interval,
            labels: self.labels,
            label_series_cap: self.label_series_cap as usize,
            config: self.config,
            meta_roots: MetaRoots {
                cgroup: self
                    .cgroup_root
                    .unwrap_or_else(|| crate::metadata::default_cgroup_root().to_path_buf()),
                pod_logs: self.pod_log_root,
                ..MetaRoots::default()
            },
            otlp,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{live::EventSelection, *};

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcpobs").chain(args.iter().copied()))?.into_settings()
    }

    #[test]
    fn defaults() {
        let settings = parse(&[]).unwrap();
        assert!(matches!(settings.format, Format::Json));
        assert_eq!(settings.live.events, EventSelection::Connections);
        assert_eq!(settings.load.ringbuf_bytes, 4 << 20);
        assert_eq!(
            settings.output_queue_bytes,
            crate::export::output::DEFAULT_QUEUE_BYTES
        );
        assert_eq!(settings.load.max_sockets, 131_072);
        assert_eq!(settings.load.filters, Filters::default());
        assert_eq!(settings.drain_interval, Duration::from_millis(10));
        assert_eq!(settings.listen, Some("127.0.0.1:9752".parse().unwrap()));
        assert_eq!(
            settings.admin_listen,
            Some(Endpoint::Unix("/run/tcpobs/admin.sock".into()))
        );
        assert_eq!(
            parse(&["--admin-listen", "none"]).unwrap().admin_listen,
            None
        );
        assert_eq!(settings.http_max_connections, 256);
        assert_eq!(settings.load.libcalls, LibcallOptions::default());
        assert!(!parse(&["--phases", "off"]).unwrap().load.libcalls.enabled);
        assert!(!settings.otlp.enabled(), "OTLP export is off by default");
        let otlp = parse(&[
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
            "--otlp-protocol",
            "grpc",
        ])
        .unwrap()
        .otlp;
        assert!(otlp.enabled());
        assert_eq!(
            settings.live.thresholds,
            Thresholds {
                idle_s: 300.0,
                ..Thresholds::default()
            }
        );
    }

    #[test]
    fn filters_from_flags() {
        let settings = parse(&[
            "--port",
            "80",
            "--port",
            "443,8080",
            "--exclude-cidr",
            "10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(
            settings.load.filters.ports,
            Filter::Include(vec![80, 443, 8080])
        );
        assert_eq!(
            settings.live.filters.cidrs,
            Filter::Exclude(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert!(parse(&["--port", "0"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        let err = parse(&["--pid", "1", "--exclude-pid", "2"]).unwrap_err();
        assert!(err.to_string().contains("--pid and --exclude-pid"), "{err}");
    }

    /// Found by the flags fuzz target (`fuzz/regressions/flags/`): an output path that is not
    /// UTF-8 (`-o` followed by a 0xff byte) made `GET /config`'s description panic at
    /// start-up. It shows with U+FFFD in place of what is not UTF-8.
    #[test]
    fn paths_that_are_not_utf8_are_shown_lossily() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
        let output = OsStr::from_bytes(b"/tmp/tcpobs-\xff.log");
        let settings = Cli::try_parse_from([OsStr::new("tcpobs"), OsStr::new("-o"), output])
            .unwrap()
            .into_settings()
            .unwrap();
        assert_eq!(
            settings.statics()["output"],
            "/tmp/tcpobs-\u{fffd}.log",
            "the path, lossily"
        );
        assert_eq!(
            parse(&["-o", "/var/log/tcpobs.json"]).unwrap().statics()["output"],
            "/var/log/tcpobs.json"
        );
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_setting() {
        for (args, needle) in [
            (&["--ringbuf-bytes", "5000"][..], "--ringbuf-bytes"),
            (&["--drain-interval", "10"], "--drain-interval"),
            (&["--sweep-interval", "0"], "--sweep-interval"),
            (&["--format", "xml"], "--format"),
            (&["--format", "justniffer", "-l", "%nope"], "--log-format"),
            (&["-l", "%connection"], "--log-format"),
            (&["--log-level", "loud=="], "--log-level"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--listen", "everywhere"], "--listen"),
            (&["--admin-listen", "everywhere"], "--admin-listen"),
            (&["--admin-listen", "unix:"], "--admin-listen"),
            (&["--admin-listen", "127.0.0.1:9753"], "basic_auth_users"),
            (
                &["--web-config-file", "/nonexistent/web.yml"],
                "--web-config-file",
            ),
            (&["--sample", "first=1"], "--sample"),
            (&["--sample", "first=1,thereafter=0"], "thereafter"),
            (&["--cidr", "10.0.0.0/99"], "--cidr"),
            (&["--cgroup", "no/such/cgroup/here"], "--cgroup"),
            (&["--label", "container"], "--label"),
            (&["--threshold-idle", "soon"], "--threshold-idle"),
            (&["--anomaly-resets", "maybe"], "--anomaly-resets"),
            (&["--phases", "maybe"], "--phases"),
            (&["--output-queue-bytes", "4096"], "--output-queue-bytes"),
            (&["--otlp-endpoint", "https://c:4318"], "--otlp-endpoint"),
            (&["--otlp-protocol", "http/json"], "--otlp-protocol"),
            (&["--otlp-signals", "traces,spans"], "--otlp-signals"),
            (&["--otlp-signals", "logs"], "--otlp-signals"),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }
}
