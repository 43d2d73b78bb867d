//! The `/metrics` exposition (OpenMetrics text, as prometheus-client writes it) read back into
//! families and samples, for the OTLP metrics: what a scrape sees, parsed the way a scraper
//! would.

use std::collections::HashMap;

/// One family of the exposition.
#[derive(Debug, PartialEq)]
pub(super) struct Family<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub help: String,
    pub samples: Vec<Sample<'a>>,
}

#[derive(Debug, PartialEq)]
pub(super) struct Sample<'a> {
    /// The family's name plus a suffix (`_total`, `_bucket`, ...).
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// `name{a="x",b="y"} value` (a timestamp or an exemplar after the value is ignored).
fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            // The value ends at the first quote that is not escaped.
            let mut end = None;
            let mut escaped = false;
            for (at, c) in after.char_indices() {
                match (c, escaped) {
                    ('\\', false) => escaped = true,
                    ('"', false) => {
                        end = Some(at);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            labels.push((key, unescape(&after[..end])));
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The families of an OpenMetrics (or Prometheus text) exposition.
pub(super) fn parse(text: &str) -> Vec<Family<'_>> {
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut help: HashMap<&str, String> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name, unescape(text));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                families.push(Family {
                    name,
                    kind: kind.trim(),
                    help: help.remove(name).unwrap_or_default(),
                    samples: Vec::new(),
                });
            }
        } else if !line.starts_with('#')
            && let Some(sample) = sample(line)
            && let Some(family) = families.last_mut()
            && sample.name.starts_with(family.name)
        {
            family.samples.push(sample);
        }
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_escaped_labels_and_exemplars() {
        let text = r#"# HELP t A \"help\".
# TYPE t counter
t_total{a="x\"y",b="\\"} 7 # {trace_id="1"} 1.0
# TYPE g gauge
g +Inf
# EOF
"#;
        let families = parse(text);
        assert_eq!(families.len(), 2);
        assert_eq!(families[0].help, "A \"help\".");
        assert_eq!(
            families[0].samples,
            [Sample {
                name: "t_total",
                labels: vec![("a", "x\"y".to_owned()), ("b", "\\".to_owned())],
                value: 7.0,
            }]
        );
        assert_eq!((families[1].name, families[1].kind), ("g", "gauge"));
        assert_eq!(families[1].samples[0].value, f64::INFINITY);
    }
}
