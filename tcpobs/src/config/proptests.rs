//! Property tests of the settings' parsers: each value's text form and its printer, the flags
//! and the `--config` file through to the settings, and the live settings through `PUT` and
//! `GET /config`'s JSON (the fuzz targets `flags`, `config_file` and `put_config` drive the
//! same code with libFuzzer).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use proptest::{prelude::*, sample::select};
use serde_json::{Map, Value};

use super::{
    cli::parse_duration,
    control::check_log_level,
    live::{CgroupRef, Cidr, EventSelection, Filter, Filters, LiveSettings, Sample, Thresholds},
};
use crate::{export::metrics::labels::LabelSpec, fuzzing, kernel::loader::StrategyChoice};

/// Text around the shapes a parser expects: its own words and separators, and anything.
fn text(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => select(words).prop_map(str::to_owned),
        2 => "[,=: /.0-9a-z_-]{0,3}",
        1 => any::<String>().prop_map(|s| s.chars().take(4).collect()),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

fn cidr() -> impl Strategy<Value = Cidr> + Clone {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, prefix)| Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(a)),
            prefix
        }),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, prefix)| Cidr {
            addr: IpAddr::V6(Ipv6Addr::from(a)),
            prefix
        }),
    ]
}

proptest! {
    #[test]
    fn samples_print_and_parse_back(first: u32, thereafter: u32) {
        let sample = Sample { first, thereafter };
        prop_assert_eq!(sample.to_string().parse::<Sample>(), Ok(sample));
    }

    #[test]
    fn any_sample_text_is_refused_or_round_trips(
        value in text(&["first", "thereafter", "=", ",", " ", "4294967295", "4294967296", "-1"]),
    ) {
        if let Ok(sample) = value.parse::<Sample>() {
            prop_assert_eq!(sample.to_string().parse::<Sample>(), Ok(sample));
        }
    }

    #[test]
    fn cidrs_print_and_parse_back(cidr in cidr()) {
        prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
    }

    #[test]
    fn any_cidr_text_is_refused_or_round_trips(
        value in text(&["10.0.0.0", "::1", "::ffff:1.2.3.4", "2001:db8::", "/", "/8", "/33", "/129", " "]),
    ) {
        if let Ok(cidr) = value.parse::<Cidr>() {
            let max = if cidr.addr.is_ipv4() { 32 } else { 128 };
            prop_assert!(cidr.prefix <= max);
            prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
        }
    }

    /// `N<unit>` is N of that unit (saturating at `u64::MAX` seconds); nothing else panics.
    #[test]
    fn durations_are_their_number_of_units(n: u64, unit in select(&["us", "ms", "s", "m", "h", "d"][..])) {
        let seconds = |factor: u64| Duration::from_secs(n.saturating_mul(factor));
        let expected = match unit {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            _ => seconds(86_400),
        };
        prop_assert_eq!(parse_duration(&format!("{n}{unit}")), Ok(expected));
    }

    #[test]
    fn any_duration_text_is_refused_or_parsed(
        value in text(&["0", "1", "18446744073709551616", "us", "ms", "s", "m", "h", "d", "µs"]),
    ) {
        let _ = parse_duration(&value);
    }

    #[test]
    fn any_label_spec_is_refused_or_round_trips(
        value in text(&["comm", "local_port", "remote_port", "pod", "namespace", "=", "top:", "1000", "1001", ",", " "]),
    ) {
        if let Ok(spec) = value.parse::<LabelSpec>() {
            prop_assert_eq!(spec.to_string().parse::<LabelSpec>(), Ok(spec));
        }
    }

    #[test]
    fn any_probe_strategy_is_refused_or_round_trips(
        value in text(&["auto", "fentry", "tracepoint", "kprobe", "state=", "data=", "close=", "connect=", "resets=", "retransmits=", "errors=", "accept=", "drops=", "probes=", "off", ","]),
    ) {
        if let Ok(choice) = value.parse::<StrategyChoice>() {
            prop_assert_eq!(choice.to_string().parse::<StrategyChoice>(), Ok(choice));
        }
    }
}

/// Flag names, and values that fit some of them.
const FLAGS: &[&str] = &[
    "--events",
    "--sample",
    "--port",
    "--exclude-port",
    "--cidr",
    "--exclude-cidr",
    "--pid",
    "--exclude-pid",
    "--cgroup",
    "--label",
    "--label-series-cap",
    "--threshold-idle",
    "--threshold-handshake",
    "--anomaly-resets",
    "--format",
    "--log-format",
    "-l",
    "--log-level",
    "--listen",
    "--probe-strategy",
    "--ringbuf-bytes",
    "--max-sockets",
    "--drain-interval",
    "--sweep-interval",
    "--phases",
    "--tracepoints",
    "--config",
];
const VALUES: &[&str] = &[
    "exchanges",
    "none",
    "first=1,thereafter=2",
    "80",
    "0",
    "65536",
    "80,443",
    "10.0.0.0/8",
    "::1",
    "1",
    "/",
    "4294967295",
    "comm=top:3",
    "remote_port=80,443",
    "2m",
    "0",
    "soon",
    "false",
    "justniffer",
    "json",
    "%dest.port %connection",
    "%nope",
    "debug",
    "tcpobs=trace",
    "[{a=1}]",
    "none",
    "127.0.0.1:0",
    "kprobe,state=tracepoint",
    "4096",
    "5000",
    "64",
    "10ms",
    "off",
    "btf",
    "/nonexistent.toml",
];

fn argv() -> impl Strategy<Value = Vec<String>> {
    let arg = prop_oneof![
        3 => select(FLAGS).prop_map(str::to_owned),
        3 => select(VALUES).prop_map(str::to_owned),
        1 => (select(FLAGS), select(VALUES)).prop_map(|(f, v)| format!("{f}={v}")),
        1 => any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ];
    proptest::collection::vec(arg, 0..8)
}

/// A TOML file of the flags' keys (with `-` or `_`), scalars, arrays and a few things the file
/// does not take (tables, dates, keys of no flag).
fn toml_file() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        select(VALUES).prop_map(|v| format!("{v:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}").replace("inf", "+inf")),
        any::<bool>().prop_map(|b| b.to_string()),
        proptest::collection::vec(select(VALUES), 0..3).prop_map(|v| format!("{v:?}")),
        Just("{ a = 1 }".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        "[ -~]{0,10}",
    ];
    let key = prop_oneof![
        4 => select(FLAGS).prop_map(|f| f.trim_start_matches('-').to_owned()),
        2 => select(FLAGS).prop_map(|f| f.trim_start_matches('-').replace('-', "_")),
        1 => "[a-z_-]{1,8}",
    ];
    proptest::collection::vec((key, value), 0..6).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any command line is refused or gives settings that validate and whose live part
    /// survives `GET /config`'s JSON.
    #[test]
    fn any_command_line_is_refused_or_sound(args in argv()) {
        fuzzing::flags(args.join("\0").as_bytes());
    }

    /// The same for any config file.
    #[test]
    fn any_config_file_is_refused_or_sound(file in toml_file()) {
        fuzzing::config_file(file.as_bytes());
    }
}

/// Seconds as a threshold may be: from 0 to 1e9, the smallest and the odd ones included.
fn seconds() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..=1e9f64,
        0.0..=10.0f64,
        select(&[0.0, 5e-324, 1e-9, 0.1, 0.3, 1e9, 299.99999999999994][..]),
    ]
}

fn filter<T: Clone + std::fmt::Debug>(
    values: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Filter<T>> {
    prop_oneof![
        Just(Filter::Off),
        proptest::collection::vec(values.clone(), 1..4).prop_map(Filter::Include),
        proptest::collection::vec(values, 1..4).prop_map(Filter::Exclude),
    ]
}

/// Any valid live settings (cgroups by id: a path must exist to be resolved).
fn live_settings() -> impl Strategy<Value = LiveSettings> {
    let thresholds = (
        [
            seconds(),
            seconds(),
            seconds(),
            seconds(),
            seconds(),
            seconds(),
            seconds(),
            seconds(),
            seconds(),
        ],
        any::<bool>(),
    )
        .prop_map(|(s, resets)| Thresholds {
            handshake_s: s[0],
            first_byte_s: s[1],
            idle_s: s[2],
            close_wait_s: s[3],
            fin_wait2_s: s[4],
            no_data_s: s[5],
            resets,
            stalled_receiver_s: s[6],
            blackhole_s: s[7],
            accept_queue_s: s[8],
        });
    let filters = (
        filter(1u16..),
        filter(cidr()),
        filter(any::<u32>()),
        filter(any::<u64>().prop_map(CgroupRef::Id)),
    )
        .prop_map(|(ports, cidrs, pids, cgroups)| Filters {
            ports,
            cidrs,
            pids,
            cgroups,
        });
    (
        select(
            &[
                EventSelection::Connections,
                EventSelection::Exchanges,
                EventSelection::Anomalies,
                EventSelection::None,
            ][..],
        ),
        proptest::option::of(
            (any::<u32>(), 1u32..).prop_map(|(first, thereafter)| Sample { first, thereafter }),
        ),
        thresholds,
        select(&["info", "warn", "off", "tcpobs=debug,warn", "error"][..]),
        filters,
    )
        .prop_map(
            |(events, sample, thresholds, log_level, filters)| LiveSettings {
                events,
                sample,
                thresholds,
                log_level: log_level.to_owned(),
                filters,
            },
        )
}

/// JSON in the shape of a `PUT /config` body: the settings' keys more often than not.
fn json_body() -> impl Strategy<Value = Value> {
    let keys = &[
        "events",
        "sample",
        "thresholds",
        "log_level",
        "filters",
        "idle_s",
        "handshake_s",
        "resets",
        "ports",
        "cidrs",
        "pids",
        "cgroups",
        "include",
        "exclude",
        "first",
        "thereafter",
        "colour",
    ][..];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(VALUES).prop_map(Value::from),
        select(
            &[
                "off",
                "connections",
                "anomalies",
                "first=5,thereafter=2",
                "loud"
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((select(keys), inner), 0..4).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    /// What `GET /config` shows, sent back with `PUT /config`, is the same settings: every
    /// value survives its JSON, thresholds to the last bit.
    #[test]
    fn live_settings_survive_their_json(live in live_settings()) {
        live.validate().expect("generated settings are valid");
        let shown = serde_json::to_value(&live).expect("settings serialise");
        let back = fuzzing::default_live().patched(&shown, check_log_level);
        prop_assert_eq!(back.as_ref().ok(), Some(&live), "{}", shown);
    }

    /// Any body is refused whole or applied whole (the `put_config` fuzz target's checks).
    #[test]
    fn any_put_config_body_is_refused_whole_or_applied_whole(body in json_body()) {
        fuzzing::put_config(body.to_string().as_bytes());
    }
}
