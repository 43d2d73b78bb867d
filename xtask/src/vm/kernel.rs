//! Debian kernels for the VM matrix: which suite holds which kernel, a private APT
//! configuration per suite, the download, its extraction and module index, all cached under
//! `target/vm` so that a second run needs no network.
//!
//! APT does the verification: each suite's `InRelease` must carry a valid signature from
//! `/usr/share/keyrings/debian-archive-keyring.gpg`, the package indexes must match the hashes
//! it lists, and `apt-get download` refuses a package whose hash differs from its index entry.
//! Only `Valid-Until` (freshness) is not enforced: a test kernel needs authenticity, not the
//! latest security fix, and snapshot or caching mirrors serve Release files past that date.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::initramfs;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_ARCHIVE: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";

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

/// A Debian suite with its security updates (or, for unstable, experimental).
#[derive(Clone, Copy, Debug)]
enum Suite {
    Bullseye,
    Bookworm,
    Trixie,
    Unstable,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Self::Bullseye => "bullseye",
            Self::Bookworm => "bookworm",
            Self::Trixie => "trixie",
            Self::Unstable => "sid",
        }
    }

    fn sources(self, mirrors: &Mirrors) -> String {
        let line =
            |uri: &str, suite: &str| format!("deb [signed-by={KEYRING}] {uri} {suite} main\n");
        match self {
            Self::Unstable => {
                line(&mirrors.archive, "sid") + &line(&mirrors.archive, "experimental")
            }
            suite => {
                let name = suite.name();
                line(&mirrors.archive, name) + &line(&mirrors.security, &format!("{name}-security"))
            }
        }
    }
}

/// The Debian mirrors this machine's APT uses, so the VM kernels come from the same place.
#[derive(Debug, PartialEq, Eq)]
struct Mirrors {
    archive: String,
    security: String,
}

impl Mirrors {
    fn of_host() -> Self {
        let mut uris = Vec::new();
        for file in ["/etc/apt/sources.list".into()]
            .into_iter()
            .chain(source_parts())
        {
            if let Ok(text) = fs::read_to_string(&file) {
                uris.extend(source_uris(&text));
            }
        }
        Self::from_uris(&uris)
    }

    fn from_uris(uris: &[String]) -> Self {
        let find = |suffix: &str, default: &str| {
            uris.iter()
                .map(|uri| uri.trim_end_matches('/'))
                .find(|uri| uri.ends_with(suffix))
                .unwrap_or(default)
                .to_owned()
        };
        Self {
            archive: find("/debian", DEFAULT_ARCHIVE),
            security: find("/debian-security", DEFAULT_SECURITY),
        }
    }
}

fn source_parts() -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
        })
        .collect();
    parts.sort();
    parts
}

/// The repository URIs of an APT sources file, one-line (`deb [opts] URI suite ...`) or
/// deb822 (`URIs: ...`) style.
fn source_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(list) = line.strip_prefix("URIs:") {
            uris.extend(list.split_whitespace().map(str::to_owned));
        } else if let Some(rest) = line.strip_prefix("deb ") {
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']').map_or("", |(_, rest)| rest),
                None => rest,
            };
            uris.extend(rest.split_whitespace().next().map(str::to_owned));
        }
    }
    uris
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
        let apt = self.apt(kernel.suite(), true)?;
        let packages = apt.kernel_packages(kernel)?;
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
        let apt = self.apt(Suite::Bookworm, true)?;
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

    /// The suite's private APT configuration; `update` fetches its indexes (always when they
    /// were never fetched).
    fn apt(&self, suite: Suite, update: bool) -> Result<Apt> {
        let apt = Apt::configure(
            &self.dir.join("apt").join(suite.name()),
            suite,
            &self.mirrors,
        )?;
        if update || !apt.has_lists() {
            apt.update()?;
        }
        Ok(apt)
    }
}

/// APT pointed at one suite only, with its own state, cache and (empty) dpkg status, so
/// nothing of the host's APT setup is read or changed.
struct Apt {
    dir: PathBuf,
    config: PathBuf,
    suite: Suite,
}

impl Apt {
    fn configure(dir: &Path, suite: Suite, mirrors: &Mirrors) -> Result<Self> {
        if !Path::new(KEYRING).exists() {
            bail!(
                "{KEYRING} is missing: install debian-archive-keyring (`cargo xtask setup` does)"
            );
        }
        let d = dir.display();
        for sub in [
            "empty",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {d}/{sub}"))?;
        }
        let write = |name: &str, text: &str| {
            fs::write(dir.join(name), text).with_context(|| format!("writing {d}/{name}"))
        };
        if !dir.join("state/status").exists() {
            write("state/status", "")?;
        }
        write("sources.list", &suite.sources(mirrors))?;
        // Experimental is NotAutomatic; pinned like unstable, the newest version wins.
        write(
            "preferences",
            "Package: *\nPin: release a=experimental\nPin-Priority: 500\n",
        )?;
        write(
            "apt.conf",
            &format!(
                "Dir::Etc::main \"/dev/null\";\n\
                 Dir::Etc::parts \"{d}/empty\";\n\
                 Dir::Etc::sourcelist \"{d}/sources.list\";\n\
                 Dir::Etc::sourceparts \"{d}/empty\";\n\
                 Dir::Etc::preferences \"{d}/preferences\";\n\
                 Dir::Etc::preferencesparts \"{d}/empty\";\n\
                 Dir::State \"{d}/state\";\n\
                 Dir::State::status \"{d}/state/status\";\n\
                 Dir::Cache \"{d}/cache\";\n\
                 Dir::Log \"{d}/log\";\n\
                 APT::Architecture \"amd64\";\n\
                 APT::Architectures {{ \"amd64\"; }};\n\
                 Acquire::Languages \"none\";\n\
                 Acquire::Check-Valid-Until \"false\";\n\
                 APT::Sandbox::User \"root\";\n"
            ),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config: dir.join("apt.conf"),
            suite,
        })
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("state/lists"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().ends_with("InRelease"))
    }

    fn command(&self, program: &str, args: &[&str], cwd: &Path) -> Result<String> {
        let output = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env("APT_CONFIG", &self.config)
            .env("LC_ALL", "C")
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {} ({} suite) failed: {}\n{}",
                args.join(" "),
                self.suite.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn update(&self) -> Result<()> {
        self.command("apt-get", &["-q", "update", "--error-on=any"], &self.dir)
            .map(drop)
            .context("cannot fetch the Debian package indexes (is the mirror reachable?)")
    }

    /// `name=version` of the candidate version of `package`.
    fn candidate(&self, package: &str) -> Result<String> {
        let stanza = self.command(
            "apt-cache",
            &["show", "--no-all-versions", package],
            &self.dir,
        )?;
        let version = field(&stanza, "Version")
            .with_context(|| format!("no version of {package} in {}", self.suite.name()))?;
        Ok(format!("{package}={version}"))
    }

    /// The packages that make up the suite's newest kernel, as `name=version`: the image
    /// (`linux-image-<abi>`) and, where Debian splits it, `linux-base-<abi>`,
    /// `linux-binary-<abi>` (the image itself) and `linux-modules-<abi>`.
    fn kernel_packages(&self, kernel: Kernel) -> Result<Vec<String>> {
        let meta = self.command(
            "apt-cache",
            &["show", "--no-all-versions", "linux-image-amd64"],
            &self.dir,
        )?;
        let image = dependencies(&meta)
            .into_iter()
            .find(|name| name.starts_with("linux-image-"))
            .with_context(|| {
                format!(
                    "linux-image-amd64 in {} names no kernel image",
                    self.suite.name()
                )
            })?;
        let abi = image.trim_start_matches("linux-image-").to_owned();
        let image_stanza = self.command(
            "apt-cache",
            &["show", "--no-all-versions", &image],
            &self.dir,
        )?;
        let version = field(&image_stanza, "Version").context("kernel image without a version")?;
        if let Some(prefix) = kernel.version_prefix()
            && !version.starts_with(prefix)
        {
            bail!(
                "{} offers {image} {version}, not a {} kernel",
                self.suite.name(),
                kernel.name()
            );
        }
        let mut packages = vec![format!("{image}={version}")];
        for part in dependencies(&image_stanza) {
            if part.starts_with("linux-") && part.ends_with(&format!("-{abi}")) {
                packages.push(format!("{part}={version}"));
            }
        }
        Ok(packages)
    }

    /// Downloads `name=version` packages into `dir` (APT checks each against the signed
    /// index) and returns their paths.
    fn download(&self, packages: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut args = vec!["-q", "download"];
        args.extend(packages.iter().map(String::as_str));
        self.command("apt-get", &args, dir)
            .context("downloading the kernel packages failed")?;
        packages
            .iter()
            .map(|package| {
                let (name, version) = package.split_once('=').unwrap_or((package, ""));
                let file = dir.join(format!("{name}_{}_amd64.deb", version.replace(':', "%3a")));
                if file.exists() {
                    Ok(file)
                } else {
                    bail!("apt-get download did not write {}", file.display())
                }
            })
            .collect()
    }
}

/// A field of the first stanza of `apt-cache show` output.
fn field(stanza: &str, name: &str) -> Option<String> {
    stanza
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// Package names in the Depends field (every alternative).
fn dependencies(stanza: &str) -> Vec<String> {
    field(stanza, "Depends")
        .unwrap_or_default()
        .split([',', '|'])
        .filter_map(|dep| dep.split_whitespace().next())
        .map(str::to_owned)
        .collect()
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
    fn mirrors_come_from_both_source_formats() {
        let one_line = "deb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian/ bookworm main\n\
                        # deb http://ignored/debian bookworm main\n\
                        deb http://mirror.example/debian-security bookworm-security main\n";
        let deb822 = "Types: deb\nURIs: http://other.example/debian\nSuites: bookworm\n";
        let mut uris = source_uris(one_line);
        assert_eq!(
            uris,
            [
                "http://mirror.example/debian/",
                "http://mirror.example/debian-security"
            ]
        );
        assert_eq!(
            Mirrors::from_uris(&uris),
            Mirrors {
                archive: "http://mirror.example/debian".into(),
                security: "http://mirror.example/debian-security".into(),
            }
        );
        uris = source_uris(deb822);
        assert_eq!(
            Mirrors::from_uris(&uris),
            Mirrors {
                archive: "http://other.example/debian".into(),
                security: DEFAULT_SECURITY.into(),
            },
            "a missing security mirror falls back to Debian's"
        );
    }

    #[test]
    fn kernel_parts_are_read_from_depends() {
        let stanza = "Package: linux-image-7.2.13+deb14-amd64\nVersion: 7.2.13-1\n\
                      Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                      linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n\
                      \nPackage: other\nVersion: 1\n";
        assert_eq!(field(stanza, "Version").as_deref(), Some("7.2.13-1"));
        assert_eq!(
            dependencies(stanza),
            [
                "dracut",
                "initramfs-tools",
                "linux-initramfs-tool",
                "linux-base-7.2.13+deb14-amd64",
                "linux-modules-7.2.13+deb14-amd64"
            ]
        );
    }

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
