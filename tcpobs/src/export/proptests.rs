//! Property tests of the exports' parsers: the justniffer line format (`-l`) and the
//! `/connections` query (the fuzz targets `line_format` and `connections_query` drive the same
//! code with libFuzzer).

use std::collections::HashMap;

use proptest::{prelude::*, sample::select};

use crate::{
    export::{
        http::{ConnectionFilter, MAX_LIMIT},
        output::justniffer::LineFormat,
    },
    fuzzing,
};

const KEYWORDS: &[&str] = &[
    "%request.timestamp",
    "%source.ip",
    "%source.port",
    "%dest.ip",
    "%dest.port",
    "%connection.time",
    "%idle.time.0",
    "%request.time",
    "%response.time",
    "%response.time.begin",
    "%response.time.end",
    "%idle.time.1",
    "%session.time",
    "%session.requests",
    "%connection",
    "%close.originator",
    "%request.size",
    "%response.size",
];

/// Text between keywords: no `%` of its own, and none of the characters a keyword could
/// run on with (letters, digits, `.`, `_`) at its start.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[ |=,;:\t\n/-][^%]{0,6}",
        Just("%%".to_owned())
    ]
}

proptest! {
    /// A format made of keywords and text parses, prints as written (`%%` kept), and renders.
    #[test]
    fn formats_of_keywords_and_text_parse_and_print_back(
        pieces in proptest::collection::vec((literal(), select(KEYWORDS)), 0..8),
        tail in literal(),
    ) {
        let text: String = pieces.iter().map(|(text, keyword)| format!("{text}{keyword}")).collect::<String>() + &tail;
        let format: LineFormat = text.parse().expect("keywords and text parse");
        prop_assert_eq!(format.to_string(), text.clone());
        fuzzing::line_format(text.as_bytes());
    }

    /// Any text is refused or parses to a format that prints and parses back to itself.
    #[test]
    fn any_line_format_is_refused_or_round_trips(
        pieces in proptest::collection::vec(prop_oneof![
            select(KEYWORDS).prop_map(str::to_owned),
            Just("%".to_owned()),
            Just(".".to_owned()),
            "[a-z0-9._ ]{0,4}",
            any::<char>().prop_map(String::from),
        ], 0..10),
    ) {
        fuzzing::line_format(pieces.concat().as_bytes());
    }
}

fn query(pairs: &[(&str, &str)]) -> Result<usize, String> {
    let pairs: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ConnectionFilter::parse(&pairs)
        .map(|filter| filter.limit)
        .map_err(|err| err.to_string())
}

proptest! {
    /// Any query string is refused or gives a limit from 1 to the maximum.
    #[test]
    fn any_connections_query_is_refused_or_bounded(
        pieces in proptest::collection::vec(prop_oneof![
            select(&["state=", "port=", "min_idle_s=", "limit=", "&", "=", "%", "%2", "+", "established", "1e400", "-0", "NaN", "100001"][..]).prop_map(str::to_owned),
            "[ -~]{0,4}",
        ], 0..8),
    ) {
        fuzzing::connections_query(pieces.concat().as_bytes());
    }

    /// Every TCP state by name, in any case, every port, every limit in range: accepted.
    /// Limits out of range and anything else: refused, naming the parameter.
    #[test]
    fn connections_queries_take_exactly_their_values(
        state in select(&["ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"][..]),
        lower: bool,
        port: u16,
        limit: usize,
        idle in 0.0..1e12f64,
    ) {
        let state = if lower { state.to_ascii_lowercase() } else { state.to_owned() };
        let (port, limit, idle) = (port.to_string(), limit.to_string(), idle.to_string());
        let answer = query(&[("state", &state), ("port", &port), ("limit", &limit), ("min_idle_s", &idle)]);
        if (1..=MAX_LIMIT).contains(&limit.parse().unwrap()) {
            prop_assert_eq!(answer, Ok(limit.parse().unwrap()));
        } else {
            prop_assert!(answer.is_err_and(|err| err.starts_with("limit")));
        }
        for (key, value) in [("state", "DANCING"), ("port", "65536"), ("min_idle_s", "-1"), ("min_idle_s", "inf")] {
            prop_assert!(query(&[(key, value)]).is_err_and(|err| err.starts_with(key)));
        }
    }
}
