//! Writing the kernel-side filters (see `tcpobs-ebpf/src/filter.rs` for how they apply).
//!
//! The sets live in BPF maps, so a change takes effect for the next socket without reloading
//! anything; sockets already traced or ignored keep their fate. Pid and cgroup filters judge
//! an accepted socket by the process listening on its port: `listen()` calls are seen as they
//! happen, and listeners older than tcpobs are found at start-up in `/proc` (this network
//! namespace only).

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    hash::Hash,
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, MapData, MapError as BpfMapError, lpm_trie::Key},
};
use procfs::{
    net::TcpState,
    process::{FDTarget, Process, all_processes},
};
use tcpobs_common::{FilterConfig, ListenKey, Listener, Owner, filter_mode, names};
use thiserror::Error;
use tracing::{debug, warn};

use crate::{
    config::live::{CgroupRef, Filter, Filters},
    kernel::report::{MapError, take_map},
    metadata::{cgroup2_path, default_cgroup_root},
};

/// Why filters could not be resolved or written. The loader wraps it in its own error at
/// start-up; at runtime it is the answer to a `PUT /config` or a `SIGHUP`.
#[derive(Debug, Error)]
pub enum FilterError {
    /// A cgroup filter names a path that cannot be read.
    #[error("filters.cgroups: cgroup {}: {source}", path.display())]
    Cgroup { path: PathBuf, source: io::Error },
    /// A cgroup filter names something other than a directory of the cgroup v2 tree.
    #[error("filters.cgroups: cgroup {}: not a directory", path.display())]
    NotACgroup { path: PathBuf },
    /// Writing one of the filter maps failed (`set`: `ports`, `cidrs`, `pids`, `cgroups` or
    /// `filter modes`).
    #[error("{set}: {source}")]
    Write {
        set: &'static str,
        source: BpfMapError,
    },
}

fn write_error(set: &'static str) -> impl FnOnce(BpfMapError) -> FilterError {
    move |source| FilterError::Write { set, source }
}

/// Filters with cgroups resolved to ids, ready for the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resolved {
    ports: (u8, Vec<u16>),
    cidr4: Vec<([u8; 4], u32)>,
    cidr6: Vec<([u8; 16], u32)>,
    cidr_mode: u8,
    pids: (u8, Vec<u32>),
    cgroups: (u8, Vec<u64>),
}

fn mode<T>(filter: &Filter<T>) -> u8 {
    match filter {
        Filter::Off => filter_mode::OFF,
        Filter::Include(_) => filter_mode::INCLUDE,
        Filter::Exclude(_) => filter_mode::EXCLUDE,
    }
}

/// The id of a cgroup v2 (its directory's inode number).
pub(crate) fn cgroup_id(cgroup: &CgroupRef) -> Result<u64, FilterError> {
    match cgroup {
        CgroupRef::Id(id) => Ok(*id),
        CgroupRef::Path(path) => {
            let path = Path::new(path);
            let full = if path.is_absolute() {
                path.to_path_buf()
            } else {
                default_cgroup_root().join(path)
            };
            let metadata = match fs::metadata(&full) {
                Ok(metadata) => metadata,
                Err(source) => return Err(FilterError::Cgroup { path: full, source }),
            };
            if !metadata.is_dir() {
                return Err(FilterError::NotACgroup { path: full });
            }
            Ok(metadata.ino())
        }
    }
}

impl Resolved {
    pub(crate) fn new(filters: &Filters) -> Result<Self, FilterError> {
        let mut resolved = Self {
            ports: (mode(&filters.ports), filters.ports.values().to_vec()),
            cidr_mode: mode(&filters.cidrs),
            pids: (mode(&filters.pids), filters.pids.values().to_vec()),
            ..Self::default()
        };
        for cidr in filters.cidrs.values() {
            match cidr.addr {
                IpAddr::V4(addr) => resolved.cidr4.push((addr.octets(), u32::from(cidr.prefix))),
                IpAddr::V6(addr) => resolved.cidr6.push((addr.octets(), u32::from(cidr.prefix))),
            }
        }
        let ids = filters
            .cgroups
            .values()
            .iter()
            .map(cgroup_id)
            .collect::<Result<Vec<_>, _>>()?;
        resolved.cgroups = (mode(&filters.cgroups), ids);
        Ok(resolved)
    }
}

/// Handles on the filter maps.
pub(crate) struct KernelFilters {
    config: Array<MapData, FilterConfig>,
    ports: HashMap<MapData, u16, u8>,
    cidr4: LpmTrie<MapData, [u8; 4], u8>,
    cidr6: LpmTrie<MapData, [u8; 16], u8>,
    pids: HashMap<MapData, u32, u8>,
    cgroups: HashMap<MapData, u64, u8>,
    listeners: HashMap<MapData, ListenKey, Listener>,
    /// What the maps hold now.
    applied: Resolved,
}

/// Makes `map` hold exactly `keys`.
fn sync_hash<K: Pod + Eq + Hash>(
    map: &mut HashMap<MapData, K, u8>,
    keys: &[K],
) -> Result<(), BpfMapError> {
    let wanted: HashSet<K> = keys.iter().copied().collect();
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        map.remove(&key)?;
    }
    for key in wanted {
        map.insert(key, 1, 0)?;
    }
    Ok(())
}

fn sync_trie<K: Pod + Eq + Hash>(
    map: &mut LpmTrie<MapData, K, u8>,
    nets: &[(K, u32)],
) -> Result<(), BpfMapError> {
    let stale: Vec<Key<K>> = map.keys().filter_map(Result::ok).collect();
    for key in stale {
        map.remove(&key)?;
    }
    for &(addr, prefix) in nets {
        map.insert(&Key::new(prefix, addr), 1, 0)?;
    }
    Ok(())
}

impl KernelFilters {
    /// Takes the filter maps out of the loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            config: take_map(ebpf, names::FILTER_MAP)?,
            ports: take_map(ebpf, names::PORT_FILTER_MAP)?,
            cidr4: take_map(ebpf, names::CIDR4_FILTER_MAP)?,
            cidr6: take_map(ebpf, names::CIDR6_FILTER_MAP)?,
            pids: take_map(ebpf, names::PID_FILTER_MAP)?,
            cgroups: take_map(ebpf, names::CGROUP_FILTER_MAP)?,
            listeners: take_map(ebpf, names::LISTENERS_MAP)?,
            applied: Resolved::default(),
        })
    }

    fn write_modes(
        &mut self,
        ports: u8,
        cidrs: u8,
        pids: u8,
        cgroups: u8,
    ) -> Result<(), FilterError> {
        let config = FilterConfig {
            ports,
            cidrs,
            pids,
            cgroups,
            _pad: [0; 4],
        };
        self.config
            .set(0, config, 0)
            .map_err(write_error("filter modes"))
    }

    /// Writes new filters. A kind that changes is switched off while its set is rewritten, so
    /// that for that instant sockets are traced rather than wrongly ignored (each socket is
    /// judged once, for good); then the new modes are written.
    pub(crate) fn apply(&mut self, filters: &Resolved) -> Result<(), FilterError> {
        let old = &self.applied;
        let keep = |changed: bool, mode: u8| if changed { filter_mode::OFF } else { mode };
        let cidrs_changed = old.cidr_mode != filters.cidr_mode
            || old.cidr4 != filters.cidr4
            || old.cidr6 != filters.cidr6;
        self.write_modes(
            keep(old.ports != filters.ports, old.ports.0),
            keep(cidrs_changed, old.cidr_mode),
            keep(old.pids != filters.pids, old.pids.0),
            keep(old.cgroups != filters.cgroups, old.cgroups.0),
        )?;
        sync_hash(&mut self.ports, &filters.ports.1).map_err(write_error("ports"))?;
        sync_trie(&mut self.cidr4, &filters.cidr4).map_err(write_error("cidrs"))?;
        sync_trie(&mut self.cidr6, &filters.cidr6).map_err(write_error("cidrs"))?;
        sync_hash(&mut self.pids, &filters.pids.1).map_err(write_error("pids"))?;
        sync_hash(&mut self.cgroups, &filters.cgroups.1).map_err(write_error("cgroups"))?;
        let config = FilterConfig {
            ports: filters.ports.0,
            cidrs: filters.cidr_mode,
            pids: filters.pids.0,
            cgroups: filters.cgroups.0,
            _pad: [0; 4],
        };
        self.config
            .set(0, config, 0)
            .map_err(write_error("filter modes"))?;
        // What is in the maps now: the next apply switches off only what it changes.
        self.applied = filters.clone();
        Ok(())
    }

    /// Records who listens on ports opened before tcpobs started, in tcpobs's own network
    /// namespace. Returns how many.
    pub(crate) fn seed_listeners(&mut self) -> usize {
        let Ok(netns) = fs::metadata("/proc/self/ns/net").map(|m| m.ino() as u32) else {
            warn!("cannot read this network namespace; older listeners are unknown");
            return 0;
        };
        let mut seeded = 0;
        for (port, (owner, count)) in proc_listeners() {
            let key = ListenKey {
                netns,
                port,
                _pad: 0,
            };
            let listener = Listener {
                owner,
                count,
                _pad: 0,
            };
            match self.listeners.insert(key, listener, 0) {
                Ok(()) => seeded += 1,
                Err(err) => warn!(port, "cannot record the listener: {err}"),
            }
        }
        debug!(seeded, "listeners found in /proc");
        seeded
    }
}

/// Listening TCP ports of this network namespace: the process behind each, and how many
/// listening sockets share it.
fn proc_listeners() -> StdHashMap<u16, (Owner, u32)> {
    let mut by_inode: StdHashMap<u64, u16> = StdHashMap::new();
    let mut sockets: StdHashMap<u16, u32> = StdHashMap::new();
    let listening = [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|socket| socket.state == TcpState::Listen);
    for socket in listening {
        let port = socket.local_address.port();
        by_inode.insert(socket.inode, port);
        *sockets.entry(port).or_default() += 1;
    }
    let mut owners = StdHashMap::new();
    let Ok(processes) = all_processes() else {
        return owners;
    };
    for process in processes.filter_map(Result::ok) {
        let (Ok(pid), Ok(fds)) = (u32::try_from(process.pid), process.fd()) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            if let Some(port) = by_inode.get(&inode) {
                owners.entry(*port).or_insert_with(|| {
                    let owner = Owner {
                        pid,
                        _pad: 0,
                        cgroup: cgroup_of(&process).unwrap_or(0),
                    };
                    (owner, sockets.get(port).copied().unwrap_or(1))
                });
            }
        }
    }
    owners
}

/// The cgroup v2 id of a process.
fn cgroup_of(process: &Process) -> Option<u64> {
    let path = cgroup2_path(process)?;
    let full: PathBuf = default_cgroup_root().join(path.trim_start_matches('/'));
    fs::metadata(full).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_filters() {
        let filters = Filters {
            ports: Filter::Include(vec![80]),
            cidrs: Filter::Exclude(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ]),
            pids: Filter::Off,
            cgroups: Filter::Include(vec![CgroupRef::Id(42)]),
        };
        let resolved = Resolved::new(&filters).unwrap();
        assert_eq!(resolved.ports, (filter_mode::INCLUDE, vec![80]));
        assert_eq!(resolved.cidr_mode, filter_mode::EXCLUDE);
        assert_eq!(resolved.cidr4, [([10, 0, 0, 0], 8)]);
        assert_eq!(resolved.cidr6.len(), 1);
        assert_eq!(resolved.pids.0, filter_mode::OFF);
        assert_eq!(resolved.cgroups, (filter_mode::INCLUDE, vec![42]));
    }

    #[test]
    fn listeners_are_found_with_their_process() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0");
        let listeners = proc_listeners();
        let port = v4.local_addr().unwrap().port();
        let (owner, count) = listeners.get(&port).expect("our listener");
        assert_eq!((owner.pid, *count), (std::process::id(), 1));
        let own = cgroup_of(&Process::myself().unwrap());
        assert_eq!(Some(owner.cgroup), own.or(Some(0)));
        if let Ok(v6) = v6 {
            let port = v6.local_addr().unwrap().port();
            assert_eq!(
                listeners.get(&port).map(|(o, _)| o.pid),
                Some(std::process::id())
            );
        }
    }

    #[test]
    fn cgroup_paths_resolve_to_inodes() {
        let root = cgroup_id(&CgroupRef::Path("/".into()));
        if default_cgroup_root().join("cgroup.procs").exists() {
            assert!(root.unwrap() > 0);
            let own = cgroup_of(&Process::myself().unwrap());
            assert!(own.is_some(), "this process has a cgroup v2");
        }
        let err = cgroup_id(&CgroupRef::Path("no/such/cgroup".into()))
            .unwrap_err()
            .to_string();
        let expected = default_cgroup_root().join("no/such/cgroup");
        assert!(err.contains(expected.to_str().unwrap()), "{err}");
    }
}
