//! The alert rules and the Grafana dashboard: promtool accepts the rules and their unit tests
//! pass (and fail when a rule is broken), every alert has a test where it fires beside hosts
//! where it must not, and every metric, label and label value the rules, their tests and the
//! dashboard use exists in a real exposition scraped from the daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use serde_json::Value;
use tcpobs_tests::{closed_port, daemon::Daemon, repo_file};

const RULES: &str = "deploy/prometheus/tcpobs-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/tcpobs-rules.test.yaml";
const DASHBOARD: &str = "deploy/grafana/tcpobs-dashboard.json";

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus)");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The rules' alerts, each with its block of text.
fn alerts() -> Vec<(String, String)> {
    let text = fs::read_to_string(repo_file(RULES)).unwrap();
    text.split("- alert: ")
        .skip(1)
        .map(|block| {
            let name = block.lines().next().unwrap().trim().to_owned();
            (name, block.to_owned())
        })
        .collect()
}

#[test]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let dir = repo_file("deploy/prometheus");
    let (ok, report) = promtool(&["check", "rules", "tcpobs-rules.yaml"], &dir);
    assert!(ok, "promtool check rules: {report}");
    let (ok, report) = promtool(&["test", "rules", "tcpobs-rules.test.yaml"], &dir);
    assert!(ok, "promtool test rules: {report}");

    let tests = fs::read_to_string(repo_file(RULE_TESTS)).unwrap();
    let alerts = alerts();
    assert_eq!(alerts.len(), 12, "{:?}", alerts.iter().map(|a| &a.0));
    for (name, block) in &alerts {
        for annotation in ["summary:", "description:"] {
            assert!(block.contains(annotation), "{name} has no {annotation}");
        }
        assert!(
            block.contains("Likely cause:") && block.contains("Action:"),
            "{name}'s description gives the likely cause and the action"
        );
        // A test where it fires, with its annotations checked. promtool compares the whole set
        // of firing alerts, so the hosts of the test's input that are not expected stay quiet.
        let mut fires = false;
        let lines: Vec<&str> = tests.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.trim() != format!("alertname: {name}") {
                continue;
            }
            match lines.get(index + 1).map(|l| l.trim()) {
                Some("exp_alerts: []") => {}
                Some("exp_alerts:") => fires = true,
                other => panic!("{name}: unexpected {other:?} after its alertname"),
            }
        }
        assert!(fires, "no test where {name} fires");
    }
    assert!(
        tests.matches("exp_annotations:").count() >= alerts.len(),
        "annotations are checked for every alert"
    );
}

/// Broken copies of the rules make their tests fail: the tests pin the thresholds.
#[test]
fn the_rule_tests_catch_broken_rules() {
    let rules = fs::read_to_string(repo_file(RULES)).unwrap();
    for (from, to) in [
        (") < 1.2", ") < 0.5"),
        (
            "tcpobs_stuck_connections{phase=\"close_wait\"}) > 0",
            "tcpobs_stuck_connections{phase=\"close_wait\"}) > 5",
        ),
        ("for: 15m", "for: 45m"),
        (
            "increase(tcpobs_events_lost_total[10m]) > 0",
            "increase(tcpobs_events_lost_total[1m]) > 0",
        ),
        ("Likely cause: keep-alive", "Likely cause: keepalive"),
        (
            "rate(tcpobs_listen_drops_total[5m])) > 0.1",
            "rate(tcpobs_listen_drops_total[5m])) > 2",
        ),
        (
            "tcpobs_stuck_connections{phase=\"blackhole\"}) > 0\n        for: 5m",
            "tcpobs_stuck_connections{phase=\"blackhole\"}) > 0\n        for: 25m",
        ),
        ("severity: critical", "severity: warning"),
    ] {
        assert!(rules.contains(from), "the rules no longer have `{from}`");
        let dir = std::env::temp_dir().join(format!("tcpobs-rules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tcpobs-rules.yaml"), rules.replacen(from, to, 1)).unwrap();
        fs::copy(repo_file(RULE_TESTS), dir.join("tcpobs-rules.test.yaml")).unwrap();
        let (ok, report) = promtool(&["test", "rules", "tcpobs-rules.test.yaml"], &dir);
        assert!(!ok, "`{from}` → `{to}` still passes:\n{report}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// `metric{matchers}` selectors in a PromQL text: metric name → (label, operator, value).
fn selectors(text: &str) -> BTreeMap<String, BTreeSet<(String, String, String)>> {
    let mut found: BTreeMap<String, BTreeSet<_>> = BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find("tcpobs_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let matchers = found.entry(name.to_owned()).or_default();
        if let Some(inner) = tail[end..]
            .strip_prefix('{')
            .and_then(|t| t.split_once('}'))
            .map(|(inner, _)| inner)
        {
            for matcher in inner.split(',').filter(|m| !m.trim().is_empty()) {
                let (label, op, value) = ["=~", "!~", "!=", "="]
                    .iter()
                    .find_map(|op| {
                        matcher
                            .split_once(op)
                            .map(|(l, v)| (l.trim(), *op, v.trim().trim_matches('"')))
                    })
                    .unwrap_or_else(|| panic!("matcher `{matcher}` in `{name}`"));
                matchers.insert((label.to_owned(), op.to_owned(), value.to_owned()));
            }
        }
        rest = &tail[end..];
    }
    found
}

/// Every PromQL text of the dashboard: targets' `expr` and variables' queries.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "definition", Value::String(query)) => {
                            queries.push(query.clone())
                        }
                        _ => stack.push(value),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    queries
}

#[test]
fn every_metric_used_exists_in_a_real_exposition() {
    let daemon = Daemon::start(&["--port", &closed_port().to_string()]);
    let (status, exposition) = daemon.api("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    // Sample lines: `name{labels} value` or `name value`.
    let samples: Vec<(&str, &str)> = exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = line[end..]
                .strip_prefix('{')
                .and_then(|t| t.split_once('}'))
                .map_or("", |(labels, _)| labels);
            (&line[..end], labels)
        })
        .collect();

    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(repo_file(DASHBOARD)).unwrap()).unwrap();
    let sources = [
        (RULES, fs::read_to_string(repo_file(RULES)).unwrap()),
        (
            RULE_TESTS,
            fs::read_to_string(repo_file(RULE_TESTS)).unwrap(),
        ),
        (DASHBOARD, dashboard_queries(&dashboard).join("\n")),
    ];
    let mut checked = 0;
    for (source, text) in &sources {
        let used = selectors(text);
        assert!(!used.is_empty(), "{source} uses no tcpobs metric");
        for (name, matchers) in used {
            let series: Vec<&str> = samples
                .iter()
                .filter(|(sample, _)| *sample == name)
                .map(|(_, labels)| *labels)
                .collect();
            assert!(
                !series.is_empty(),
                "{source} uses {name}, which the daemon does not export"
            );
            for (label, op, value) in matchers {
                // Prometheus adds these when it scrapes.
                if label == "job" || label == "instance" {
                    continue;
                }
                let present = |labels: &&str| labels.contains(&format!("{label}=\""));
                let exact = |labels: &&str| labels.contains(&format!("{label}=\"{value}\""));
                // A listening port is whatever the host listens on: the label must exist.
                let ok = match op.as_str() {
                    "=" if label != "port" => series.iter().any(exact),
                    _ => series.iter().any(present),
                };
                assert!(
                    ok,
                    "{source}: {name}{{{label}{op}\"{value}\"}} matches nothing the daemon \
                     exports: {series:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} metric uses checked");
}

#[test]
fn the_dashboard_covers_the_three_pillars_handshakes_and_health() {
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(repo_file(DASHBOARD)).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for row in [
        "Utilisation and reuse",
        "Termination source",
        "Closure timing",
        "Handshake and response latency",
        "Listener health and stalls",
        "tcpobs health",
    ] {
        assert!(rows.contains(&row), "no `{row}` row: {rows:?}");
    }
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id {panel}"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{} is wider than the grid", panel["title"]);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{}: `{expr}` ignores the host variable",
                panel["title"]
            );
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "instance", "role"]);
}

/// The README's Prometheus configuration, with the rule file beside it, is valid. (Debian's
/// Prometheus is built without Kubernetes service discovery, so the README's Kubernetes job
/// cannot be checked here.)
#[test]
fn the_readme_scrape_configuration_is_valid() {
    let readme = fs::read_to_string(repo_file("README.md")).unwrap();
    let section = readme
        .split("## Prometheus, alerts and dashboard")
        .nth(1)
        .expect("the README's Prometheus section");
    let config = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in the Prometheus section");
    assert!(config.contains("rule_files:"), "{config}");
    let dir = std::env::temp_dir().join(format!("tcpobs-scrape-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("prometheus.yml"), config).unwrap();
    fs::copy(repo_file(RULES), dir.join("tcpobs-rules.yaml")).unwrap();
    let (ok, report) = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(ok, "promtool check config:\n{config}\n{report}");
    assert!(report.contains("12 rules found"), "{report}");
    fs::remove_dir_all(&dir).unwrap();
}
