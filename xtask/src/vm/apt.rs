//! APT pointed at one Debian suite: a private configuration (sources, state, cache, an empty
//! dpkg status) under `target/vm/apt/<suite>`, so nothing of the host's APT setup is read or
//! changed, with the mirror the host already uses.
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

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_ARCHIVE: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";

/// A Debian suite with its security updates (or, for unstable, experimental).
#[derive(Clone, Copy, Debug)]
pub enum Suite {
    Bullseye,
    Bookworm,
    Trixie,
    Unstable,
}

impl Suite {
    pub fn name(self) -> &'static str {
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
pub struct Mirrors {
    archive: String,
    security: String,
}

impl Mirrors {
    pub fn of_host() -> Self {
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

/// APT pointed at one suite only, with its own state, cache and (empty) dpkg status.
pub struct Apt {
    dir: PathBuf,
    config: PathBuf,
    suite: Suite,
}

impl Apt {
    pub fn configure(dir: &Path, suite: Suite, mirrors: &Mirrors) -> Result<Self> {
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

    pub fn suite(&self) -> Suite {
        self.suite
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

    /// Fetches the suite's indexes.
    pub fn update(&self) -> Result<()> {
        self.command("apt-get", &["-q", "update", "--error-on=any"], &self.dir)
            .map(drop)
            .context("cannot fetch the Debian package indexes (is the mirror reachable?)")
    }

    /// The index entry of the candidate version of `package`.
    pub fn show(&self, package: &str) -> Result<String> {
        self.command(
            "apt-cache",
            &["show", "--no-all-versions", package],
            &self.dir,
        )
    }

    /// `name=version` of the candidate version of `package`.
    pub fn candidate(&self, package: &str) -> Result<String> {
        let stanza = self.show(package)?;
        let version = field(&stanza, "Version")
            .with_context(|| format!("no version of {package} in {}", self.suite.name()))?;
        Ok(format!("{package}={version}"))
    }

    /// Downloads `name=version` packages into `dir` (APT checks each against the signed
    /// index) and returns their paths.
    pub fn download(&self, packages: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
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
pub fn field(stanza: &str, name: &str) -> Option<String> {
    stanza
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// Package names in the Depends field (every alternative).
pub fn dependencies(stanza: &str) -> Vec<String> {
    field(stanza, "Depends")
        .unwrap_or_default()
        .split([',', '|'])
        .filter_map(|dep| dep.split_whitespace().next())
        .map(str::to_owned)
        .collect()
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
}
