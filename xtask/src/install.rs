//! `cargo xtask install`: tcpobs as a systemd service on this host.
//!
//! Installs the release binary in `/usr/local/bin`, the unit in `/etc/systemd/system`, the
//! README the unit points to, and the default configuration in `/etc/tcpobs/tcpobs.toml`
//! unless one is already there (a configuration someone edited is never overwritten). With
//! `--destdir` everything goes below that directory instead, for packaging; systemd is told to
//! reload its units only for a real install on a host that runs systemd.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Where things go, relative to the destination root.
pub const BINARY: &str = "usr/local/bin/tcpobs";
pub const UNIT: &str = "etc/systemd/system/tcpobs.service";
pub const CONFIG: &str = "etc/tcpobs/tcpobs.toml";
pub const README: &str = "usr/local/share/doc/tcpobs/README.md";

/// One file to install.
struct Item {
    /// Source, relative to the workspace root (`None`: the binary).
    source: Option<&'static str>,
    destination: &'static str,
    mode: u32,
    /// Keep a file that is already there.
    keep_existing: bool,
}

const ITEMS: [Item; 4] = [
    Item {
        source: None,
        destination: BINARY,
        mode: 0o755,
        keep_existing: false,
    },
    Item {
        source: Some("packaging/systemd/tcpobs.service"),
        destination: UNIT,
        mode: 0o644,
        keep_existing: false,
    },
    Item {
        source: Some("README.md"),
        destination: README,
        mode: 0o644,
        keep_existing: false,
    },
    Item {
        source: Some("packaging/tcpobs.toml"),
        destination: CONFIG,
        mode: 0o644,
        keep_existing: true,
    },
];

/// What happened to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Installed(PathBuf),
    Kept(PathBuf),
}

/// Copies `binary` and the packaging files below `destdir`.
pub fn install(root: &Path, binary: &Path, destdir: &Path) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for item in &ITEMS {
        let source = match item.source {
            Some(source) => root.join(source),
            None => binary.to_path_buf(),
        };
        let destination = destdir.join(item.destination);
        if item.keep_existing && destination.exists() {
            outcomes.push(Outcome::Kept(destination));
            continue;
        }
        let parent = destination
            .parent()
            .context("destination without a directory")?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        // Copied next to the destination and renamed over it: replacing a binary that is
        // running fails with "text file busy", renaming does not.
        let staging = parent.join(format!(
            ".{}.xtask-new",
            destination
                .file_name()
                .context("destination without a name")?
                .to_string_lossy()
        ));
        fs::copy(&source, &staging)
            .with_context(|| format!("copying {} to {}", source.display(), staging.display()))?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(item.mode))?;
        fs::rename(&staging, &destination)
            .with_context(|| format!("installing {}", destination.display()))?;
        outcomes.push(Outcome::Installed(destination));
    }
    Ok(outcomes)
}

/// Installs, then tells systemd about the unit when this is the host's own root.
pub fn run(root: &Path, binary: &Path, destdir: &Path) -> Result<()> {
    if destdir == Path::new("/") && !crate::setup::is_root() {
        bail!("installing in /usr/local and /etc needs root (or use --destdir DIR)");
    }
    for outcome in install(root, binary, destdir)? {
        match outcome {
            Outcome::Installed(path) => eprintln!("xtask: installed {}", path.display()),
            Outcome::Kept(path) => eprintln!(
                "xtask: kept the existing {} (the default is packaging/tcpobs.toml)",
                path.display()
            ),
        }
    }
    if destdir == Path::new("/") && Path::new("/run/systemd/system").exists() {
        let status = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .context("cannot run systemctl")?;
        if !status.success() {
            bail!("systemctl daemon-reload failed: {status}");
        }
        eprintln!("xtask: start it now and at boot with `systemctl enable --now tcpobs`");
    } else if destdir == Path::new("/") {
        eprintln!("xtask: systemd is not running here; the unit is in place for when it is");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    #[test]
    fn installs_below_destdir_and_keeps_an_edited_config() {
        let base = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let destdir = base.join("root");
        let binary = base.join("tcpobs");
        fs::create_dir_all(&base).unwrap();
        fs::write(&binary, "#!/bin/sh\n").unwrap();

        let outcomes = install(&workspace(), &binary, &destdir).unwrap();
        assert_eq!(outcomes.len(), ITEMS.len());
        assert!(
            outcomes.iter().all(|o| matches!(o, Outcome::Installed(_))),
            "{outcomes:?}"
        );
        let mode = |path: &str| fs::metadata(destdir.join(path)).unwrap().mode() & 0o777;
        assert_eq!(mode(BINARY), 0o755);
        assert_eq!(mode(UNIT), 0o644);
        assert_eq!(mode(CONFIG), 0o644);
        assert_eq!(
            fs::read_to_string(destdir.join(CONFIG)).unwrap(),
            fs::read_to_string(workspace().join("packaging/tcpobs.toml")).unwrap()
        );

        // The unit runs the installed binary with the installed config.
        let unit = fs::read_to_string(destdir.join(UNIT)).unwrap();
        let exec = format!("ExecStart=/{BINARY} --config /{CONFIG}");
        assert!(unit.lines().any(|line| line == exec), "{exec} in:\n{unit}");
        assert!(unit.contains(&format!("file:///{README}")), "{unit}");

        // Again, over an edited config and a binary in use: the config stays.
        fs::write(destdir.join(CONFIG), "events = \"none\"\n").unwrap();
        let outcomes = install(&workspace(), &binary, &destdir).unwrap();
        assert!(outcomes.contains(&Outcome::Kept(destdir.join(CONFIG))));
        assert_eq!(
            fs::read_to_string(destdir.join(CONFIG)).unwrap(),
            "events = \"none\"\n"
        );
        let leftovers: Vec<_> = fs::read_dir(destdir.join("usr/local/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["tcpobs"], "no staging files left");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_missing_binary_is_an_error() {
        let base = std::env::temp_dir().join(format!("xtask-install-err-{}", std::process::id()));
        let err = install(&workspace(), &base.join("nope"), &base).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        let _ = fs::remove_dir_all(&base);
    }
}
