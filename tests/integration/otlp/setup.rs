//! Settings and deployment: bad settings exit 2 naming the setting, the DaemonSet's OTLP
//! variant validates and runs, and the README's collector configuration fits.

use std::process::Command;

use serde_json::Value;
use tcpobs_tests::{
    closed_port,
    daemon::Daemon,
    otlp::{Kind, Receiver, attribute},
    phases::Scratch,
    repo_file, tcpobs_binary,
};

/// Bad settings stop tcpobs at start-up with exit code 2 and the setting's name.
#[test]
fn bad_otlp_settings_exit_2_naming_the_setting() {
    for (args, env, needle) in [
        (
            &["--otlp-endpoint", "https://collector:4318"][..],
            &[][..],
            "--otlp-endpoint",
        ),
        (
            &["--otlp-endpoint", "http://collector:4318"][..],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")][..],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            &[][..],
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317")][..],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            &["--otlp-signals", "traces,profiles"][..],
            &[][..],
            "--otlp-signals",
        ),
        (
            &["--otlp-endpoint", "http://c:4318"][..],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key")][..],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
    ] {
        let output = Command::new(tcpobs_binary())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    }
    let help = Command::new(tcpobs_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--otlp-endpoint", "--otlp-protocol", "--otlp-signals"] {
        assert!(help.contains(flag), "{flag} in --help");
    }
}

/// Runs `tests/deploy/check_overlay.py` on `dir`: (success, its report).
fn check_overlay(dir: &std::path::Path) -> (bool, String) {
    tcpobs_tests::venv_check("check_overlay.py", dir)
}

/// The DaemonSet's OTLP variant: the overlay validates against the Kubernetes schemas with
/// the base, takes the endpoint from the node's address and names the node in the resource;
/// its settings, with the base's configuration, run the daemon, which sends to the
/// collector they name.
#[test]
fn the_daemonset_s_otlp_variant() {
    let (passed, report) = check_overlay(&repo_file("deploy/kubernetes-otlp"));
    assert!(passed, "{report}");
    for line in [
        "patched: DaemonSet against Kubernetes 1.30",
        "patched: DaemonSet against Kubernetes 1.37",
        "OTEL_EXPORTER_OTLP_ENDPOINT is http://$(NODE_IP):4318",
        "NODE_IP from status.hostIP",
        "k8s.node.name from spec.nodeName",
        "0 failed",
    ] {
        assert!(report.contains(line), "`{line}` missing from:\n{report}");
    }

    // A copy with the node's address swapped for the pod's is caught.
    let scratch = Scratch::new("overlay");
    for dir in ["kubernetes", "kubernetes-otlp"] {
        std::fs::create_dir_all(scratch.path(dir)).unwrap();
        for entry in std::fs::read_dir(repo_file(&format!("deploy/{dir}"))).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), scratch.path(dir).join(entry.file_name())).unwrap();
        }
    }
    let patch = scratch.path("kubernetes-otlp/otlp-env.yaml");
    let text = std::fs::read_to_string(&patch).unwrap();
    std::fs::write(&patch, text.replace("status.hostIP", "status.podIP")).unwrap();
    let (passed, broken) = check_overlay(&scratch.path("kubernetes-otlp"));
    assert!(!passed, "{broken}");
    assert!(broken.contains("not the node's address"), "{broken}");

    // The pod's environment, as Kubernetes expands it on a node named test-node whose
    // collector is our receiver.
    let receiver = Receiver::start(Kind::Sink);
    let env: serde_json::Map<String, Value> = report
        .lines()
        .find_map(|line| line.strip_prefix("env: "))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap();
    let expanded: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .unwrap()
                .replace("$(NODE_IP):4318", &format!("127.0.0.1:{}", receiver.http))
                .replace("$(K8S_NODE_NAME)", "test-node");
            (name.clone(), value)
        })
        .chain([("OTEL_METRIC_EXPORT_INTERVAL".to_owned(), "500".to_owned())])
        .collect();
    let env: Vec<(&str, &str)> = expanded
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let config = repo_file("deploy/kubernetes/tcpobs.toml");
    let daemon = Daemon::start_with(
        &[],
        &[
            "--config",
            config.to_str().unwrap(),
            "--port",
            &closed_port().to_string(),
        ],
        &env,
    );
    let (_, body) = daemon.api("GET", "/config", None, None);
    let settings: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        settings["restart_required"]["otlp"]["metrics"],
        format!(
            "http://127.0.0.1:{}/v1/metrics (http/protobuf)",
            receiver.http
        ),
        "{body}"
    );
    let metric = receiver.wait_for("a metrics export", |received| {
        received.metrics.first().cloned()
    });
    assert_eq!(
        attribute(&metric["resource"], "k8s.node.name"),
        Some("test-node".into())
    );
    assert_eq!(
        attribute(&metric["resource"], "host.name"),
        Some("test-node".into())
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// The README's collector configuration receives all three signals on the ports tcpobs's
/// overlay sends to, and every pipeline names components it defines.
#[test]
fn the_readme_s_collector_configuration_fits() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let section = readme
        .split("**A collector for tcpobs.**")
        .nth(1)
        .expect("the README's collector section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("its configuration");
    const CHECK: &str = r#"
import sys, yaml
config = yaml.safe_load(sys.stdin)
protocols = config["receivers"]["otlp"]["protocols"]
assert protocols["grpc"]["endpoint"].endswith(":4317"), protocols
assert protocols["http"]["endpoint"].endswith(":4318"), protocols
for signal in ["traces", "logs", "metrics"]:
    pipeline = config["service"]["pipelines"][signal]
    assert "otlp" in pipeline["receivers"], signal
    for kind in ["receivers", "processors", "exporters"]:
        for name in pipeline.get(kind, []):
            assert name in config[kind], (signal, kind, name)
print("ok")
"#;
    let mut child = Command::new(repo_file("target/tools/venv/bin/python"))
        .args(["-c", CHECK])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
}
