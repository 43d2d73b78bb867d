//! The Kubernetes deployment: every manifest validates against the Kubernetes schemas (and
//! the ServiceMonitor against the Prometheus Operator's), the pieces fit together, broken
//! manifests are caught, the DaemonSet's configuration runs the real daemon, and the
//! Dockerfile builds what the DaemonSet runs.
//!
//! The validators come from PyPI, installed by `cargo xtask setup` in `target/tools/venv`;
//! `tests/deploy/check_manifests.py` drives them.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tcpobs_tests::{closed_port, daemon::Daemon, repo_file, venv_check};

const MANIFESTS: &str = "deploy/kubernetes";

/// Runs the checker on `dir`: (success, its report).
fn check_manifests(dir: &Path) -> (bool, String) {
    venv_check("check_manifests.py", dir)
}

#[test]
fn manifests_validate_against_the_schemas_and_fit_together() {
    let (passed, report) = check_manifests(&repo_file(MANIFESTS));
    assert!(passed, "{report}");
    for line in [
        "daemonset.yaml: DaemonSet against Kubernetes 1.37",
        "daemonset.yaml: DaemonSet against Kubernetes 1.30",
        "service.yaml: Service against Kubernetes 1.37",
        "serviceaccount.yaml: ServiceAccount against Kubernetes 1.37",
        "namespace.yaml: Namespace against Kubernetes 1.37",
        "servicemonitor.yaml: ServiceMonitor against the Prometheus Operator schema",
        "configMapGenerator tcpobs-config: ConfigMap against Kubernetes 1.37",
        "the Service selects the DaemonSet's pods",
        "the ServiceMonitor selects the Service",
        "is in the generated ConfigMap",
        "0 failed",
    ] {
        assert!(report.contains(line), "`{line}` missing from:\n{report}");
    }
}

/// Each kind of mistake the checker is there for, made on a copy of the manifests.
#[test]
fn broken_manifests_are_caught() {
    let source = repo_file(MANIFESTS);
    for (file, from, to, expected) in [
        (
            "daemonset.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "'readOnlyRootFileSystem' was unexpected",
        ),
        (
            "daemonset.yaml",
            "add: [\"BPF\", \"PERFMON\", \"SYS_PTRACE\"]",
            "add: BPF",
            "DaemonSet against Kubernetes",
        ),
        (
            "servicemonitor.yaml",
            "scrapeTimeout: 10s",
            "scrapeTimeOut: 10s",
            "'scrapeTimeOut' was unexpected",
        ),
        (
            "service.yaml",
            "targetPort: metrics",
            "targetPort: http",
            "targets port http",
        ),
        (
            "kustomization.yaml",
            "  - servicemonitor.yaml\n",
            "",
            "kustomization resources",
        ),
        (
            "daemonset.yaml",
            "mountPath: /etc/tcpobs\n",
            "mountPath: /etc/tcpobs.d\n",
            "is not a file of a mounted ConfigMap",
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("tcpobs-manifests-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        let text = fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.contains(from), "{file} no longer has `{from}`");
        fs::write(dir.join(file), text.replacen(from, to, 1)).unwrap();
        let (passed, report) = check_manifests(&dir);
        assert!(!passed, "{file}: `{from}` → `{to}` passed:\n{report}");
        assert!(
            report.contains(expected),
            "{file}: `{from}` → `{to}`: `{expected}` missing from:\n{report}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// The configuration the DaemonSet mounts runs the real daemon.
#[test]
fn the_daemonset_configuration_runs_the_daemon() {
    let config = repo_file(&format!("{MANIFESTS}/tcpobs.toml"));
    let daemon = Daemon::start(&[
        "--config",
        config.to_str().unwrap(),
        "--port",
        &closed_port().to_string(),
    ]);
    let (status, _) = daemon.api("GET", "/readyz", None, None);
    assert_eq!(status, 200);
    let (_, body) = daemon.api("GET", "/config", None, None);
    let settings: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(settings["runtime"]["events"], "anomalies", "{body}");
    assert_eq!(
        settings["restart_required"]["labels"][0], "namespace=top:10",
        "{body}"
    );
    // Its labels are in the exposition from the first scrape (as `other`).
    let (_, metrics) = daemon.api("GET", "/metrics", None, None);
    assert!(
        metrics.contains("tcpobs_connections_opened_total{role=\"client\",namespace=\"other\"}"),
        "{metrics}"
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// The image is built the way a developer machine is prepared, and runs the daemon.
#[test]
fn the_dockerfile_builds_the_daemon_as_setup_prepares_it() {
    let dockerfile = fs::read_to_string(repo_file("Dockerfile")).unwrap();
    let stages = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .count();
    assert_eq!(stages, 2, "a build stage and a runtime stage");
    for needle in [
        "rustup toolchain install nightly --profile minimal --component rust-src",
        "RUN cargo xtask setup --build-only",
        "RUN cargo build --release --locked --package tcpobs",
        "COPY --from=build /src/target/release/tcpobs /usr/local/bin/tcpobs",
        "ENTRYPOINT [\"/usr/local/bin/tcpobs\"]",
    ] {
        assert!(dockerfile.contains(needle), "`{needle}` in the Dockerfile");
    }
    // The build stage's Rust is the workspace's rust-version.
    let manifest = fs::read_to_string(repo_file("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap();
    assert!(
        dockerfile.contains(&format!("FROM rust:{rust_version}-bookworm AS build")),
        "the build image is Rust {rust_version}"
    );
    let ignore = fs::read_to_string(repo_file(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|line| line == "target"));
    // The setup flag the image relies on exists.
    let output = Command::new("cargo")
        .current_dir(repo_file(""))
        .args(["xtask", "setup", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--build-only"), "{help}");
}
