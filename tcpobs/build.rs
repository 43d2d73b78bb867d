//! Builds the kernel programs (`tcpobs-ebpf`) for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker, and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|package| package.name.as_str() == "tcpobs-ebpf")
        .ok_or_else(|| anyhow!("tcpobs-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the kernel programs (run `cargo xtask setup` if the toolchain is missing)")
}
