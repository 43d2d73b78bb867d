//! `cargo xtask vm-test`: the kernel matrix. Each kernel is a Debian kernel package (5.10
//! from bullseye, 6.1 from bookworm, 6.12 from trixie, the newest from unstable or
//! experimental), booted under QEMU with software emulation (KVM guests fail on the
//! development machines), sharing the host's root filesystem read-only (writes go to a RAM
//! overlay), so the guest runs the host's freshly built test binary, nginx, curl and ip.
//!
//! Exit codes: 0 every check and test passed (or the kernel does not support the strategy);
//! 1 a check or test failed; 2 invalid arguments; 3 the runner could not get ready
//! (installing, building, downloading or unpacking a kernel); 4 a guest did not boot or
//! crashed; 5 a guest ran out of time. With `--exec`, the command's own exit status.

mod apt;
mod guest;
mod initramfs;
mod kernel;
mod matrix;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub use self::kernel::Kernel;
use self::{
    guest::{Ending, Machine, Status, Step},
    matrix::{Mode, STRATEGIES, Table, TestModule},
};
use crate::setup;

const FAILED: u8 = 1;
const USAGE: u8 = 2;
const NOT_READY: u8 = 3;
const NO_BOOT: u8 = 4;
const TIMED_OUT: u8 = 5;

/// The integration test target (`[[test]]` in tests/Cargo.toml): one binary, a module per
/// area.
const INTEGRATION: &str = "integration";

/// The modules of the integration test binary a guest runs unless told otherwise: the ones
/// whose results depend on the kernel (every hook family on loopback; retransmits, timeouts
/// and unreachable hosts across network namespaces). The others (`http`, `cli`, `exporter`,
/// `runtime`, the phase tests, ...) exercise the same hooks through nginx, the daemon's
/// outputs and uprobes, and add minutes per strategy under emulation.
const DEFAULT_TESTS: [&str; 3] = ["lifecycle", "netns", "why"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kernels to boot: 5.10, 6.1, 6.12 or latest (repeat or comma-separate).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        required_unless_present = "all"
    )]
    kernel: Vec<Kernel>,
    /// Every kernel of the matrix.
    #[arg(long, conflicts_with = "kernel")]
    all: bool,
    /// Modules of the integration test binary to run in each guest, one step each, or `all`.
    #[arg(long, value_delimiter = ',', default_values = DEFAULT_TESTS)]
    tests: Vec<String>,
    /// Strategies to force, in turn; all by default.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(STRATEGIES))]
    strategy: Vec<String>,
    /// Run this shell command in each guest instead of the tests, show its output and exit
    /// with its status.
    #[arg(long, conflicts_with_all = ["tests", "strategy"])]
    exec: Option<String>,
    /// Ask the Debian mirror for newer kernel packages instead of using the cached ones.
    #[arg(long)]
    refresh: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(512..))]
    memory: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Seconds from starting QEMU to the guest running its first step.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Seconds each step (one test module, one check, the --exec command) may take.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Show the guest's output as it runs.
    #[arg(long, short)]
    verbose: bool,
    /// Extra arguments for the test binary, e.g. a test name filter.
    #[arg(last = true)]
    args: Vec<String>,
}

/// A failure that ends the whole run, with its exit code.
struct Fatal(u8, anyhow::Error);

trait Code<T> {
    fn code(self, code: u8) -> Result<T, Fatal>;
}

impl<T> Code<T> for Result<T> {
    fn code(self, code: u8) -> Result<T, Fatal> {
        self.map_err(|err| Fatal(code, err))
    }
}

/// The part of the matrix that `cargo xtask test` (and so CI) runs, within its time budget:
/// 6.1 and 5.10, each with fentry and with kprobes. Neither has the data family's
/// tracepoints (Linux 6.3), so there the tracepoint strategy cannot be forced; the
/// families it covers run through tracepoints under the other two strategies anyway, and
/// the host runs them under the tracepoint strategy.
pub const IN_TESTS: [&str; 4] = ["--kernel", "6.1,5.10", "--strategy", "fentry,kprobe"];

/// Runs [`IN_TESTS`], passing `test_args` to the test binary; an error unless everything
/// passed.
pub fn in_tests(root: &Path, test_args: &[String]) -> Result<()> {
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }
    let mut argv = vec!["vm-test"];
    argv.extend(IN_TESTS);
    if !test_args.is_empty() {
        argv.push("--");
        argv.extend(test_args.iter().map(String::as_str));
    }
    let Command { args } = clap::Parser::try_parse_from(argv)?;
    match run(root, &args) {
        Ok(0) => Ok(()),
        Ok(code) => bail!(
            "the kernel matrix failed (exit code {code}; vm-test {})",
            IN_TESTS.join(" ")
        ),
        Err(Fatal(code, err)) => Err(err.context(format!("the kernel matrix (exit code {code})"))),
    }
}

pub fn main(root: &Path, args: &Args) -> ExitCode {
    match run(root, args) {
        Ok(code) => ExitCode::from(code),
        Err(Fatal(code, err)) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::from(code)
        }
    }
}

/// What each guest does.
enum Work {
    Exec(String),
    Matrix {
        mode: Mode,
        tcpobs: PathBuf,
        tests: Vec<TestModule>,
    },
}

/// One kernel's line of the report.
struct Report {
    kernel: Kernel,
    heading: String,
    table: Option<Table>,
}

fn run(root: &Path, args: &Args) -> Result<u8, Fatal> {
    let kernels: Vec<Kernel> = if args.all {
        Kernel::ALL.to_vec()
    } else {
        let mut kernels = Vec::new();
        for kernel in &args.kernel {
            if !kernels.contains(kernel) {
                kernels.push(*kernel);
            }
        }
        kernels
    };
    setup::ensure(setup::Needs::Test, root).code(NOT_READY)?;
    let work = match &args.exec {
        Some(command) => Work::Exec(command.clone()),
        None => {
            if args.args.iter().any(|arg| arg == "--exact") {
                return Err(Fatal(
                    USAGE,
                    anyhow::anyhow!(
                        "--exact is not supported: each step picks its module by skipping \
                         the others (`--skip MODULE::`), and --exact would make those skips \
                         exact test names"
                    ),
                ));
            }
            let (binary, dir) = build(root).code(NOT_READY)?;
            let modules = list_tests(&binary, &dir).code(NOT_READY)?;
            let tests = select(&binary, &dir, &modules, &args.tests).code(USAGE)?;
            let tcpobs = root.join("target/debug/tcpobs");
            let mode = mode(&tcpobs, &args.strategy).code(NOT_READY)?;
            Work::Matrix {
                mode,
                tcpobs,
                tests,
            }
        }
    };
    let vm = root.join("target/vm");
    let cache = kernel::Cache::new(vm.clone());
    let machine = Machine {
        memory_mib: args.memory,
        cpus: args.cpus,
        boot_timeout: Duration::from_secs(args.boot_timeout),
    };
    let timeout = Duration::from_secs(args.timeout);
    let mut code = 0;
    let mut reports = Vec::new();
    for kernel in kernels {
        let name = kernel.name();
        let (prepared, cached) = match cache.prepare(kernel, args.refresh) {
            Ok(prepared) => prepared,
            Err(err) => {
                eprintln!("vm-test {name}: error: {err:#}");
                code = code.max(NOT_READY);
                reports.push(Report {
                    kernel,
                    heading: format!("not prepared: {}", first_line(&format!("{err:#}"))),
                    table: None,
                });
                continue;
            }
        };
        let steps = match &work {
            Work::Exec(command) => vec![Step {
                name: "exec".to_owned(),
                requires: None,
                env: vec![],
                dir: root.to_path_buf(),
                command: vec!["bash".into(), "-c".into(), command.clone()],
                timeout,
            }],
            Work::Matrix {
                mode,
                tcpobs,
                tests,
            } => matrix::steps(mode, tcpobs, tests, &args.args, timeout),
        };
        eprintln!(
            "vm-test {name}: Linux {} ({}{}), booting with {} vCPUs and {} MiB under TCG",
            prepared.release,
            prepared.packages.join(" "),
            if cached { ", cached" } else { "" },
            machine.cpus,
            machine.memory_mib
        );
        let results = vm.join("runs").join(name);
        let follow = args.verbose || matches!(work, Work::Exec(_));
        let boot = match guest::run(
            &format!("vm-test {name}"),
            &prepared,
            &machine,
            &results,
            &steps,
            follow,
        ) {
            Ok(boot) => boot,
            Err(err) => {
                eprintln!("vm-test {name}: error: {err:#}");
                code = code.max(NO_BOOT);
                reports.push(Report {
                    kernel,
                    heading: format!("Linux {}: did not boot", prepared.release),
                    table: None,
                });
                continue;
            }
        };
        let mut heading = format!(
            "Linux {} ({} {}): booted in {:.1} s, {:.1} s in all",
            prepared.release,
            prepared.packages[0].split('=').next().unwrap_or("?"),
            prepared.version(),
            boot.boot_seconds,
            boot.total_seconds
        );
        match boot.ending {
            Ending::PoweredOff => {}
            Ending::TimedOut => {
                heading.push_str(", TIMED OUT (QEMU killed)");
                code = code.max(TIMED_OUT);
            }
            Ending::Crashed => {
                let _ = write!(
                    heading,
                    ", CRASHED before the last step (console: {})",
                    boot.console.display()
                );
                code = code.max(NO_BOOT);
            }
        }
        eprintln!("vm-test {name}: {heading}");
        if boot.ending == Ending::Crashed {
            eprintln!(
                "vm-test {name}: the guest stopped{}",
                guest::console_tail(&boot.console)
            );
        }
        match &work {
            Work::Exec(_) => {
                let (status, said) = match boot.outcomes[0].status {
                    Status::Exited(status) => (
                        u8::try_from(status).unwrap_or(FAILED),
                        format!("the command exited with {status}"),
                    ),
                    Status::TimedOut => (TIMED_OUT, "the command timed out".to_owned()),
                    Status::Skipped | Status::NotRun => {
                        (NO_BOOT, "the command did not finish".to_owned())
                    }
                };
                eprintln!("vm-test {name}: {said}");
                if code == 0 {
                    code = status;
                }
            }
            Work::Matrix { mode, tests, .. } => {
                let table = matrix::table(mode, tests, &boot.outcomes);
                if table.failed() {
                    code = code.max(FAILED);
                }
                reports.push(Report {
                    kernel,
                    heading,
                    table: Some(table),
                });
            }
        }
    }
    if let Work::Matrix { mode, .. } = &work {
        print_matrix(mode, &reports);
        write_tsv(&vm.join("matrix.tsv"), &reports);
    }
    Ok(code)
}

fn print_matrix(mode: &Mode, reports: &[Report]) {
    let mut out = String::from("\nkernel matrix");
    match mode {
        Mode::Forced(_) => out.push_str(" (kernel × family × strategy)\n"),
        Mode::Auto => out.push_str(
            " (tcpobs has no --probe-strategy/--check yet: one run per kernel with the \
             daemon's own choice, `auto`)\n",
        ),
    }
    for report in reports {
        let _ = writeln!(out, "\n{:6} {}", report.kernel.name(), report.heading);
        if let Some(table) = &report.table {
            out.push_str(&table.render());
        }
    }
    for report in reports {
        let failures = report.table.iter().flat_map(|table| &table.failures);
        for (what, output) in failures {
            let _ = writeln!(
                out,
                "\n---- {} {what}: the failing tests' output ----\n{output}",
                report.kernel.name()
            );
        }
    }
    print!("{out}");
}

/// The matrix as tab-separated values (kernel, release, row, strategy, result), for tables
/// built from a real run.
fn write_tsv(path: &Path, reports: &[Report]) {
    let mut tsv = String::from("kernel\theading\trow\tstrategy\tresult\n");
    for report in reports {
        let Some(table) = &report.table else {
            let _ = writeln!(tsv, "{}\t{}\t\t\t", report.kernel.name(), report.heading);
            continue;
        };
        for (row, cells) in &table.rows {
            for (column, cell) in table.columns.iter().zip(cells) {
                let _ = writeln!(
                    tsv,
                    "{}\t{}\t{row}\t{column}\t{}",
                    report.kernel.name(),
                    report.heading,
                    cell.text()
                );
            }
        }
    }
    if let Err(err) = fs::write(path, tsv) {
        eprintln!("vm-test: cannot write {}: {err}", path.display());
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Builds the daemon and the integration test binary (debug, as `cargo xtask test` does)
/// and returns the binary and its package's directory.
fn build(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--package", "tcpobs"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --package tcpobs failed: {status}");
    }
    let output = Command::new(&cargo)
        .current_dir(root)
        .args([
            "test",
            "--package",
            "tcpobs-tests",
            "--test",
            INTEGRATION,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "cargo test --package tcpobs-tests --test {INTEGRATION} --no-run failed: {}",
            output.status
        );
    }
    integration_binary(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("cargo built no `{INTEGRATION}` test executable"))
}

/// The integration test executable in cargo's JSON messages, and its package's directory.
fn integration_binary(messages: &str) -> Option<(PathBuf, PathBuf)> {
    messages.lines().find_map(|message| {
        let message = serde_json::from_str::<serde_json::Value>(message).ok()?;
        let target = &message["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"));
        if !is_test || target["name"] != INTEGRATION {
            return None;
        }
        let path = message["executable"].as_str()?;
        let manifest = Path::new(message["manifest_path"].as_str()?);
        let dir = manifest.parent().unwrap_or(Path::new("/"));
        Some((path.into(), dir.to_path_buf()))
    })
}

/// The integration binary's tests by module, from its own list.
fn list_tests(binary: &Path, dir: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let output = Command::new(binary)
        .current_dir(dir)
        .args(["--list", "--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() {
        bail!("{} --list failed: {}", binary.display(), output.status);
    }
    by_module(&String::from_utf8_lossy(&output.stdout))
}

/// Groups libtest's terse list (`lifecycle::linger_zero: test`) by module.
fn by_module(list: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut modules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in list.lines().filter_map(|line| line.strip_suffix(": test")) {
        let Some((module, _)) = name.split_once("::") else {
            bail!("the integration test `{name}` is outside any module");
        };
        modules
            .entry(module.to_owned())
            .or_default()
            .push(name.to_owned());
    }
    if modules.is_empty() {
        bail!("the integration test binary lists no tests");
    }
    Ok(modules)
}

/// The modules to run, each skipping the others' tests.
fn select(
    binary: &Path,
    dir: &Path,
    modules: &BTreeMap<String, Vec<String>>,
    wanted: &[String],
) -> Result<Vec<TestModule>> {
    let all = wanted.iter().any(|name| name == "all");
    if let Some(unknown) = wanted
        .iter()
        .find(|name| !all && !modules.contains_key(name.as_str()))
    {
        let names: Vec<&str> = modules.keys().map(String::as_str).collect();
        bail!(
            "no test module `{unknown}`: choose among {}, or all",
            names.join(", ")
        );
    }
    let chosen: Vec<&String> = if all {
        modules.keys().collect()
    } else {
        wanted.iter().collect()
    };
    let mut tests = Vec::new();
    for name in chosen {
        let others: Vec<String> = modules
            .keys()
            .filter(|other| *other != name)
            .cloned()
            .collect();
        // `--skip other::` matches by substring: it must leave exactly this module's tests.
        let kept: Vec<&String> = modules
            .values()
            .flatten()
            .filter(|test| {
                !others
                    .iter()
                    .any(|other| test.contains(&format!("{other}::")))
            })
            .collect();
        if kept != modules[name].iter().collect::<Vec<_>>() {
            bail!("skipping the other modules does not leave exactly the tests of `{name}`");
        }
        tests.push(TestModule {
            name: name.clone(),
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            others,
        });
    }
    Ok(tests)
}

/// Forced strategies if the daemon has `--probe-strategy` and `--check`, else its own choice.
fn mode(tcpobs: &Path, strategies: &[String]) -> Result<Mode> {
    let help = Command::new(tcpobs)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {}", tcpobs.display()))?;
    let help = String::from_utf8_lossy(&help.stdout);
    if help.contains("--probe-strategy") && help.contains("--check") {
        let strategies = if strategies.is_empty() {
            STRATEGIES.map(str::to_owned).to_vec()
        } else {
            strategies.to_vec()
        };
        return Ok(Mode::Forced(strategies));
    }
    if !strategies.is_empty() {
        eprintln!("vm-test: tcpobs has no --probe-strategy yet; --strategy is ignored");
    }
    Ok(Mode::Auto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integration_binary_comes_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["lib"],"name":"tcpobs_tests"},"executable":"/w/target/debug/deps/tcpobs_tests-2"}
{"reason":"compiler-artifact","manifest_path":"/w/tcpobs/Cargo.toml","target":{"kind":["lib"],"name":"tcpobs"},"executable":null}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"integration"},"executable":"/w/target/debug/deps/integration-3"}
{"reason":"build-finished","success":true}"#;
        let (binary, dir) = integration_binary(messages).unwrap();
        assert_eq!(binary, Path::new("/w/target/debug/deps/integration-3"));
        assert_eq!(dir, Path::new("/w/tests"));
        assert!(integration_binary(&messages.replace("integration", "other")).is_none());
    }

    #[test]
    fn each_module_runs_alone_by_skipping_the_others() {
        let list = "lifecycle::ipv4_client_closes_first: test\n\
                    lifecycle::linger_zero_is_a_reset_from_the_client: test\n\
                    netns::unanswered_syn_is_a_connect_timeout: test\n\
                    tls::a_tls_handshake_is_tied_to_its_connection: test\n";
        let modules = by_module(list).unwrap();
        assert_eq!(
            modules.keys().collect::<Vec<_>>(),
            ["lifecycle", "netns", "tls"]
        );
        let binary = Path::new("/w/integration-3");
        let dir = Path::new("/w/tests");
        let chosen = select(binary, dir, &modules, &["netns".into()]).unwrap();
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].name, "netns");
        assert_eq!(chosen[0].binary, binary);
        assert_eq!(chosen[0].others, ["lifecycle", "tls"]);
        let all = select(binary, dir, &modules, &["all".into()]).unwrap();
        let names: Vec<&str> = all.iter().map(|test| test.name.as_str()).collect();
        assert_eq!(names, ["lifecycle", "netns", "tls"]);
        let err = select(binary, dir, &modules, &["nope".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("choose among lifecycle, netns, tls"), "{err}");
        assert!(
            by_module("loose_test: test\n").is_err(),
            "a test outside any module"
        );
    }

    #[test]
    fn a_module_whose_skip_would_catch_another_is_refused() {
        // `--skip ns::` would also skip `dns::...`.
        let modules = by_module("dns::a: test\nns::b: test\n").unwrap();
        let err = select(Path::new("/i"), Path::new("/"), &modules, &["dns".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly the tests of `dns`"), "{err}");
    }
}
