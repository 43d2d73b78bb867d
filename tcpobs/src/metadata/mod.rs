//! Container and pod metadata for connections: cgroup id → cgroup path → container id and pod
//! UID (read from the path's names, [`path`]) → pod namespace and name (from the kubelet's
//! log directories, [`pods`]). No API server and no runtime socket are involved.
//!
//! The kernel records, per socket, the cgroup v2 id of the process that owns it, which is the
//! inode number of the cgroup's directory. Finding that directory:
//! 1. `/proc/<pid>/cgroup` names the process's cgroup; if the directory of that name has this
//!    inode, that is it (one small read and one `stat`).
//! 2. Otherwise (the process is gone or has moved, or tcpobs runs in a container with its own
//!    cgroup namespace, where those names are relative to it) the cgroup tree is walked and
//!    every directory indexed by inode. A walk reads directory entries only (their inode comes
//!    with the entry), stops after [`MAX_CGROUPS`] directories, and happens on a miss at most
//!    once every [`RESCAN_INTERVAL`], so a burst of unknown ids costs one walk.
//!
//! Results are cached per cgroup id (ids are never reused while the system runs), and so are
//! misses: an id still unknown after [`MAX_TRIES`] walks is not looked for again. The cache
//! holds at most [`MAX_CACHED`] ids and starts over when full. Lookups happen when a
//! connection is established, so that a short-lived container is resolved while its cgroup
//! still exists, and when its events are written; once cached, a lookup is one hash lookup
//! under an uncontended lock.

mod path;
mod pods;

use std::{
    collections::HashMap,
    fs,
    hash::BuildHasherDefault,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use procfs::process::MountInfo;
use tracing::debug;

pub(crate) use self::pods::PodName;
use crate::{model::Process, sync::lock, tracker::SockHasher};

/// Cgroup ids (inode numbers) need no SipHash: the lookup is on every event's path.
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<SockHasher>>;

/// Where cgroup v2 is mounted on most hosts.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the kubelet keeps pod log directories.
pub(crate) const POD_LOG_ROOT: &str = "/var/log/pods";
/// Least time between two walks of the cgroup tree, and between two reads of the pod log
/// directory.
pub(crate) const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Most cgroup ids cached.
pub(crate) const MAX_CACHED: usize = 16_384;
/// Most directories one walk indexes.
pub(crate) const MAX_CGROUPS: usize = 65_536;
/// Walks after which an id that is still unknown is given up on.
pub(crate) const MAX_TRIES: u8 = 3;
/// Deepest cgroup a walk descends to.
const MAX_DEPTH: usize = 32;
/// Most pods read from the pod log directory.
const MAX_PODS: usize = 65_536;

/// The cgroup v2 mount: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one; `/sys/fs/cgroup` if `/proc/self/mountinfo` names none. Read once.
pub fn default_cgroup_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mounts = procfs::process::Process::myself()
            .and_then(|process| process.mountinfo())
            .map(|mounts| cgroup2_mounts(mounts.0))
            .unwrap_or_default();
        mounts
            .iter()
            .find(|mount| mount.as_path() == Path::new(CGROUP_ROOT))
            .or_else(|| mounts.first())
            .cloned()
            .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT))
    })
}

/// Whether `path` is a cgroup v2 file system. Anything else (the tmpfs that holds cgroup v1
/// hierarchies, on a host without cgroup v2) has inode numbers unrelated to cgroup ids.
pub(crate) fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: all zeroes is a valid value of this plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path, and a statfs to write into.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type == libc::CGROUP2_SUPER_MAGIC
}

/// Mount points of cgroup2 file systems among the mounts of `/proc/<pid>/mountinfo` (whose
/// mount points keep the kernel's `\040` for a space).
fn cgroup2_mounts(mounts: impl IntoIterator<Item = MountInfo>) -> Vec<PathBuf> {
    mounts
        .into_iter()
        .filter(|mount| mount.fs_type == "cgroup2")
        .map(|mount| PathBuf::from(mount.mount_point.to_string_lossy().replace("\\040", " ")))
        .collect()
}

/// The cgroup v2 path of a process (the `0::` line of `/proc/<pid>/cgroup`), as the process
/// sees it: relative to its cgroup namespace.
pub(crate) fn cgroup2_path(process: &procfs::process::Process) -> Option<String> {
    process
        .cgroups()
        .ok()?
        .0
        .into_iter()
        .find(|cgroup| cgroup.hierarchy == 0)
        .map(|cgroup| cgroup.pathname)
}

/// Where to look things up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetaRoots {
    /// The cgroup v2 mount.
    pub cgroup: PathBuf,
    /// The kubelet's pod log directory.
    pub pod_logs: PathBuf,
    /// procfs (`/proc`).
    pub proc: PathBuf,
}

impl Default for MetaRoots {
    fn default() -> Self {
        Self {
            cgroup: default_cgroup_root().to_path_buf(),
            pod_logs: PathBuf::from(POD_LOG_ROOT),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// What tcpobs knows about the cgroup a process runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Path below the cgroup v2 root, e.g. `/system.slice/nginx.service`.
    pub cgroup: Arc<str>,
    pub container_id: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    /// Namespace and name, when the pod's log directory was found.
    pub pod: Option<PodName>,
}

impl Meta {
    fn from_path(path: &str) -> Self {
        let info = path::parse(path);
        Self {
            cgroup: Arc::from(path),
            container_id: info.container_id.map(Arc::from),
            pod_uid: info.pod_uid.map(Arc::from),
            pod: None,
        }
    }

    pub(crate) fn namespace(&self) -> Option<&str> {
        self.pod.as_ref().map(|pod| &*pod.namespace)
    }

    pub(crate) fn pod_name(&self) -> Option<&str> {
        self.pod.as_ref().map(|pod| &*pod.name)
    }
}

#[derive(Debug)]
enum Entry {
    Found(Arc<Meta>),
    /// Not found yet, after this many walks.
    Missing(u8),
}

/// The lookup state; see the module documentation.
#[derive(Debug)]
pub(crate) struct Resolver {
    roots: MetaRoots,
    entries: IdMap<Entry>,
    /// The last walk's index: cgroup id → path below the root.
    tree: IdMap<Box<str>>,
    last_walk: Option<Instant>,
    pods: HashMap<Arc<str>, PodName>,
    last_pod_read: Option<Instant>,
    walks: u64,
}

/// The current time, read once and only if needed.
struct LazyNow<F> {
    now: Option<F>,
    at: Option<Instant>,
}

impl<F: FnOnce() -> Instant> LazyNow<F> {
    fn new(now: F) -> Self {
        Self {
            now: Some(now),
            at: None,
        }
    }

    fn get(&mut self) -> Instant {
        *self
            .at
            .get_or_insert_with(|| self.now.take().map_or_else(Instant::now, |now| now()))
    }
}

fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= RESCAN_INTERVAL)
}

impl Resolver {
    pub(crate) fn new(roots: MetaRoots) -> Self {
        Self {
            roots,
            entries: IdMap::default(),
            tree: IdMap::default(),
            last_walk: None,
            pods: HashMap::new(),
            last_pod_read: None,
            walks: 0,
        }
    }

    /// How many times the cgroup tree was walked.
    #[cfg(test)]
    pub(crate) fn walks(&self) -> u64 {
        self.walks
    }

    /// The metadata of cgroup `id`, owned by process `pid`; `now` is asked for only when a
    /// walk or a read of the pod directory might be due.
    pub(crate) fn lookup(
        &mut self,
        id: u64,
        pid: u32,
        now: impl FnOnce() -> Instant,
    ) -> Option<Arc<Meta>> {
        if id == 0 {
            return None;
        }
        let mut now = LazyNow::new(now);
        let meta = match self.entries.get(&id) {
            Some(Entry::Found(meta)) => Arc::clone(meta),
            Some(&Entry::Missing(tries)) => {
                if tries >= MAX_TRIES || !due(self.last_walk, now.get()) {
                    return None;
                }
                self.walk(now.get());
                let path = self.indexed(id);
                self.settle(id, path, tries + 1)?
            }
            None => {
                let mut tries = 0;
                let mut path = self.path_from_proc(id, pid).or_else(|| self.indexed(id));
                if path.is_none() && due(self.last_walk, now.get()) {
                    self.walk(now.get());
                    tries = 1;
                    path = self.indexed(id);
                }
                self.settle(id, path, tries)?
            }
        };
        if meta.pod_uid.is_some() && meta.pod.is_none() {
            return Some(self.with_pod_name(id, meta, &mut now));
        }
        Some(meta)
    }

    fn indexed(&self, id: u64) -> Option<String> {
        self.tree.get(&id).map(|path| path.to_string())
    }

    /// Records the outcome of a search for `id`.
    fn settle(&mut self, id: u64, path: Option<String>, tries: u8) -> Option<Arc<Meta>> {
        if self.entries.len() >= MAX_CACHED {
            debug!(
                cached = self.entries.len(),
                "cgroup metadata cache full; starting over"
            );
            self.entries.clear();
        }
        match path {
            Some(path) => {
                let meta = Arc::new(Meta::from_path(&path));
                self.entries.insert(id, Entry::Found(Arc::clone(&meta)));
                Some(meta)
            }
            None => {
                self.entries.insert(id, Entry::Missing(tries));
                None
            }
        }
    }

    /// Adds the pod's namespace and name once its log directory is known.
    fn with_pod_name(
        &mut self,
        id: u64,
        meta: Arc<Meta>,
        now: &mut LazyNow<impl FnOnce() -> Instant>,
    ) -> Arc<Meta> {
        let uid = meta.pod_uid.clone().unwrap_or_default();
        if !self.pods.contains_key(&uid) {
            if !due(self.last_pod_read, now.get()) {
                return meta;
            }
            self.last_pod_read = Some(now.get());
            match pods::read(&self.roots.pod_logs, MAX_PODS) {
                Ok(pods) => self.pods = pods,
                Err(err) => debug!(
                    root = %self.roots.pod_logs.display(),
                    "cannot read pod log directories: {err}"
                ),
            }
        }
        let Some(pod) = self.pods.get(&uid) else {
            return meta;
        };
        let named = Arc::new(Meta {
            pod: Some(pod.clone()),
            ..(*meta).clone()
        });
        self.entries.insert(id, Entry::Found(Arc::clone(&named)));
        named
    }

    /// The path of cgroup `id` from `/proc/<pid>/cgroup`, if the process is still in it.
    fn path_from_proc(&self, id: u64, pid: u32) -> Option<String> {
        if pid == 0 {
            return None;
        }
        let process =
            procfs::process::Process::new_with_root(self.roots.proc.join(pid.to_string())).ok()?;
        let path = cgroup2_path(&process)?;
        // In another cgroup namespace the path is relative to it (`/../..`).
        if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
            return None;
        }
        let dir = self.roots.cgroup.join(path.trim_start_matches('/'));
        (fs::metadata(dir).ok()?.ino() == id).then_some(path)
    }

    /// Indexes the cgroup tree by inode.
    fn walk(&mut self, now: Instant) {
        let started = Instant::now();
        self.last_walk = Some(now);
        self.walks += 1;
        let mut tree = IdMap::default();
        let root = &self.roots.cgroup;
        if let Ok(metadata) = fs::metadata(root) {
            tree.insert(metadata.ino(), Box::from("/"));
        }
        let mut stack = vec![(root.clone(), String::new(), 0)];
        'walk: while let Some((dir, relative, depth)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let path = format!("{relative}/{name}");
                tree.insert(entry.ino(), Box::from(path.as_str()));
                if tree.len() >= MAX_CGROUPS {
                    break 'walk;
                }
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), path, depth + 1));
                }
            }
        }
        debug!(
            cgroups = tree.len(),
            took = ?started.elapsed(),
            root = %root.display(),
            "indexed the cgroup tree"
        );
        self.tree = tree;
    }
}

/// The shared lookup service, used by the outputs and the metric labels.
#[derive(Debug)]
pub(crate) struct Metadata(Mutex<Resolver>);

impl Metadata {
    pub(crate) fn new(roots: MetaRoots) -> Self {
        Self(Mutex::new(Resolver::new(roots)))
    }

    /// The metadata of a socket's process (`None` when the process or its cgroup is unknown,
    /// or the cgroup was not found).
    pub(crate) fn lookup(&self, process: Option<&Process>) -> Option<Arc<Meta>> {
        let process = process?;
        lock(&self.0).lookup(process.cgroup, process.pid, Instant::now)
    }

    /// How many times the cgroup tree was walked.
    #[cfg(test)]
    pub(crate) fn walks(&self) -> u64 {
        lock(&self.0).walks()
    }
}

#[cfg(test)]
mod tests;
