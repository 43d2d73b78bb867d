//! The resolver on directory trees laid out like a cgroup hierarchy (a directory's inode
//! stands for the cgroup id, as it does on cgroupfs), with a fake `/proc` and pod log
//! directory.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const ID: &str = "0f4e7b1c2d3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const UID: &str = "5c0a6d32-8a4f-4f0e-9b7d-2c1e3f4a5b6c";

struct Layout {
    base: PathBuf,
}

impl Layout {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "tcpobs-meta-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&base);
        for dir in ["cgroup", "pods", "proc"] {
            fs::create_dir_all(base.join(dir)).unwrap();
        }
        Self { base }
    }

    fn roots(&self) -> MetaRoots {
        MetaRoots {
            cgroup: self.base.join("cgroup"),
            pod_logs: self.base.join("pods"),
            proc: self.base.join("proc"),
        }
    }

    /// Creates a cgroup directory; returns its id.
    fn cgroup(&self, path: &str) -> u64 {
        let dir = self.base.join("cgroup").join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        fs::metadata(dir).unwrap().ino()
    }

    fn pod_dir(&self, name: &str) {
        fs::create_dir_all(self.base.join("pods").join(name)).unwrap();
    }

    fn process(&self, pid: u32, cgroup_file: &str) {
        let dir = self.base.join("proc").join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup"), cgroup_file).unwrap();
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn kubepods_path() -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
        UID.replace('-', "_")
    )
}

#[test]
fn a_walk_finds_the_container_and_the_pod_name_follows_its_log_directory() {
    let layout = Layout::new();
    let id = layout.cgroup(&kubepods_path());
    let mut resolver = Resolver::new(layout.roots());
    let start = Instant::now();

    let meta = resolver.lookup(id, 0, || start).expect("found by walking");
    assert_eq!(&*meta.cgroup, kubepods_path());
    assert_eq!(meta.container_id.as_deref(), Some(ID));
    assert_eq!(meta.pod_uid.as_deref(), Some(UID));
    assert_eq!(meta.pod, None, "no pod log directory yet");
    assert_eq!(resolver.walks(), 1);

    // The kubelet creates the pod's log directory; it is read again once the interval passed.
    layout.pod_dir(&format!("shop_checkout-7d9f_{UID}"));
    let soon = resolver.lookup(id, 0, || start).unwrap();
    assert_eq!(soon.pod, None, "not re-read within the interval");
    let later = start + RESCAN_INTERVAL;
    let meta = resolver.lookup(id, 0, || later).unwrap();
    assert_eq!(meta.namespace(), Some("shop"));
    assert_eq!(meta.pod_name(), Some("checkout-7d9f"));
    // Cached from then on: no clock needed, no further walk.
    let cached = resolver
        .lookup(id, 0, || panic!("a cached lookup reads no clock"))
        .unwrap();
    assert_eq!(cached, meta);
    assert_eq!(resolver.walks(), 1);
}

#[test]
fn proc_names_the_cgroup_without_a_walk() {
    let layout = Layout::new();
    let id = layout.cgroup("/system.slice/nginx.service");
    layout.process(42, "0::/system.slice/nginx.service\n");
    let mut resolver = Resolver::new(layout.roots());
    let meta = resolver
        .lookup(id, 42, || panic!("no walk, no clock"))
        .unwrap();
    assert_eq!(&*meta.cgroup, "/system.slice/nginx.service");
    assert_eq!(meta.container_id, None);
    assert_eq!(meta.pod_uid, None);
    assert_eq!(resolver.walks(), 0);
}

#[test]
fn proc_is_checked_against_the_id() {
    let layout = Layout::new();
    let id = layout.cgroup(&kubepods_path());
    let other = layout.cgroup("/system.slice/cron.service");
    // The process moved to another cgroup since; or tcpobs sees it from another cgroup
    // namespace: either way the walk decides.
    layout.process(7, "0::/system.slice/cron.service\n");
    layout.process(8, "0::/../../kubepods.slice\n");
    let mut resolver = Resolver::new(layout.roots());
    let start = Instant::now();
    let meta = resolver.lookup(id, 7, || start).unwrap();
    assert_eq!(&*meta.cgroup, kubepods_path());
    assert_eq!(resolver.walks(), 1);
    let meta = resolver.lookup(other, 8, || start).unwrap();
    assert_eq!(&*meta.cgroup, "/system.slice/cron.service");
    assert_eq!(resolver.walks(), 1, "found in the last walk's index");
}

#[test]
fn unknown_ids_cost_one_walk_per_interval_and_are_given_up_on() {
    let layout = Layout::new();
    layout.cgroup("/system.slice");
    let mut resolver = Resolver::new(layout.roots());
    let start = Instant::now();
    // A burst of unknown ids at one moment: one walk.
    for id in 1..=100 {
        assert_eq!(resolver.lookup(u64::MAX - id, 0, || start), None);
    }
    assert_eq!(resolver.walks(), 1);
    // Each interval, one more walk, until the ids are given up on.
    let mut at = start;
    for expected in 2..=u64::from(MAX_TRIES) {
        at += RESCAN_INTERVAL;
        for id in 1..=100 {
            assert_eq!(resolver.lookup(u64::MAX - id, 0, || at), None);
        }
        assert_eq!(resolver.walks(), expected);
    }
    at += RESCAN_INTERVAL * 100;
    assert_eq!(resolver.lookup(u64::MAX - 1, 0, || at), None);
    assert_eq!(resolver.walks(), u64::from(MAX_TRIES), "given up");
    // A cgroup created later is still found by a later walk, and id 0 means unknown.
    let late = layout.cgroup("/system.slice/late.service");
    assert!(resolver.lookup(late, 0, || at).is_some());
    assert_eq!(resolver.lookup(0, 1, || panic!("id 0 is unknown")), None);
}

#[test]
fn the_cache_is_bounded() {
    let layout = Layout::new();
    let mut resolver = Resolver::new(layout.roots());
    let start = Instant::now();
    for id in 1..=(MAX_CACHED as u64 + 10) {
        resolver.lookup(id + 1_000_000_000, 0, || start);
    }
    assert!(
        resolver.entries.len() <= MAX_CACHED,
        "{} entries",
        resolver.entries.len()
    );
}

#[test]
fn cgroup2_mounts_come_from_mountinfo() {
    let mountinfo = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
";
    let parse = |text: &str| {
        cgroup2_mounts(
            text.lines()
                .filter_map(|line| MountInfo::from_line(line).ok()),
        )
    };
    assert_eq!(parse(mountinfo), [PathBuf::from("/sys/fs/cgroup/unified")]);
    assert_eq!(
        parse("40 35 0:33 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n"),
        [PathBuf::from("/mnt/with space")]
    );
    assert!(parse("garbage\n\n").is_empty());
    assert!(!is_cgroup2(&std::env::temp_dir()));
    assert!(!is_cgroup2(Path::new("/nonexistent")));
}

/// On this machine: the real cgroup v2 tree resolves this process's own cgroup.
#[test]
fn the_real_cgroup_tree_resolves_this_process() {
    let roots = MetaRoots::default();
    if !roots.cgroup.join("cgroup.procs").exists() {
        eprintln!("no cgroup v2 mounted; skipped");
        return;
    }
    assert!(is_cgroup2(&roots.cgroup));
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap()
        .to_owned();
    let id = fs::metadata(roots.cgroup.join(path.trim_start_matches('/')))
        .unwrap()
        .ino();
    let metadata = Metadata::new(roots);
    let process = Process {
        pid: std::process::id(),
        cgroup: id,
        ..Process::default()
    };
    let meta = metadata.lookup(Some(&process)).unwrap();
    assert_eq!(&*meta.cgroup, path);
    // Found again by walking, when the process is not there to ask.
    let metadata = Metadata::new(MetaRoots::default());
    let process = Process { pid: 0, ..process };
    assert_eq!(&*metadata.lookup(Some(&process)).unwrap().cgroup, path);
    assert_eq!(metadata.walks(), 1);
}
