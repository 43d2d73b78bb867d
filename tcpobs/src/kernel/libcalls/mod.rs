//! The libcall families: uprobes on the user-space library calls that applications make around
//! a connection (`--phases`; the JSON and the metrics call what they measure phases).
//!
//! - `dns`: `getaddrinfo` in the C library (glibc's `libc.so.6`, musl's `ld-musl-*.so.1`);
//! - `tls`: OpenSSL 3's handshake functions and `SSL_free` in `libssl.so.3`.
//!
//! A uprobe is attached to a file (an inode), and fires in every process that maps it. So the
//! daemon looks for the libraries on the host and in the root filesystem of every other
//! mount namespace (containers, through `/proc/PID/root`, [`discover`]), attaches to each
//! distinct file once, and looks again every [`RESCAN_INTERVAL`] for new containers; files
//! whose containers are all gone are detached. At most [`MAX_LIBRARIES`] files per family
//! are attached; more are counted and logged. A family whose library is nowhere to be found
//! is logged once; tcpobs works on without it.
//!
//! Not picked up: a container that starts and finishes between two scans, libraries outside
//! the usual directories (a private OpenSSL bundled with an application), statically linked
//! programs, other TLS libraries (BoringSSL, GnuTLS, NSS, rustls, Go's crypto/tls) and
//! resolvers that bypass the C library (Go's pure resolver, c-ares).
//!
//! The daemon also reaps the kernel's per-thread handshake entries of threads that died inside
//! a handshake call (see `tcpobs-ebpf/src/hooks/libcalls/tls.rs`).

mod discover;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use tcpobs_common::{TlsCall, names};
use thiserror::Error;
use tracing::{debug, info, warn};

use self::discover::{FileId, Found, namespace_inode, other_roots, search};
use crate::kernel::{
    loader::families::{LIBCALL_FAMILIES, LibcallFamily, Library, Strategy, UProbeSpec},
    report::{Attached, FamilyAttach, ProgramFailure, program_mut},
};

/// Most library files attached per family.
pub(crate) const MAX_LIBRARIES: usize = 64;
/// How often the daemon looks for new containers' libraries.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// The initial PID namespace's inode (`PROC_PID_INIT_INO`): process ids in `/proc` are the
/// kernel's only there.
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// `--phases` and where to look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibcallOptions {
    pub enabled: bool,
    /// Look for libraries under this directory only, instead of `/` and the containers
    /// (for tests).
    pub lib_root: Option<PathBuf>,
}

impl Default for LibcallOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            lib_root: None,
        }
    }
}

/// Counters for the metrics and the `stats` event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibcallStats {
    /// Library files attached, per [`LIBCALL_FAMILIES`] entry.
    pub libraries: [u64; 2],
    /// Library files left unattached because a family had [`MAX_LIBRARIES`] already.
    pub skipped: u64,
    /// Handshake calls whose thread died before returning (reaped entries).
    pub tls_abandoned: u64,
}

struct AttachedLib {
    library: Library,
    path: PathBuf,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Found in the daemon's own root (never detached).
    host: bool,
}

/// The attached libcall probes.
pub(crate) struct LibcallProbes {
    host_root: PathBuf,
    /// Search other mount namespaces (not with a test root, nor outside the host PID
    /// namespace, where `/proc` does not show the kernel's process ids).
    containers: bool,
    own_mnt_ns: u64,
    attached: HashMap<FileId, AttachedLib>,
    /// Roots searched, by (mount namespace, root directory), and what was found there.
    roots: HashMap<(u64, FileId), Vec<FileId>>,
    /// Files that failed to attach (not retried), and their library.
    failed: HashMap<FileId, Library>,
    missing_logged: [bool; 2],
    full_logged: bool,
    stats: LibcallStats,
    tls_threads: Option<BpfHashMap<MapData, u64, TlsCall>>,
    tls_abandoned: Option<Array<MapData, u64>>,
}

fn family_index(library: Library) -> usize {
    LIBCALL_FAMILIES
        .iter()
        .position(|family| family.library == library)
        .unwrap_or(0)
}

fn family_of(library: Library) -> &'static LibcallFamily {
    &LIBCALL_FAMILIES[family_index(library)]
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProgramFailure> {
    program_mut(ebpf, name)
}

/// Why a probe did not attach to a library file.
#[derive(Debug, Error)]
enum ProbeError {
    #[error(transparent)]
    Program(#[from] ProgramFailure),
    #[error("{kind} {symbol}: {source}")]
    Attach {
        kind: &'static str,
        symbol: &'static str,
        source: ProgramFailure,
    },
}

fn attach_probe(
    ebpf: &mut Ebpf,
    probe: &UProbeSpec,
    path: &Path,
) -> Result<UProbeLinkId, ProbeError> {
    program(ebpf, probe.program)?
        .attach(probe.symbol, path, UProbeScope::AllProcesses)
        .map_err(|err| ProbeError::Attach {
            kind: kind(probe),
            symbol: probe.symbol,
            source: err.into(),
        })
}

fn kind(probe: &UProbeSpec) -> &'static str {
    if probe.ret { "uretprobe" } else { "uprobe" }
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (name, link) in links {
        if let Ok(program) = program(ebpf, name) {
            let _ = program.detach(link);
        }
    }
}

impl LibcallProbes {
    /// Loads the uprobe programs, takes the maps the daemon tends, and attaches to the
    /// libraries found now. `None` if the programs cannot load (logged; tcpobs works on
    /// without them).
    pub(crate) fn start(ebpf: &mut Ebpf, options: &LibcallOptions) -> Option<Self> {
        let mut programs: Vec<&str> = LIBCALL_FAMILIES
            .iter()
            .flat_map(|family| family.probes.iter().map(|probe| probe.program))
            .collect();
        programs.sort_unstable();
        programs.dedup();
        for name in programs {
            if let Err(err) = program(ebpf, name).and_then(|p| Ok(p.load()?)) {
                warn!(
                    "cannot load the phase probes ({name}: {err}); DNS and TLS phases are not traced"
                );
                return None;
            }
        }
        let tls_threads = ebpf
            .take_map(names::TLS_THREADS_MAP)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        let tls_abandoned = ebpf
            .take_map(names::TLS_ABANDONED_MAP)
            .and_then(|map| Array::try_from(map).ok());
        let in_host_pid_ns = namespace_inode(Path::new("/proc/self/ns/pid")) == Some(INIT_PID_NS);
        if options.lib_root.is_none() && !in_host_pid_ns {
            warn!(
                "tcpobs is not in the host's PID namespace: the DNS and TLS phases see only \
                 libraries in its own root filesystem (run it with the host's PID namespace, \
                 e.g. hostPID in Kubernetes, to see containers')"
            );
        }
        let mut probes = Self {
            host_root: options.lib_root.clone().unwrap_or_else(|| "/".into()),
            containers: options.lib_root.is_none() && in_host_pid_ns,
            own_mnt_ns: namespace_inode(Path::new("/proc/self/ns/mnt")).unwrap_or(0),
            attached: HashMap::new(),
            roots: HashMap::new(),
            failed: HashMap::new(),
            missing_logged: [false; 2],
            full_logged: false,
            stats: LibcallStats::default(),
            tls_threads: tls_threads.filter(|_| in_host_pid_ns),
            tls_abandoned,
        };
        probes.rescan(ebpf);
        Some(probes)
    }

    /// Attaches to libraries that appeared since the last scan (the host's, new containers'),
    /// detaches from those whose containers are gone.
    pub(crate) fn rescan(&mut self, ebpf: &mut Ebpf) {
        for library in [Library::Libc, Library::Libssl] {
            for found in search(&self.host_root.clone(), library) {
                if self.attach(ebpf, &found)
                    && let Some(lib) = self.attached.get_mut(&found.id)
                {
                    lib.host = true;
                }
            }
        }
        if self.containers {
            self.scan_containers(ebpf);
        }
        for family in &LIBCALL_FAMILIES {
            let index = family_index(family.library);
            let count = self
                .attached
                .values()
                .filter(|lib| lib.library == family.library)
                .count();
            self.stats.libraries[index] = count as u64;
            // A library found but not attachable was logged as such.
            let unattachable = self
                .failed
                .values()
                .any(|library| *library == family.library);
            if count == 0 && !unattachable && !self.missing_logged[index] {
                self.missing_logged[index] = true;
                let mut files: Vec<String> = Vec::new();
                for path in discover::candidates(family.library) {
                    let file = path.rsplit('/').next().unwrap_or_default().to_owned();
                    if !files.contains(&file) {
                        files.push(file);
                    }
                }
                warn!(
                    family = family.name,
                    "no {} found under {}{}: this phase is not traced until one appears",
                    files.join(" or "),
                    self.host_root.display(),
                    if self.containers {
                        " or in containers"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    fn scan_containers(&mut self, ebpf: &mut Ebpf) {
        let mut live = HashSet::new();
        for (ns, root) in other_roots(Path::new("/proc"), self.own_mnt_ns) {
            let Ok(metadata) = std::fs::metadata(&root) else {
                continue;
            };
            let key = (
                ns,
                FileId {
                    dev: metadata.dev(),
                    ino: metadata.ino(),
                },
            );
            live.insert(key);
            if self.roots.contains_key(&key) {
                continue;
            }
            let mut ids = Vec::new();
            for library in [Library::Libc, Library::Libssl] {
                for found in search(&root, library) {
                    if self.attach(ebpf, &found) {
                        ids.push(found.id);
                    }
                }
            }
            debug!(root = %root.display(), libraries = ids.len(), "searched a container root");
            self.roots.insert(key, ids);
        }
        self.roots.retain(|key, _| live.contains(key));
        let used: HashSet<FileId> = self.roots.values().flatten().copied().collect();
        let gone: Vec<FileId> = self
            .attached
            .iter()
            .filter(|(id, lib)| !lib.host && !used.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(lib) = self.attached.remove(&id) {
                info!(
                    family = family_of(lib.library).name,
                    path = %lib.path.display(),
                    "detached (its containers are gone)"
                );
                detach(ebpf, lib.links);
            }
        }
    }

    /// Attaches every probe of the library's family to `found`; true if attached (now or
    /// before).
    fn attach(&mut self, ebpf: &mut Ebpf, found: &Found) -> bool {
        if self.attached.contains_key(&found.id) {
            return true;
        }
        if self.failed.contains_key(&found.id) {
            return false;
        }
        let family = family_of(found.library);
        let count = self
            .attached
            .values()
            .filter(|lib| lib.library == found.library)
            .count();
        if count >= MAX_LIBRARIES {
            self.stats.skipped += 1;
            if !self.full_logged {
                self.full_logged = true;
                warn!(
                    family = family.name,
                    "{MAX_LIBRARIES} library files attached already; more are counted in \
                     tcpobs_phase_libraries_skipped_total and not traced"
                );
            }
            return false;
        }
        let mut links = Vec::new();
        for probe in family.probes {
            match attach_probe(ebpf, probe, &found.path) {
                Ok(link) => links.push((probe.program, link)),
                Err(err) => {
                    detach(ebpf, links);
                    warn!(family = family.name, path = %found.path.display(), "cannot attach: {err}");
                    self.failed.insert(found.id, found.library);
                    return false;
                }
            }
        }
        info!(family = family.name, path = %found.path.display(), "attached");
        self.attached.insert(
            found.id,
            AttachedLib {
                library: found.library,
                path: found.path.clone(),
                links,
                host: false,
            },
        );
        true
    }

    /// Removes the kernel's handshake entries of threads that no longer exist, and tells the
    /// data hooks how many there were.
    pub(crate) fn reap_threads(&mut self) {
        let Some(threads) = &mut self.tls_threads else {
            return;
        };
        let keys: Vec<u64> = threads.keys().filter_map(Result::ok).collect();
        let mut reaped = 0;
        for key in keys {
            let (tgid, tid) = (key >> 32, key & 0xffff_ffff);
            if Path::new(&format!("/proc/{tgid}/task/{tid}")).exists() {
                continue;
            }
            // Whoever removes the entry accounts for it: if the thread returned meanwhile, the
            // kernel did.
            if threads.remove(&key).is_ok() {
                reaped += 1;
            }
        }
        if reaped == 0 {
            return;
        }
        self.stats.tls_abandoned += reaped;
        debug!(reaped, "TLS handshake calls whose thread died");
        if let Some(abandoned) = &mut self.tls_abandoned
            && let Err(err) = abandoned.set(0, self.stats.tls_abandoned, 0)
        {
            warn!("cannot update {}: {err}", names::TLS_ABANDONED_MAP);
        }
    }

    pub(crate) fn stats(&self) -> LibcallStats {
        self.stats
    }

    /// How each libcall family is attached, for `--check` and `tcpobs_probe_info`: the
    /// programs' types and the library files.
    pub(crate) fn families(&self) -> Vec<FamilyAttach> {
        LIBCALL_FAMILIES
            .iter()
            .map(|family| {
                let mut paths: Vec<String> = self
                    .attached
                    .values()
                    .filter(|lib| lib.library == family.library)
                    .map(|lib| lib.path.display().to_string())
                    .collect();
                paths.sort_unstable();
                FamilyAttach {
                    family: family.name,
                    strategy: Strategy::Uprobe,
                    programs: paths
                        .iter()
                        .flat_map(|path| {
                            family.probes.iter().map(move |probe| Attached {
                                program_type: kind(probe),
                                target: format!("{path}:{}", probe.symbol),
                            })
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
