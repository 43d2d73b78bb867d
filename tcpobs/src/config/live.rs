//! Settings that change while tcpobs runs: `PUT /config`, `SIGHUP` (re-reading the config
//! file), and their start-up values from flags. Everything else needs a restart.
//!
//! A change is validated as a whole before anything is applied, so a bad request changes
//! nothing. In JSON, durations are seconds (`idle_s: 300`), and each filter is `"off"`,
//! `{"include": [...]}` or `{"exclude": [...]}`.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use tracing_subscriber::{filter::ParseError, reload};

/// Why a value does not parse: a flag's, an environment variable's, a config file key's or a
/// `PUT /config` field's (the caller names the setting).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("`{0}` is not key=value")]
    NotKeyValue(String),
    #[error("`{0}` is not a whole number")]
    NotWholeNumber(String),
    #[error("unknown key `{0}`: use first=N,thereafter=M")]
    UnknownSampleKey(String),
    #[error("needs both first=N and thereafter=M")]
    IncompleteSample,
    #[error("`{0}` is not an IP address or network")]
    NotAnAddress(String),
    #[error("`{value}`: the prefix length must be 0 to {max}")]
    PrefixLength { value: String, max: u8 },
    #[error("an empty cgroup")]
    EmptyCgroup,
    #[error("`{0}` needs a unit: us, ms, s, m, h or d")]
    DurationWithoutUnit(String),
    #[error("`{0}` does not start with a number")]
    DurationWithoutNumber(String),
    #[error("unknown unit `{unit}` in `{value}`: use us, ms, s, m, h or d")]
    DurationUnit { unit: String, value: String },
    #[error("`{0}` is not a number of bytes")]
    NotBytes(String),
    #[error("{0} is not a power of two of at least 4096")]
    RingbufSize(u32),
}

/// Why a log level is refused: not a level, not a tracing filter, or the logger did not take it.
#[derive(Debug, Error)]
pub enum LogLevelError {
    /// A directive that names no level. tracing reads a bare word as a target at every level
    /// (`loud` would mean `loud=trace`, which silences everything else), so it is refused.
    #[error(
        "`{0}` is not a level: use off, error, warn, info, debug or trace, or TARGET=LEVEL \
         directives separated by commas (e.g. `info,tcpobs=debug`)"
    )]
    NotALevel(String),
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error(transparent)]
    Reload(#[from] reload::Error),
}

/// Why live settings are refused. A change is refused whole: nothing of it is applied.
#[derive(Debug, Error)]
pub(crate) enum SettingsError {
    #[error("--{kind} and --exclude-{kind} cannot be combined: choose one")]
    IncludeAndExclude { kind: &'static str },
    #[error("thresholds.{name}: {value} is not a number of seconds from 0 to 1e9")]
    Threshold { name: &'static str, value: f64 },
    #[error("filters.{name}: {size} values, at most {FILTER_CAPACITY}")]
    TooManyValues { name: &'static str, size: usize },
    #[error("filters.ports: port 0 is not a port")]
    PortZero,
    #[error("sample: thereafter must be at least 1")]
    SampleNeverWrites,
    #[error("sample: {0}")]
    Sample(ValueError),
    #[error("log_level: {0}")]
    LogLevel(LogLevelError),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("{key}: expected an object")]
    ExpectedObject { key: String },
    #[error("{key}: cannot merge")]
    Unmergeable { key: String },
    /// A field whose JSON does not fit its type.
    #[error("{key}: {source}")]
    Field {
        key: String,
        source: serde_json::Error,
    },
    #[error(
        "unknown setting `{0}`; runtime settings are events, sample, thresholds, log_level, \
         filters"
    )]
    Unknown(String),
}

/// Which JSON events to write (`--events`); the output routes records by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSelection {
    /// One aggregate `connection` event per connection when it closes, plus `anomaly` events.
    #[default]
    Connections,
    /// Also one `exchange` event per request/response exchange.
    Exchanges,
    /// Only `anomaly` events and the connections that breached a threshold.
    Anomalies,
    /// No events (metrics only).
    None,
}

/// Sampling of the event output: per second, the first `first` events, then every
/// `thereafter`-th.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub first: u32,
    pub thereafter: u32,
}

impl FromStr for Sample {
    type Err = ValueError;

    /// `first=N,thereafter=M`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut sample = Self {
            first: 0,
            thereafter: 0,
        };
        let (mut first, mut thereafter) = (false, false);
        for part in value.split(',') {
            let (key, number) = part
                .split_once('=')
                .ok_or_else(|| ValueError::NotKeyValue(part.to_owned()))?;
            let number: u32 = number
                .trim()
                .parse()
                .map_err(|_| ValueError::NotWholeNumber(number.to_owned()))?;
            match key.trim() {
                "first" => (sample.first, first) = (number, true),
                "thereafter" => (sample.thereafter, thereafter) = (number, true),
                other => return Err(ValueError::UnknownSampleKey(other.to_owned())),
            }
        }
        if !(first && thereafter) {
            return Err(ValueError::IncompleteSample);
        }
        Ok(sample)
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "first={},thereafter={}", self.first, self.thereafter)
    }
}

/// What counts as an anomaly, and when a live connection is stuck. Seconds; 0 turns a check
/// off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Handshakes slower than this; also `SYN_SENT` for longer than this.
    pub handshake_s: f64,
    /// Time to first response byte.
    pub first_byte_s: f64,
    /// Idle gaps; an `ESTABLISHED` connection idle this long is a zombie.
    pub idle_s: f64,
    /// Time in `CLOSE_WAIT` (the application not closing after the peer did).
    pub close_wait_s: f64,
    /// Time in `FIN_WAIT2` (the peer not finishing its close).
    pub fin_wait2_s: f64,
    /// `ESTABLISHED` with no data at all.
    pub no_data_s: f64,
    /// Whether connections closed by a reset are anomalies.
    pub resets: bool,
    /// Data waiting and a zero window from the peer (the peer application stopped reading).
    #[serde(default = "default_stalled_receiver_s")]
    pub stalled_receiver_s: f64,
    /// Data unacknowledged and nothing acknowledged while retransmitting (peer or path gone).
    #[serde(default = "default_blackhole_s")]
    pub blackhole_s: f64,
    /// A listener's accept queue full (the application stopped accepting).
    #[serde(default = "default_accept_queue_s")]
    pub accept_queue_s: f64,
}

fn default_stalled_receiver_s() -> f64 {
    Thresholds::default().stalled_receiver_s
}

fn default_blackhole_s() -> f64 {
    Thresholds::default().blackhole_s
}

fn default_accept_queue_s() -> f64 {
    Thresholds::default().accept_queue_s
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            handshake_s: 1.0,
            first_byte_s: 1.0,
            idle_s: 300.0,
            close_wait_s: 30.0,
            fin_wait2_s: 60.0,
            no_data_s: 30.0,
            resets: true,
            stalled_receiver_s: 10.0,
            blackhole_s: 10.0,
            accept_queue_s: 10.0,
        }
    }
}

/// Seconds to nanoseconds (0 stays 0: off).
pub(crate) fn ns(seconds: f64) -> u64 {
    Duration::try_from_secs_f64(seconds)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

impl Thresholds {
    fn validate(&self) -> Result<(), SettingsError> {
        for (name, value) in [
            ("handshake_s", self.handshake_s),
            ("first_byte_s", self.first_byte_s),
            ("idle_s", self.idle_s),
            ("close_wait_s", self.close_wait_s),
            ("fin_wait2_s", self.fin_wait2_s),
            ("no_data_s", self.no_data_s),
            ("stalled_receiver_s", self.stalled_receiver_s),
            ("blackhole_s", self.blackhole_s),
            ("accept_queue_s", self.accept_queue_s),
        ] {
            if !value.is_finite() || !(0.0..=1e9).contains(&value) {
                return Err(SettingsError::Threshold { name, value });
            }
        }
        Ok(())
    }

    /// The hang detector's view.
    pub(crate) fn stuck(&self) -> crate::tracker::StuckThresholds {
        crate::tracker::StuckThresholds {
            syn_sent_ns: ns(self.handshake_s),
            no_data_ns: ns(self.no_data_s),
            idle_ns: ns(self.idle_s),
            close_wait_ns: ns(self.close_wait_s),
            fin_wait2_ns: ns(self.fin_wait2_s),
            stalled_receiver_ns: ns(self.stalled_receiver_s),
            blackhole_ns: ns(self.blackhole_s),
            accept_queue_ns: ns(self.accept_queue_s),
        }
    }
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| ValueError::NotAnAddress(value.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| ValueError::PrefixLength {
                    value: value.to_owned(),
                    max,
                })?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A cgroup v2, by path (absolute, or relative to the cgroup v2 mount, normally
/// `/sys/fs/cgroup`) or by numeric id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CgroupRef {
    Id(u64),
    Path(String),
}

impl FromStr for CgroupRef {
    type Err = ValueError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Err(ValueError::EmptyCgroup);
        }
        Ok(match value.parse::<u64>() {
            Ok(id) => Self::Id(id),
            Err(_) => Self::Path(value.to_owned()),
        })
    }
}

/// One kind of kernel-side filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter<T> {
    #[default]
    Off,
    /// Trace only sockets that match one of these.
    Include(Vec<T>),
    /// Trace only sockets that match none of these.
    Exclude(Vec<T>),
}

impl<T> Filter<T> {
    /// From the include and exclude flags of one kind; both at once is an error.
    pub(crate) fn from_flags(
        kind: &'static str,
        include: Vec<T>,
        exclude: Vec<T>,
    ) -> Result<Self, SettingsError> {
        match (include.is_empty(), exclude.is_empty()) {
            (true, true) => Ok(Self::Off),
            (false, true) => Ok(Self::Include(include)),
            (true, false) => Ok(Self::Exclude(exclude)),
            (false, false) => Err(SettingsError::IncludeAndExclude { kind }),
        }
    }

    pub fn values(&self) -> &[T] {
        match self {
            Self::Off => &[],
            Self::Include(values) | Self::Exclude(values) => values,
        }
    }
}

/// Maximum entries per kernel filter set (the maps' capacity).
pub(crate) const FILTER_CAPACITY: usize = 1024;

/// The kernel-side filters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    pub ports: Filter<u16>,
    pub cidrs: Filter<Cidr>,
    pub pids: Filter<u32>,
    pub cgroups: Filter<CgroupRef>,
}

impl Filters {
    fn validate(&self) -> Result<(), SettingsError> {
        let sizes = [
            ("ports", self.ports.values().len()),
            ("cidrs", self.cidrs.values().len()),
            ("pids", self.pids.values().len()),
            ("cgroups", self.cgroups.values().len()),
        ];
        for (name, size) in sizes {
            if size > FILTER_CAPACITY {
                return Err(SettingsError::TooManyValues { name, size });
            }
        }
        if self.ports.values().contains(&0) {
            return Err(SettingsError::PortZero);
        }
        Ok(())
    }
}

/// The settings that can change at runtime.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveSettings {
    pub events: EventSelection,
    /// `None`: every event is written.
    pub sample: Option<Sample>,
    pub thresholds: Thresholds,
    pub log_level: String,
    pub filters: Filters,
}

impl LiveSettings {
    /// Applies a JSON patch (any subset of the fields) to a copy; errors name the field.
    pub(crate) fn patched(
        &self,
        patch: &Value,
        check_log_level: impl Fn(&str) -> Result<(), LogLevelError>,
    ) -> Result<Self, SettingsError> {
        let Value::Object(patch) = patch else {
            return Err(SettingsError::NotAnObject);
        };
        let mut next = self.clone();
        for (key, value) in patch {
            match key.as_str() {
                "events" => next.events = field(key, value)?,
                "sample" => {
                    next.sample = match value {
                        Value::Null => None,
                        Value::String(text) if text == "off" => None,
                        Value::String(text) => Some(text.parse().map_err(SettingsError::Sample)?),
                        other => Some(field(key, other)?),
                    };
                }
                "thresholds" => next.thresholds = merged(key, &next.thresholds, value)?,
                "log_level" => {
                    let level: String = field(key, value)?;
                    check_log_level(&level).map_err(SettingsError::LogLevel)?;
                    next.log_level = level;
                }
                "filters" => next.filters = merged(key, &next.filters, value)?,
                other => return Err(SettingsError::Unknown(other.to_owned())),
            }
        }
        next.validate()?;
        Ok(next)
    }

    pub(crate) fn validate(&self) -> Result<(), SettingsError> {
        if let Some(sample) = self.sample
            && sample.thereafter == 0
        {
            return Err(SettingsError::SampleNeverWrites);
        }
        self.thresholds.validate()?;
        self.filters.validate()
    }
}

fn field<T: serde::de::DeserializeOwned>(key: &str, value: &Value) -> Result<T, SettingsError> {
    serde_json::from_value(value.clone()).map_err(|source| SettingsError::Field {
        key: key.to_owned(),
        source,
    })
}

/// `current` with the keys of `patch` (an object) replaced.
fn merged<T: Serialize + serde::de::DeserializeOwned>(
    key: &str,
    current: &T,
    patch: &Value,
) -> Result<T, SettingsError> {
    let Value::Object(patch) = patch else {
        return Err(SettingsError::ExpectedObject {
            key: key.to_owned(),
        });
    };
    let Ok(Value::Object(mut base)) = serde_json::to_value(current) else {
        return Err(SettingsError::Unmergeable {
            key: key.to_owned(),
        });
    };
    base.extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
    field(key, &Value::Object(Map::from_iter(base)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn runtime() -> LiveSettings {
        LiveSettings {
            events: EventSelection::Connections,
            sample: None,
            thresholds: Thresholds::default(),
            log_level: "info".to_owned(),
            filters: Filters::default(),
        }
    }

    fn any_level(_: &str) -> Result<(), LogLevelError> {
        Ok(())
    }

    #[test]
    fn sample_parses_and_prints() {
        let sample: Sample = "first=100,thereafter=10".parse().unwrap();
        assert_eq!(
            sample,
            Sample {
                first: 100,
                thereafter: 10
            }
        );
        assert_eq!(sample.to_string(), "first=100,thereafter=10");
        assert!("first=1".parse::<Sample>().is_err());
        assert!("first=1,every=2".parse::<Sample>().is_err());
        assert!("first=x,thereafter=2".parse::<Sample>().is_err());
    }

    #[test]
    fn cidrs_parse() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn patches_merge_and_validate() {
        let next = runtime()
            .patched(
                &json!({
                    "events": "anomalies",
                    "sample": "first=5,thereafter=2",
                    "thresholds": {"idle_s": 2.5},
                    "filters": {"ports": {"include": [80, 443]}, "cidrs": {"exclude": ["10.0.0.0/8"]}}
                }),
                any_level,
            )
            .unwrap();
        assert_eq!(next.events, EventSelection::Anomalies);
        assert_eq!(
            next.sample,
            Some(Sample {
                first: 5,
                thereafter: 2
            })
        );
        assert_eq!(next.thresholds.idle_s, 2.5);
        assert_eq!(
            next.thresholds.handshake_s, 1.0,
            "untouched keys keep their value"
        );
        assert_eq!(next.filters.ports, Filter::Include(vec![80, 443]));
        assert_eq!(
            next.filters.cidrs,
            Filter::Exclude(vec!["10.0.0.0/8".parse().unwrap()])
        );
        let off = next
            .patched(
                &json!({"sample": null, "filters": {"ports": "off"}}),
                any_level,
            )
            .unwrap();
        assert_eq!(off.sample, None);
        assert_eq!(off.filters.ports, Filter::Off);
    }

    #[test]
    fn bad_patches_name_the_field() {
        for (patch, needle) in [
            (json!({"events": "some"}), "events"),
            (json!({"thresholds": {"idle_s": -1}}), "thresholds.idle_s"),
            (json!({"thresholds": {"idle": 1}}), "thresholds"),
            (json!({"sample": {"first": 1, "thereafter": 0}}), "sample"),
            (
                json!({"filters": {"ports": {"include": [0]}}}),
                "filters.ports",
            ),
            (
                json!({"filters": {"cidrs": {"include": ["nope"]}}}),
                "filters",
            ),
            (json!({"colour": "red"}), "colour"),
            (json!([1, 2]), "object"),
        ] {
            let err = runtime().patched(&patch, any_level).unwrap_err();
            assert!(err.to_string().contains(needle), "{patch}: {err}");
        }
        let err = runtime()
            .patched(&json!({"log_level": "tcpobs=loudest"}), |level| {
                tracing_subscriber::EnvFilter::try_new(level)?;
                Ok(())
            })
            .unwrap_err();
        assert!(err.to_string().starts_with("log_level"), "{err}");
    }
}
