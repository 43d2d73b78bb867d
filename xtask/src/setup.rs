//! Prerequisites, installed when missing and skipped when present.
//!
//! - Debian packages: LLVM 22 development libraries (bpf-linker links against them); nginx,
//!   curl and Prometheus (with promtool) for the integration tests, systemd (systemd-analyze)
//!   and procps for the service's tests, python3-venv for the manifest validators, and for
//!   the phase tests openssl (certificates, `s_server`), Python 3 (`ssl` clients), iproute2
//!   (loopback in a network namespace), nftables (packets dropped in a test namespace: loss,
//!   a peer that vanishes) and musl-tools (a program linked against musl's
//!   shared C library); wrk and libbpf-tools (tcplife) for the benchmarks, whose smoke run is
//!   part of the tests; for the kernel matrix (`vm-test`, part of the tests too), QEMU, kmod
//!   (depmod indexes the guest kernels' modules) and Debian's archive keyring (APT verifies
//!   the kernel packages with it), without their recommends (QEMU's GUI front ends and
//!   firmware for other architectures).
//! - Python tools in a project-local virtual environment ([`VENV`]), from PyPI: the Kubernetes
//!   schema validator `kubernetes-validate` (it ships the schemas, so it works offline) and
//!   the Prometheus Operator's models, for the ServiceMonitor; OTLP receivers for the
//!   OpenTelemetry export tests: `rotel` (a collector with OTLP/gRPC and OTLP/HTTP receivers
//!   and a debug output of what it got) and the official `opentelemetry-proto` bindings with
//!   `grpcio`, which the tests' own small receiver is built on.
//! - The nightly toolchain's `rust-src` (the kernel programs build `core` for
//!   `bpfel-unknown-none`).
//! - `bpf-linker` 0.13.0 built against LLVM 22 (the nightly's LLVM).
//!
//! Installing needs root (apt); checking does not.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// What the task at hand needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Build and run the daemon.
    Run,
    /// Also the tools the integration tests drive.
    Test,
    /// The tools the benchmarks drive (a superset of the tests').
    Bench,
}

const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const TEST_PACKAGES: &[&str] = &[
    "nginx-light",
    "curl",
    "prometheus",
    "openssl",
    "python3",
    "iproute2",
    "musl-tools",
    "wrk",
    "libbpf-tools",
    "systemd",
    "procps",
    "python3-venv",
    "nftables",
];
/// The kernel matrix's, installed without recommends.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "debian-archive-keyring"];
/// The virtual environment of the test tools, relative to the workspace root (the
/// integration tests look for it there).
pub const VENV: &str = "target/tools/venv";
/// Its packages, pinned.
const PYTHON_TOOLS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "cloudcoil-models-prometheus-operator==0.80.1.0",
    // rotel has pre-releases only; its wheel bundles the collector (rotel-agent).
    "rotel==0.0.1a15",
    "opentelemetry-proto==1.45.2",
    "protobuf==7.36.2",
    "grpcio==1.85.4",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn ensure(needs: Needs, root: &Path) -> Result<()> {
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    if needs != Needs::Run {
        packages.extend(TEST_PACKAGES);
    }
    let missing = |packages: &[&str]| -> Vec<String> {
        packages
            .iter()
            .filter(|package| !deb_installed(package))
            .map(|package| (*package).to_owned())
            .collect()
    };
    let needed = missing(&packages);
    if !needed.is_empty() {
        apt_install(&needed, true)?;
    }
    if needs != Needs::Run {
        let needed = missing(VM_PACKAGES);
        if !needed.is_empty() {
            apt_install(&needed, false)?;
        }
    }
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    if needs != Needs::Run {
        ensure_python_tools(&root.join(VENV))?;
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).ends_with("install ok installed"))
}

fn apt_install(packages: &[String], recommends: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {}: run this task as root, or `apt-get install {}`",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed: {status}", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    if !recommends {
        args.push("--no-install-recommends");
    }
    args.extend(packages.iter().map(String::as_str));
    apt(&args)
}

fn ensure_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("cannot run rustup (tcpobs needs rustup with a nightly toolchain)")?;
    if !installed.status.success() {
        bail!(
            "no nightly toolchain: `rustup toolchain install nightly --component rust-src` \
             ({})",
            String::from_utf8_lossy(&installed.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == "rust-src")
    {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .context("cannot run rustup")?;
    if !status.success() {
        bail!("rustup component add rust-src --toolchain nightly failed: {status}");
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about two minutes)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed: {status}");
    }
    Ok(())
}

/// Creates the tools' virtual environment, unless it has exactly [`PYTHON_TOOLS`] already.
fn ensure_python_tools(venv: &Path) -> Result<()> {
    let stamp = venv.join("tcpobs-tools.txt");
    let wanted = PYTHON_TOOLS.join("\n");
    if venv.join("bin/python").exists()
        && fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted)
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} in {}",
        PYTHON_TOOLS.join(" "),
        venv.display()
    );
    let run = |program: &Path, args: &[&str]| -> Result<()> {
        let status = Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if !status.success() {
            bail!("{} {} failed: {status}", program.display(), args.join(" "));
        }
        Ok(())
    };
    let venv_arg = venv.to_str().context("the venv path is not UTF-8")?;
    run(Path::new("python3"), &["-m", "venv", "--clear", venv_arg])
        .context("creating the tools' virtual environment (needs python3 and python3-venv)")?;
    let mut args = vec!["install", "--quiet", "--disable-pip-version-check"];
    args.extend(PYTHON_TOOLS);
    run(&venv.join("bin/pip"), &args)?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
