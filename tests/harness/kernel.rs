//! The daemon's kernel socket table, opened through the daemon's own file descriptor
//! (`pidfd_getfd`, Linux 5.6), for tests that put it in states only a kernel fault makes.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::maps::{HashMap, Map, MapData};
use tcpobs_common::{SockRecord, names::SOCKETS_MAP};

/// The socket table of a running daemon: socket address (or, for a spilled close, generation)
/// to record.
pub struct SocketTable(HashMap<MapData, u64, SockRecord>);

impl SocketTable {
    /// The table of the daemon `pid`.
    pub fn of(pid: u32) -> Self {
        // SAFETY: plain system calls; each returned descriptor is owned once.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor just returned to this process.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).expect("the daemon's descriptors");
        for entry in fds.map_while(Result::ok) {
            let is_map = fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map");
            let fd = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok());
            let (true, Some(fd)) = (is_map, fd) else {
                continue;
            };
            // SAFETY: as above.
            let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            if copy < 0 {
                continue;
            }
            // SAFETY: as above.
            let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
            let Ok(data) = MapData::from_fd(copy) else {
                continue;
            };
            let named = data
                .info()
                .is_ok_and(|info| info.name_as_str() == Some(SOCKETS_MAP));
            if named {
                let map = Map::from_map_data(data).expect("a map type aya knows");
                return Self(HashMap::try_from(map).expect("the socket table is a hash map"));
            }
        }
        panic!("no {SOCKETS_MAP} map among the descriptors of process {pid}");
    }

    /// Every record, by key.
    pub fn entries(&self) -> Vec<(u64, SockRecord)> {
        self.0.iter().map_while(Result::ok).collect()
    }

    /// The record under `key`, if any.
    pub fn get(&self, key: u64) -> Option<SockRecord> {
        self.0.get(&key, 0).ok()
    }

    /// Writes `record` under `key`.
    pub fn set(&mut self, key: u64, record: SockRecord) {
        self.0
            .insert(key, record, 0)
            .expect("writing the socket table");
    }
}
