//! The guest's initramfs: a static busybox, the kernel modules needed to reach the host's
//! files (Debian builds virtio-pci, 9p and overlayfs as modules, more or fewer of them
//! depending on the release), and an `/init` that mounts the host's root read-only under a
//! RAM overlay and hands over to the run's guest script.
//!
//! The archive is written here in the kernel's `newc` cpio format, uncompressed, so no cpio
//! or compressor is needed on the host. Modules go in as Debian ships them (plain or `.xz`)
//! and busybox decompresses them in the guest: kernels before 5.17 cannot load compressed
//! modules themselves.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// Modules to load, in this order with their dependencies first; each may be built in.
const WANTED: [&str; 5] = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng"];

/// Where the results share is mounted in the guest, and the script the host writes there.
pub const GUEST_DIR: &str = "/run/tcpobs-vm";

const INIT: &str = r#"#!/bin/busybox sh
# tcpobs VM init (cargo xtask vm-test): load the modules that reach the host's files, mount
# the host's root read-only under a RAM overlay, and hand over to the run's guest script.
/bin/busybox mkdir -p /proc /sys /dev /tmp /lower /rw /newroot
/bin/busybox --install -s /bin
fail() {
    echo "tcpobs-vm: init: $*"
    poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules.list); do
    case $module in
    *.xz) unxz -c "/modules/$module" > /tmp/module.ko || fail "cannot decompress $module" ;;
    *.gz) gunzip -c "/modules/$module" > /tmp/module.ko || fail "cannot decompress $module" ;;
    *) cp "/modules/$module" /tmp/module.ko ;;
    esac
    insmod /tmp/module.ko || fail "cannot load $module"
done
p9=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $p9,ro,cache=loose hostroot /lower || fail "cannot mount the host's root (9p)"
mount -t tmpfs -o mode=0755 rw /rw || fail "cannot mount a tmpfs"
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "cannot mount the overlay root"
mount -t tmpfs -o mode=0755 run /newroot/run
mkdir -p /newroot@GUEST_DIR@
mount -t 9p -o $p9 results /newroot@GUEST_DIR@ || fail "cannot mount the results directory (9p)"
for fs in proc sys dev; do
    mount --move /$fs /newroot/$fs
done
exec switch_root /newroot /bin/bash @GUEST_DIR@/guest.sh
"#;

/// Writes the initramfs for the kernel whose modules (with `modules.dep`) are in `modules`.
pub fn build(modules: &Path, busybox: &Path, output: &Path) -> Result<()> {
    let read = |name: &str| {
        fs::read_to_string(modules.join(name))
            .with_context(|| format!("reading {}", modules.join(name).display()))
    };
    let order = load_order(&read("modules.dep")?, &read("modules.builtin")?, &WANTED)?;
    let mut archive = Archive::default();
    for dir in ["bin", "dev", "modules"] {
        archive.dir(dir);
    }
    archive.char_device("dev/console", 5, 1);
    let busybox = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    archive.file("bin/busybox", 0o755, &busybox);
    archive.file(
        "init",
        0o755,
        INIT.replace("@GUEST_DIR@", GUEST_DIR).as_bytes(),
    );
    let mut list = String::new();
    for module in &order {
        let name = module.rsplit('/').next().unwrap_or(module);
        if name.ends_with(".zst") {
            bail!("{name}: zstd-compressed modules cannot be loaded by the initramfs");
        }
        let data =
            fs::read(modules.join(module)).with_context(|| format!("reading module {module}"))?;
        archive.file(&format!("modules/{name}"), 0o644, &data);
        list.push_str(name);
        list.push('\n');
    }
    archive.file("modules.list", 0o644, list.as_bytes());
    fs::write(output, archive.finish()).with_context(|| format!("writing {}", output.display()))
}

/// A module's name as modprobe compares them: file stem, `-` and `_` alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The module files (relative to the modules directory) to load, dependencies first, so
/// that every module in `wanted` is present; a wanted module that is neither a module nor
/// built in is an error.
fn load_order(modules_dep: &str, modules_builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in modules_dep.lines() {
        if let Some((module, needs)) = line.split_once(':') {
            deps.insert(module, needs.split_whitespace().collect());
            by_name.insert(module_name(module), module);
        }
    }
    let builtin: HashSet<String> = modules_builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    for want in wanted {
        match by_name.get(*want) {
            Some(module) => visit(module, &deps, &mut order, 0)?,
            None if builtin.contains(*want) => {}
            None => bail!("the kernel has no {want} module and does not build it in"),
        }
    }
    Ok(order)
}

fn visit(
    module: &str,
    deps: &HashMap<&str, Vec<&str>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<()> {
    if order.iter().any(|loaded| loaded == module) {
        return Ok(());
    }
    if depth > 32 {
        bail!("module dependencies of {module} do not end");
    }
    for dep in deps.get(module).into_iter().flatten() {
        visit(dep, deps, order, depth + 1)?;
    }
    order.push(module.to_owned());
    Ok(())
}

/// A cpio archive in the `newc` format the kernel unpacks.
#[derive(Default)]
struct Archive {
    data: Vec<u8>,
    inodes: u32,
}

impl Archive {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, permissions: u32, content: &[u8]) {
        self.entry(name, 0o100_000 | permissions, (0, 0), content);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), content: &[u8]) {
        self.inodes += 1;
        let links = if mode & 0o040_000 != 0 { 2 } else { 1 };
        let fields = [
            self.inodes,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime
            u32::try_from(content.len()).expect("initramfs files are far below 4 GiB"),
            0, // device major
            0, // device minor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short names"),
            0, // checksum (unused by newc)
        ];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(content);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_builtins_are_skipped() {
        let dep = "kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n\
                   kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/drivers/char/hw_random/virtio-rng.ko.xz:\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/overlayfs/overlay.ko\n";
        assert_eq!(
            load_order(dep, builtin, &WANTED).unwrap(),
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
                "kernel/drivers/char/hw_random/virtio-rng.ko.xz",
            ]
        );
        let err = load_order(dep, "", &WANTED).unwrap_err().to_string();
        assert!(err.contains("no virtio_pci module"), "{err}");
    }

    #[test]
    fn cpio_entries_follow_newc() {
        let mut archive = Archive::default();
        archive.file("init", 0o755, b"hi");
        let data = archive.finish();
        let header = std::str::from_utf8(&data[..110]).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(&header[14..22], "000081ed", "regular file, mode 0755");
        assert_eq!(&header[54..62], "00000002", "file size");
        assert_eq!(&header[94..102], "00000005", "name size with its NUL");
        // 110-byte header + "init\0" = 115, padded to 116; then the data, padded to 120.
        assert_eq!(&data[110..116], b"init\0\0");
        assert_eq!(&data[116..120], b"hi\0\0");
        assert_eq!(&data[120..126], b"070701");
        assert!(data.len().is_multiple_of(4));
        assert!(data.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
