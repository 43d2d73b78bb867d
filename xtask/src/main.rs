//! Developer and CI tasks: `cargo xtask <setup|run|test|bench|soak|fuzz|vm-test>`.
//!
//! Every task first makes sure the machine has what tcpobs needs (see [`setup`]): on a
//! brand-new Debian 12 machine, as root, `cargo xtask run` and `cargo xtask test` install
//! everything and then build; on a machine that has it all, the checks take well under a
//! second and cargo's incremental build does the rest.

mod bench;
mod fuzz;
mod install;
mod setup;
mod soak;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "tcpobs developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install missing prerequisites: Debian packages (LLVM 22, nginx, curl, ...), the nightly
    /// rust-src component, bpf-linker, the Python tools the tests use, QEMU for the kernel
    /// matrix.
    Setup {
        /// Only what building tcpobs needs (as the container image build does).
        #[arg(long)]
        build_only: bool,
    },
    /// Build tcpobs (release) and install it as a systemd service: the binary in
    /// /usr/local/bin, the unit in /etc/systemd/system, a default /etc/tcpobs/tcpobs.toml
    /// (an existing one is kept). Needs root.
    Install {
        /// Install below this directory instead of / (for packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
    },
    /// Build tcpobs (release) and run it with sensible defaults; arguments after `--` go to
    /// tcpobs, e.g. `cargo xtask run -- --events exchanges --port 80`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure tcpobs's overhead side by side with no tracer and with tcplife, and write
    /// BENCHMARKS.md (needs root; about 18 minutes, `--quick` under a minute and a half).
    Bench {
        /// One short pair of each workload (about 80 s), printed and not written.
        #[arg(long, conflicts_with = "smoke")]
        quick: bool,
        /// One short pair of everything, to check the harness; writes nothing.
        #[arg(long)]
        smoke: bool,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
        /// Run only these workloads and print their rows (writes nothing).
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(bench::WORKLOADS))]
        only: Vec<String>,
    },
    /// Fuzz the parsers with cargo-fuzz (libFuzzer, nightly; installs cargo-fuzz when
    /// missing): each target in turn for `--time` seconds, or only the targets named. Not part
    /// of the tests; a crash stops the run and names the input to reproduce it with.
    Fuzz {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        targets: Vec<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        time: u64,
    },
    /// Soak tcpobs under the heaviest connection churn this machine sustains (nginx and
    /// wrk, as the bench's churn) for ten minutes, sampling its memory, and check what it
    /// reported against what nginx served; writes the figures into RELIABILITY.md (needs
    /// root; `--quick` runs one minute).
    Soak {
        /// One minute instead of ten (the figures are written, marked as such).
        #[arg(long)]
        quick: bool,
        /// Where to write the figures.
        #[arg(long, default_value = "RELIABILITY.md")]
        output: PathBuf,
    },
    /// Internal to `bench`: hold `count` idle loopback connections until stdin closes.
    #[command(hide = true)]
    BenchHold { count: usize, first: u64 },
    /// Run the whole test suite: formatting and lints, unit tests, the integration tests
    /// that load the real programs and drive real traffic, a smoke run of the benchmark
    /// harness, and the integration tests again in Linux 6.1 and 5.10 under QEMU with each
    /// of the fentry and kprobe strategies (needs root).
    Test {
        /// Skip the kernel matrix part (`vm-test --kernel 6.1,5.10 --strategy fentry,kprobe`,
        /// about 9 minutes), for a quicker run on the host kernel alone. CI runs it.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the integration test binary, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian kernels under QEMU (software emulation) and run the integration tests in
    /// each, once per probe strategy the kernel supports; prints kernel × family × strategy.
    VmTest(vm::Args),
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    let root = workspace_root();
    match task {
        // vm-test has exit codes of its own.
        Task::VmTest(args) => return Ok(vm::main(&root, &args)),
        Task::Setup { build_only } => setup::ensure(
            if build_only {
                setup::Needs::Run
            } else {
                setup::Needs::Test
            },
            &root,
        ),
        Task::Install { destdir } => {
            setup::ensure(setup::Needs::Run, &root)?;
            cargo(&root, &["build", "--release", "--package", "tcpobs"])?;
            install::run(&root, &root.join("target/release/tcpobs"), &destdir)
        }
        Task::Run { args } => {
            setup::ensure(setup::Needs::Run, &root)?;
            cargo(&root, &["build", "--release", "--package", "tcpobs"])?;
            let binary = root.join("target/release/tcpobs");
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            match status.code() {
                Some(0) => Ok(()),
                _ => bail!("tcpobs exited with {status}"),
            }
        }
        Task::Bench {
            quick,
            smoke,
            output,
            only,
        } => {
            setup::ensure(setup::Needs::Bench, &root)?;
            let mode = match (quick, smoke) {
                (_, true) => bench::Mode::SMOKE,
                (true, _) => bench::Mode::QUICK,
                _ => bench::Mode::FULL,
            };
            bench(&root, mode, &only, &output)
        }
        Task::BenchHold { count, first } => bench::hold(count, first),
        Task::Soak { quick, output } => {
            setup::ensure(setup::Needs::Bench, &root)?;
            if !setup::is_root() {
                bail!("the soak loads eBPF programs: run `cargo xtask soak` as root");
            }
            cargo(&root, &["build", "--release", "--package", "tcpobs"])?;
            let mode = if quick {
                soak::Mode::QUICK
            } else {
                soak::Mode::FULL
            };
            let output = if output.is_relative() {
                root.join(output)
            } else {
                output
            };
            soak::run(&root, &root.join("target/release/tcpobs"), mode, &output)
        }
        Task::Fuzz { targets, time } => {
            setup::ensure(setup::Needs::Run, &root)?;
            fuzz::run(&root, &targets, std::time::Duration::from_secs(time))
        }
        Task::Test { no_vm, args } => {
            setup::ensure(setup::Needs::Test, &root)?;
            test(&root, &args)?;
            // The harness must keep working; its figures are not checked here.
            bench(&root, bench::Mode::SMOKE, &[], Path::new("/dev/null"))?;
            if no_vm {
                eprintln!("xtask: the kernel matrix was skipped (--no-vm)");
                return Ok(ExitCode::SUCCESS);
            }
            vm::in_tests(&root, &args)
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root");
    }
    cargo_toolchain(root, "nightly", &["fmt", "--all", "--", "--check"])
        .context("formatting differs: run `cargo +nightly fmt --all`")?;
    cargo(root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo_toolchain(
        root,
        "nightly",
        &[
            "clippy",
            "--package",
            "tcpobs-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo(
        root,
        &["test", "--package", "tcpobs-common", "--features", "user"],
    )?;
    cargo(root, &["test", "--package", "tcpobs", "--package", "xtask"])?;
    // The CLI tests run the binary itself.
    cargo(root, &["build", "--package", "tcpobs"])?;
    // The integration tests share the kernel's tracepoints: one at a time.
    let mut integration = vec![
        "test",
        "--package",
        "tcpobs-tests",
        "--",
        "--test-threads=1",
    ];
    integration.extend(args.iter().map(String::as_str));
    cargo(root, &integration)
}

fn bench(root: &Path, mode: bench::Mode, only: &[String], output: &Path) -> Result<()> {
    if !setup::is_root() {
        bail!("the benchmarks load eBPF programs: run `cargo xtask bench` as root");
    }
    cargo(root, &["build", "--release", "--package", "tcpobs"])?;
    let output = if output.is_relative() {
        root.join(output)
    } else {
        output.to_path_buf()
    };
    bench::run(
        root,
        &root.join("target/release/tcpobs"),
        mode,
        only,
        &output,
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args(args);
    run_command(command)
}

/// Runs cargo through rustup with a given toolchain (for nightly-only steps).
fn cargo_toolchain(root: &Path, toolchain: &str, args: &[&str]) -> Result<()> {
    let mut command = Command::new("rustup");
    command
        .current_dir(root)
        .args(["run", toolchain, "cargo"])
        .args(args)
        // The outer `cargo xtask` sets these for the stable toolchain.
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    run_command(command)
}

fn run_command(mut command: Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}
