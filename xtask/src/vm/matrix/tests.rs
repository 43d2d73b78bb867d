//! The matrix table read from steps' logs.

use std::{
    ops::Deref,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;

/// Steps' outcomes whose logs are temporary files, removed once the test is done with them.
struct Outcomes(Vec<Outcome>);

impl Deref for Outcomes {
    type Target = [Outcome];

    fn deref(&self) -> &[Outcome] {
        &self.0
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        for outcome in &self.0 {
            let _ = fs::remove_file(&outcome.log);
        }
    }
}

/// Outcomes with these statuses, durations (s) and logs.
fn outcomes(steps: &[(Status, f64, &str)]) -> Outcomes {
    static LOGS: AtomicUsize = AtomicUsize::new(0);
    Outcomes(
        steps
            .iter()
            .map(|&(status, seconds, log)| {
                let path = std::env::temp_dir().join(format!(
                    "xtask-vm-matrix-{}-{}.log",
                    std::process::id(),
                    LOGS.fetch_add(1, Ordering::Relaxed)
                ));
                fs::write(&path, log).unwrap();
                Outcome {
                    status,
                    seconds,
                    log: path,
                }
            })
            .collect(),
    )
}

fn lifecycle() -> Vec<TestModule> {
    vec![TestModule {
        name: "lifecycle".into(),
        binary: "/t/integration-1".into(),
        dir: "/t".into(),
        others: vec!["http".into(), "netns".into()],
    }]
}

#[test]
fn forced_strategies_check_then_test() {
    let mode = Mode::Forced(vec!["fentry".into(), "kprobe".into()]);
    let steps = steps(
        &mode,
        Path::new("/t/tcpobs"),
        &lifecycle(),
        &["linger".into()],
        Duration::from_secs(600),
    );
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "check.fentry",
            "test.lifecycle.fentry",
            "check.kprobe",
            "test.lifecycle.kprobe"
        ]
    );
    assert_eq!(
        steps[0].command,
        ["/t/tcpobs", "--probe-strategy", "fentry", "--check"]
    );
    assert_eq!(steps[1].requires.as_deref(), Some("check.fentry"));
    assert_eq!(
        steps[3].env,
        [("TCPOBS_PROBE_STRATEGY".to_owned(), "kprobe".to_owned())]
    );
    assert_eq!(
        steps[3].command,
        [
            "/t/integration-1",
            "--test-threads=1",
            "--skip",
            "http::",
            "--skip",
            "netns::",
            "linger"
        ]
    );
}

#[test]
fn check_output_becomes_family_cells() {
    let mode = Mode::Forced(vec!["fentry".into(), "kprobe".into()]);
    let fentry = "family=state strategy=tracepoint\nfamily=data strategy=fentry\n\
                  family=close strategy=fentry\n\
                  family=drops strategy=none programs=none why=\"no drop reason\"\n";
    let kprobe = "family=state strategy=kprobe\n\
                  tcpobs: error: cannot attach the data hooks: kprobes are not enabled\n";
    let passed = "test result: ok. 12 passed; 0 failed; 0 ignored; finished in 58.31s\n";
    let table = table(
        &mode,
        &lifecycle(),
        &outcomes(&[
            (Status::Exited(0), 1.0, fentry),
            (Status::Exited(0), 58.3, passed),
            (Status::Exited(1), 2.0, kprobe),
            (Status::Skipped, 0.0, ""),
        ]),
    );
    let rendered = table.render();
    let row = |label: &str| {
        rendered
            .lines()
            .find(|line| line.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in\n{rendered}"))
            .split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .collect::<Vec<_>>()
    };
    assert_eq!(row("check"), ["check", "pass", "unsupported"]);
    assert_eq!(
        row("family state"),
        ["family state", "via tracepoint", "pass"]
    );
    assert_eq!(row("family data"), ["family data", "pass", "unsupported"]);
    assert_eq!(
        row("family close"),
        ["family close", "pass", "-"],
        "not reached"
    );
    assert_eq!(
        row("family drops"),
        ["family drops", "unsupported", "-"],
        "an optional family the kernel cannot attach"
    );
    assert_eq!(
        row("test lifecycle"),
        ["test lifecycle", "pass (12/12, 58 s)", "unsupported"]
    );
    assert!(!table.failed(), "{rendered}");
    assert!(
        rendered.contains("kprobe: the check says: family=state strategy=kprobe\n    tcpobs: error: cannot attach the data hooks"),
        "{rendered}"
    );
}

#[test]
fn failing_tests_are_summarised() {
    let log = "running 2 tests\n\
               ---- a stdout ----\n\
               thread 'a' (153) panicked at tests/harness/lib.rs:148:25:\n\
               tcpobs failed to start: cannot attach to tracepoint sock:sock_send_length\n\
               \nfailures:\n    a\n    b\n\n\
               test result: FAILED. 0 passed; 2 failed; 0 ignored; 0 measured\n";
    let table = table(
        &Mode::Auto,
        &lifecycle(),
        &outcomes(&[(Status::Exited(101), 35.4, log)]),
    );
    assert!(table.failed());
    let rendered = table.render();
    assert!(
        rendered.contains("test lifecycle  FAIL (0/2, 35 s)"),
        "{rendered}"
    );
    assert!(
        rendered.contains("lifecycle [auto]: 2 failed: a, b\n    first panic: tests/harness/lib.rs:148:25: tcpobs failed to start: cannot attach to tracepoint sock:sock_send_length"),
        "{rendered}"
    );
}

#[test]
fn compared_values_follow_the_panic() {
    let log = "thread 'b' (154) panicked at tests/netns.rs:159:5:\n\
               assertion `left == right` failed: ConnectionRecord {\n    id: 1,\n}\n  \
               left: Some(Other)\n right: Some(Unreachable)\n\
               note: run with `RUST_BACKTRACE=1`\n\nfailures:\n    b\n\n";
    assert_eq!(
        failure_summary(log),
        "1 failed: b\nfirst panic: tests/netns.rs:159:5: assertion `left == right` failed: \
         ConnectionRecord {\n  left: Some(Other)\n  right: Some(Unreachable)"
    );
}

#[test]
fn the_failing_tests_output_is_kept_whole() {
    let log = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n\
               ---- b stdout ----\nrecords: [\n  one,\n  two,\n]\n\
               thread 'b' panicked at tests/x.rs:1:1:\nboom\n\n\
               failures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed\n";
    assert_eq!(
        panic_output(log),
        "---- b stdout ----\nrecords: [\n  one,\n  two,\n]\n\
         thread 'b' panicked at tests/x.rs:1:1:\nboom\n"
    );
    let crashed: String = (0..200).map(|n| format!("line {n}\n")).collect();
    let tail = panic_output(&crashed);
    assert!(
        tail.starts_with("line 50\n") && tail.ends_with("line 199"),
        "{tail}"
    );
}
