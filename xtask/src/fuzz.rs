//! `cargo xtask fuzz [TARGET...] [--time S]`: the cargo-fuzz targets in `fuzz/` (libFuzzer,
//! nightly), one after the other, each for a while. Not part of the tests.
//!
//! Each target drives one entry point of `tcpobs::fuzzing`. Its corpus grows in
//! `fuzz/corpus/<target>` (not committed); the committed seeds in `fuzz/seeds/<target>` and
//! the dictionary `fuzz/dict/<target>.dict`, where there is one, start it off. A crash stops
//! the run and leaves its input in `fuzz/artifacts/<target>`: fix the cause, and keep the input
//! in `fuzz/regressions/<target>/`, which the unit tests replay (`tcpobs::fuzzing`), with a
//! readable test of the fix next to the code. The summary at the end gives each target's runs and time,
//! for RELIABILITY.md's fuzzing table.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The targets, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: [&str; 7] = [
    "ring_buffer",
    "btf",
    "config_file",
    "flags",
    "line_format",
    "put_config",
    "connections_query",
];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The longest input each target is given: a ring buffer target input holds a few events of
/// up to 408 bytes each; the text parsers need no more than a long command line.
fn max_len(target: &str) -> u32 {
    match target {
        "ring_buffer" | "btf" => 16_384,
        _ => 4096,
    }
}

/// Installs cargo-fuzz from crates.io when it is missing (or another version).
fn ensure_cargo_fuzz() -> Result<()> {
    let version = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output();
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about two minutes)");
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
        ])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed: {status}");
    }
    Ok(())
}

/// How one target's run went.
struct Outcome {
    target: String,
    runs: Option<u64>,
    took: Duration,
    crash: Option<String>,
    /// The slowest input, when libFuzzer found one slow enough to keep (10 s by default): not
    /// a crash, but worth a look (a slow parse is a denial of service).
    slow: Option<String>,
}

/// Runs each of `targets` (all if empty) for `time`, one at a time.
pub fn run(root: &Path, targets: &[String], time: Duration) -> Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<String> = if targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        targets.to_vec()
    };
    let mut outcomes = Vec::new();
    for target in &targets {
        let outcome = fuzz_one(root, target, time)?;
        let crashed = outcome.crash.is_some();
        outcomes.push(outcome);
        if crashed {
            break;
        }
    }
    println!("\n| target | runs | time | result |\n|---|---|---|---|");
    for outcome in &outcomes {
        println!(
            "| {} | {} | {:.0} s | {} |",
            outcome.target,
            outcome
                .runs
                .map_or_else(|| "?".to_owned(), |runs| runs.to_string()),
            outcome.took.as_secs_f64(),
            match (&outcome.crash, &outcome.slow) {
                (Some(crash), _) => crash.clone(),
                (None, Some(slow)) => format!("no crash; slow input {slow}"),
                (None, None) => "no crash".to_owned(),
            },
        );
    }
    if let Some(outcome) = outcomes.iter().find(|o| o.crash.is_some()) {
        bail!(
            "{} crashed; reproduce with `cargo +nightly fuzz run --debug-assertions {} {}`",
            outcome.target,
            outcome.target,
            outcome.crash.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

fn fuzz_one(root: &Path, target: &str, time: Duration) -> Result<Outcome> {
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let mut command = Command::new("rustup");
    command
        .current_dir(root)
        .args(["run", "nightly", "cargo", "fuzz", "run"])
        // Overflow checks on, as in the test suite: arithmetic that overflows on some input is
        // a finding, even where a release build would wrap.
        .args(["--debug-assertions", target])
        .arg(&corpus);
    // Seeds, and the inputs that once crashed it: both read, neither written to.
    for seeds in [fuzz.join("seeds"), fuzz.join("regressions")] {
        let seeds = seeds.join(target);
        if seeds.is_dir() {
            command.arg(seeds);
        }
    }
    command.args([
        "--".to_owned(),
        format!("-max_total_time={}", time.as_secs().max(1)),
        format!("-max_len={}", max_len(target)),
        "-print_final_stats=1".to_owned(),
    ]);
    let dict = fuzz.join("dict").join(format!("{target}.dict"));
    if dict.is_file() {
        command.arg(format!("-dict={}", dict.display()));
    }
    command
        // The outer `cargo xtask` sets these for the stable toolchain.
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .stderr(Stdio::piped());
    eprintln!("xtask: fuzzing {target} for {} s", time.as_secs());
    let started = Instant::now();
    let mut child = command.spawn().context("running cargo fuzz (nightly)")?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let (mut runs, mut crash, mut slow) = (None, None, None);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        eprintln!("{line}");
        // libFuzzer's final statistics, and where it wrote a crashing input.
        if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            runs = value.trim().parse().ok();
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            let path = path.trim().to_owned();
            if Path::new(&path)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("slow-unit-"))
            {
                slow = Some(path);
            } else {
                crash = Some(path);
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && crash.is_none() {
        bail!("cargo fuzz run {target} failed: {status}");
    }
    Ok(Outcome {
        target: target.to_owned(),
        runs,
        took: started.elapsed(),
        crash,
        slow,
    })
}
