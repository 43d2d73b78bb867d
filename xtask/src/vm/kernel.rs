//! Debian kernels for the VM matrix: which suite holds which kernel, its packages (fetched
//! and verified by [`super::apt`]), their extraction and module index, and the initramfs,
//! all cached under `target/vm` so that a second run needs no network.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{
    apt::{Apt, Mirrors, Suite, dependencies, field},
    initramfs,
};

/// A kernel of the matrix, named by the version the user asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    /// The newest kernel in unstable or experimental (release candidates included).
    Latest,
}

impl Kernel {
    pub const ALL: [Self; 4] = [Self::V5_10, Self::V6_1, Self::V6_12, Self::Latest];

    pub fn name(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::Latest => "latest",
        }
    }

    fn suite(self) -> Suite {
        match self {
            Self::V5_10 => Suite::Bullseye,
            Self::V6_1 => Suite::Bookworm,
            Self::V6_12 => Suite::Trixie,
            Self::Latest => Suite::Unstable,
        }
    }

    /// The package version must start with this, so a suite that moved on is noticed.
    fn version_prefix(self) -> Option<&'static str> {
        match self {
            Self::V5_10 => Some("5.10."),
            Self::V6_1 => Some("6.1."),
            Self::V6_12 => Some("6.12."),
            Self::Latest => None,
        }
    }
}

/// A kernel ready to boot: its image, its modules and an initramfs that reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// `uname -r` of the kernel.
    pub release: String,
    /// The Debian packages it came from, as `name=version`.
    pub packages: Vec<String>,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the extracted packages, with `modules.dep`.
    pub modules: PathBuf,
    pub initramfs: PathBuf,
}

impl Prepared {
    /// The version of the first package (the kernel image), e.g. `6.1.192-2`.
    pub fn version(&self) -> &str {
        self.packages
            .first()
            .and_then(|package| package.split_once('='))
            .map_or("?", |(_, version)| version)
    }

    fn to_record(&self) -> String {
        format!(
            "release={}\npackages={}\nvmlinuz={}\nmodules={}\ninitramfs={}\n",
            self.release,
            self.packages.join(" "),
            self.vmlinuz.display(),
            self.modules.display(),
            self.initramfs.display()
        )
    }

    fn from_record(text: &str) -> Option<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let prepared = Self {
            release: field("release")?,
            packages: field("packages")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            vmlinuz: field("vmlinuz")?.into(),
            modules: field("modules")?.into(),
            initramfs: field("initramfs")?.into(),
        };
        let complete = [&prepared.vmlinuz, &prepared.modules, &prepared.initramfs]
            .iter()
            .all(|path| path.exists());
        complete.then_some(prepared)
    }
}

/// The cache under `target/vm`.
pub struct Cache {
    dir: PathBuf,
    mirrors: Mirrors,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            mirrors: Mirrors::of_host(),
        }
    }

    /// The kernel's image, modules and initramfs: from the cache, or downloaded and built.
    /// `refresh` asks the mirror for a newer package first.
    pub fn prepare(&self, kernel: Kernel, refresh: bool) -> Result<(Prepared, bool)> {
        let dir = self.dir.join(format!("kernel-{}", kernel.name()));
        let record = dir.join("kernel.txt");
        let cached = fs::read_to_string(&record)
            .ok()
            .and_then(|text| Prepared::from_record(&text));
        if let Some(cached) = &cached
            && !refresh
        {
            return Ok((cached.clone(), true));
        }
        let apt = self.apt(kernel.suite())?;
        let packages = kernel_packages(&apt, kernel)?;
        if let Some(cached) = cached
            && cached.packages == packages
        {
            return Ok((cached, true));
        }
        eprintln!(
            "vm-test {}: downloading {}",
            kernel.name(),
            packages.join(" ")
        );
        let debs = apt.download(&packages, &self.dir.join("debs"))?;
        let busybox = self.busybox()?;
        let prepared = extract(&dir, &debs, packages, &busybox)?;
        fs::write(&record, prepared.to_record())
            .with_context(|| format!("writing {}", record.display()))?;
        Ok((prepared, false))
    }

    /// A static busybox for the initramfs, from bookworm (the release the tooling targets).
    fn busybox(&self) -> Result<PathBuf> {
        let dir = self.dir.join("busybox");
        let binary = dir.join("bin/busybox");
        if binary.exists() {
            return Ok(binary);
        }
        let apt = self.apt(Suite::Bookworm)?;
        let package = apt.candidate("busybox-static")?;
        let debs = apt.download(&[package], &self.dir.join("debs"))?;
        let _ = fs::remove_dir_all(&dir);
        for deb in &debs {
            dpkg_extract(deb, &dir)?;
        }
        if !binary.exists() {
            bail!("busybox-static has no bin/busybox");
        }
        Ok(binary)
    }

    /// APT for the suite, with freshly fetched indexes.
    fn apt(&self, suite: Suite) -> Result<Apt> {
        let apt = Apt::configure(
            &self.dir.join("apt").join(suite.name()),
            suite,
            &self.mirrors,
        )?;
        apt.update()?;
        Ok(apt)
    }
}

/// The packages that make up the suite's newest kernel, as `name=version`: the image
/// (`linux-image-<abi>`) and, where Debian splits it, `linux-base-<abi>`,
/// `linux-binary-<abi>` (the image itself) and `linux-modules-<abi>`.
fn kernel_packages(apt: &Apt, kernel: Kernel) -> Result<Vec<String>> {
    let suite = apt.suite().name();
    let meta = apt.show("linux-image-amd64")?;
    let image = dependencies(&meta)
        .into_iter()
        .find(|name| name.starts_with("linux-image-"))
        .with_context(|| format!("linux-image-amd64 in {suite} names no kernel image"))?;
    let abi = image.trim_start_matches("linux-image-").to_owned();
    let stanza = apt.show(&image)?;
    let version = field(&stanza, "Version").context("kernel image without a version")?;
    if let Some(prefix) = kernel.version_prefix()
        && !version.starts_with(prefix)
    {
        bail!(
            "{suite} offers {image} {version}, not a {} kernel",
            kernel.name()
        );
    }
    let mut packages = vec![format!("{image}={version}")];
    for part in dependencies(&stanza) {
        if part.starts_with("linux-") && part.ends_with(&format!("-{abi}")) {
            packages.push(format!("{part}={version}"));
        }
    }
    Ok(packages)
}

fn dpkg_extract(deb: &Path, into: &Path) -> Result<()> {
    let output = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(into)
        .output()
        .context("cannot run dpkg-deb")?;
    if !output.status.success() {
        bail!(
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Unpacks the packages into `dir/root`, indexes the modules and builds the initramfs.
fn extract(
    dir: &Path,
    debs: &[PathBuf],
    packages: Vec<String>,
    busybox: &Path,
) -> Result<Prepared> {
    let root = dir.join("root");
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    for deb in debs {
        dpkg_extract(deb, &root)?;
    }
    // Newer packages install under /usr/lib; depmod -b looks in <base>/lib.
    let lib = root.join("lib");
    if !lib.exists() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", &lib)
            .with_context(|| format!("linking {}", lib.display()))?;
    }
    let releases: Vec<String> = fs::read_dir(lib.join("modules"))
        .context("the kernel packages have no lib/modules")?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let [release] = releases.as_slice() else {
        bail!("expected one kernel in the packages, found {releases:?}");
    };
    let modules = lib.join("modules").join(release);
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|path| path.exists())
    .with_context(|| format!("no vmlinuz for {release} in the packages"))?;
    let output = Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(release)
        .output()
        .context("cannot run depmod (install kmod)")?;
    if !output.status.success() {
        bail!(
            "depmod for {release} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let initramfs = dir.join("initramfs.cpio");
    initramfs::build(&modules, busybox, &initramfs)?;
    Ok(Prepared {
        release: release.clone(),
        packages,
        vmlinuz,
        modules,
        initramfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_record_round_trips_and_checks_files() {
        let prepared = Prepared {
            release: "6.1.0-56-amd64".into(),
            packages: vec!["linux-image-6.1.0-56-amd64=6.1.192-2".into()],
            vmlinuz: "/".into(),
            modules: "/".into(),
            initramfs: "/".into(),
        };
        assert_eq!(prepared.version(), "6.1.192-2");
        assert_eq!(
            Prepared::from_record(&prepared.to_record()),
            Some(prepared.clone())
        );
        let missing = Prepared {
            initramfs: "/nonexistent/initramfs.cpio".into(),
            ..prepared
        };
        assert_eq!(Prepared::from_record(&missing.to_record()), None);
    }
}
