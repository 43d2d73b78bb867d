//! Which exposition format `/metrics` answers with, chosen from the scraper's `Accept` header
//! as Prometheus's own client libraries choose (client_golang's `NegotiateIncludingOpenMetrics`):
//! the media ranges in order of preference (`q`), the first that names a format tcpobs speaks
//! wins, and with none (no header, `*/*`, a browser's list) the classic text format 0.0.4.
//! Prometheus asks for OpenMetrics first; `curl` and `promtool` get the classic format.

use std::fmt::Write as _;

/// Content type of the OpenMetrics text format.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exposition {
    /// The classic Prometheus text format, 0.0.4.
    Classic,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

/// One media range of an `Accept` header: its type, its `version` parameter and its `q`.
struct Range<'a> {
    media: &'a str,
    version: Option<&'a str>,
    q: f32,
}

fn ranges(accept: &str) -> Vec<Range<'_>> {
    let mut ranges: Vec<Range<'_>> = accept
        .split(',')
        .filter_map(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().filter(|media| !media.is_empty())?;
            let mut range = Range {
                media,
                version: None,
                q: 1.0,
            };
            for param in params {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => range.q = value.parse().unwrap_or(0.0),
                    "version" => range.version = Some(value),
                    _ => {}
                }
            }
            (range.q > 0.0).then_some(range)
        })
        .collect();
    // Stable: equal preferences keep the client's order.
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    ranges
}

/// The format for a request with this `Accept` header (`None`: no header).
pub(crate) fn negotiate(accept: Option<&str>) -> Exposition {
    for range in ranges(accept.unwrap_or_default()) {
        if range
            .media
            .eq_ignore_ascii_case("application/openmetrics-text")
            && matches!(range.version, None | Some("0.0.1" | "1.0.0"))
        {
            return Exposition::OpenMetrics;
        }
        // 1.0.0 is 0.0.4 with UTF-8 names allowed; tcpobs's names are plain, so the 0.0.4
        // text is valid 1.0.0 text as well.
        if range.media.eq_ignore_ascii_case("text/plain")
            && matches!(range.version, None | Some("0.0.4" | "1.0.0"))
        {
            return Exposition::Classic;
        }
    }
    Exposition::Classic
}

/// Rewrites OpenMetrics text as the classic Prometheus text format (0.0.4): counter and info
/// families take their sample names, info becomes a gauge, `# UNIT` and `# EOF` go.
pub(crate) fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // prometheus-client writes each family's HELP right before its TYPE.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                other => ("", other),
            };
            if let Some((_, text)) = help.take().filter(|(help_name, _)| *help_name == name) {
                let _ = writeln!(out, "# HELP {name}{suffix} {text}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        } else if !line.starts_with("# UNIT ") && line != "# EOF" {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Exposition::*, *};

    #[test]
    fn as_client_golang_negotiates() {
        for (accept, expected) in [
            (None, Classic),
            (Some(""), Classic),
            (Some("*/*"), Classic),
            (Some("text/plain"), Classic),
            (Some("text/plain; version=0.0.4"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                OpenMetrics,
            ),
            // What Prometheus 2.x sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // Prometheus with scrape_protocols preferring the classic format.
            (
                Some(
                    "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;\
                     version=1.0.0;q=0.5,*/*;q=0.1",
                ),
                Classic,
            ),
            (
                Some("text/plain;q=0.2, application/openmetrics-text;q=0.8"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Classic),
            // A version tcpobs does not speak is skipped.
            (Some("application/openmetrics-text;version=2.0.0"), Classic),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                Classic,
            ),
        ] {
            assert_eq!(negotiate(accept), expected, "{accept:?}");
        }
    }

    #[test]
    fn classic_text_conversion() {
        let openmetrics = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{x=\"1\"} 3\n\
                           # HELP b_build Build.\n# TYPE b_build info\nb_build_info{version=\"1\"} 1\n\
                           # HELP c_seconds Time.\n# TYPE c_seconds histogram\n# UNIT c_seconds seconds\n\
                           c_seconds_count 0\n# EOF\n";
        assert_eq!(
            to_classic_text(openmetrics),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total{x=\"1\"} 3\n\
             # HELP b_build_info Build.\n# TYPE b_build_info gauge\nb_build_info{version=\"1\"} 1\n\
             # HELP c_seconds Time.\n# TYPE c_seconds histogram\nc_seconds_count 0\n"
        );
    }
}
