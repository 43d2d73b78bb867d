//! Where the probed libraries are: the C library and libssl, on the host and in the root
//! filesystem of every other mount namespace (containers), reached through `/proc/PID/root`.
//!
//! A root is searched at the paths distributions install these libraries at (Debian and
//! Ubuntu multiarch directories, Fedora/RHEL `lib64`, Alpine `lib`, `/usr/local/lib`).
//! Symbolic links are followed *inside* the root: an absolute link in a container means the
//! container's file, not the host's. Files are identified by device and inode, so a library
//! shared by many containers (the same image layer), or reachable by several paths, is found
//! once.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use crate::kernel::loader::families::Library;

/// A file's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A library file found under a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub library: Library,
    /// The path to attach to, as the daemon sees it (under `/proc/PID/root` for containers).
    pub path: PathBuf,
    pub id: FileId,
}

/// File names to look for, per library, relative to a root.
pub(super) fn candidates(library: Library) -> Vec<String> {
    let arch = std::env::consts::ARCH;
    let dirs = [
        format!("lib/{arch}-linux-gnu"),
        format!("usr/lib/{arch}-linux-gnu"),
        "lib64".to_owned(),
        "usr/lib64".to_owned(),
        "lib".to_owned(),
        "usr/lib".to_owned(),
        "usr/local/lib".to_owned(),
    ];
    let names: &[String] = match library {
        Library::Libc => &["libc.so.6".to_owned(), format!("ld-musl-{arch}.so.1")],
        Library::Libssl => &["libssl.so.3".to_owned()],
    };
    dirs.iter()
        .flat_map(|dir| names.iter().map(move |name| format!("{dir}/{name}")))
        .collect()
}

/// Resolves `relative` under `root` as a process whose root is `root` would: `..` stops at
/// the root, and absolute symbolic links start again from it. `None` if it does not exist.
pub(super) fn resolve_in_root(root: &Path, relative: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = relative
        .split('/')
        .filter(|part| !part.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let here = resolved
            .iter()
            .fold(root.to_path_buf(), |path, part| path.join(part))
            .join(&part);
        let metadata = fs::symlink_metadata(&here).ok()?;
        if !metadata.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > 40 {
            return None;
        }
        let target = fs::read_link(&here).ok()?;
        if target.is_absolute() {
            resolved.clear();
        }
        for component in target.components().rev() {
            match component {
                Component::Normal(name) => pending.push(name.to_string_lossy().into_owned()),
                Component::ParentDir => pending.push("..".to_owned()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
    }
    Some(
        resolved
            .iter()
            .fold(root.to_path_buf(), |path, part| path.join(part)),
    )
}

/// The libraries under `root`, one entry per distinct file.
pub(super) fn search(root: &Path, library: Library) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for relative in candidates(library) {
        let Some(path) = resolve_in_root(root, &relative) else {
            continue;
        };
        let Ok(metadata) = fs::metadata(&path) else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        let id = FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
        };
        if found.iter().all(|other| other.id != id) {
            found.push(Found { library, path, id });
        }
    }
    found
}

/// One process per mount namespace other than `own`: `(namespace inode, /proc/PID/root)`.
/// Kernel threads and processes that vanish meanwhile are skipped.
pub(super) fn other_roots(proc: &Path, own: u64) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut roots: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let Some(ns) = namespace_inode(&dir.join("ns/mnt")) else {
            continue;
        };
        if ns == own || roots.iter().any(|(other, _)| *other == ns) {
            continue;
        }
        // Kernel threads have no executable (and share the host's files anyway).
        if fs::read_link(dir.join("exe")).is_err() {
            continue;
        }
        roots.push((ns, dir.join("root")));
    }
    roots
}

/// The inode of a namespace link (`mnt:[4026531832]`).
pub(super) fn namespace_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.split_once('[')?.1.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "tcpobs-discover-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn symbolic_links_stay_inside_the_root() {
        let root = tree();
        let arch = std::env::consts::ARCH;
        let multiarch = root.join(format!("usr/lib/{arch}-linux-gnu"));
        fs::create_dir_all(&multiarch).unwrap();
        fs::write(multiarch.join("libc.so.6"), b"glibc").unwrap();
        fs::write(multiarch.join("libssl.so.3.0.0"), b"ssl").unwrap();
        symlink("libssl.so.3.0.0", multiarch.join("libssl.so.3")).unwrap();
        // Merged /usr, as Debian has it: /lib -> usr/lib, relative.
        symlink("usr/lib", root.join("lib")).unwrap();
        // An absolute link: must resolve in this root, not the host's.
        fs::create_dir_all(root.join("usr/local/lib")).unwrap();
        symlink(
            format!("/usr/lib/{arch}-linux-gnu/libssl.so.3"),
            root.join("usr/local/lib/libssl.so.3"),
        )
        .unwrap();
        let resolved = resolve_in_root(&root, "usr/local/lib/libssl.so.3").unwrap();
        assert_eq!(resolved, multiarch.join("libssl.so.3.0.0"));
        assert_eq!(
            resolve_in_root(&root, "lib/../../../usr/lib").unwrap(),
            root.join("usr/lib"),
            "`..` stops at the root"
        );
        assert_eq!(resolve_in_root(&root, "lib64/libc.so.6"), None);

        let libc = search(&root, Library::Libc);
        assert_eq!(
            libc.len(),
            1,
            "found once through /lib and /usr/lib: {libc:?}"
        );
        assert_eq!(libc[0].path, multiarch.join("libc.so.6"));
        let libssl = search(&root, Library::Libssl);
        assert_eq!(libssl.len(), 1, "{libssl:?}");
        assert_eq!(libssl[0].path, multiarch.join("libssl.so.3.0.0"));

        let loops = root.join("loop");
        fs::create_dir_all(&loops).unwrap();
        symlink("b", loops.join("a")).unwrap();
        symlink("a", loops.join("b")).unwrap();
        assert_eq!(resolve_in_root(&loops, "a"), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn musl_is_the_c_library_too() {
        let tree = tree();
        let root = tree.join("alpine");
        fs::create_dir_all(root.join("lib")).unwrap();
        let arch = std::env::consts::ARCH;
        fs::write(root.join(format!("lib/ld-musl-{arch}.so.1")), b"musl").unwrap();
        let found = search(&root, Library::Libc);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].path.ends_with(format!("ld-musl-{arch}.so.1")));
        assert!(search(&root, Library::Libssl).is_empty());
        fs::remove_dir_all(&tree).unwrap();
    }

    #[test]
    fn namespaces_by_inode() {
        let own = namespace_inode(Path::new("/proc/self/ns/mnt")).unwrap();
        assert!(own > 0);
        let others = other_roots(Path::new("/proc"), own);
        assert!(others.iter().all(|(ns, _)| *ns != own));
    }
}
