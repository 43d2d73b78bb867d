//! Kernel-side filters: which sockets are traced at all, and (the pid and cgroup filters only)
//! which processes' name resolutions and TLS handshakes ([`current_process_allowed`]).
//!
//! The daemon writes the sets (`PORT_FILTER`, `CIDR4_FILTER`, `CIDR6_FILTER`, `PID_FILTER`,
//! `CGROUP_FILTER`) and the modes (`FILTER[0]`); they can change at runtime. A socket is judged
//! once, when its record starts (connect, accept, or first sighting): an excluded socket gets
//! an `FLAG_IGNORED` marker record, so each of its later events costs one lookup and sends
//! nothing. Sockets already traced or ignored keep that decision when the filters change.
//!
//! Pid and cgroup filters need the socket's owner. A connecting socket's owner is the current
//! task (`connect()` runs in process context); an accepted socket is created in softirq, so
//! its owner is whoever listens on its local port (`LISTENERS`, filled at `listen()` and, for
//! listeners older than tcpobs, by the daemon at start-up). An owner that cannot be known
//! fails an include filter and passes an exclude filter.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
};
use tcpobs_common::{Endpoints, FilterConfig, ListenKey, Listener, Offsets, Owner, filter_mode};

use crate::{
    helpers::current_owner,
    maps::{LISTEN_PORTS, LISTEN_SOCKS, remember_listener},
    socket::{Read, Sock},
};

const AF_INET6: u16 = 10;

/// Which filters apply, one entry.
#[map]
pub static FILTER: Array<FilterConfig> = Array::with_max_entries(1, 0);

#[map]
pub static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[map]
pub static CIDR4_FILTER: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1024, 0);

#[map]
pub static CIDR6_FILTER: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);

#[map]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

#[map]
pub static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// (network namespace, local port) -> the process that listens on it.
#[map]
pub static LISTENERS: HashMap<ListenKey, Listener> = HashMap::with_max_entries(16_384, 0);

#[inline(always)]
fn listen_key<R: Read>(o: &Offsets, sk: Sock<R>, port: u16) -> ListenKey {
    ListenKey {
        netns: sk.netns(o),
        port,
        _pad: 0,
    }
}

/// Who listens on the socket's local port in its network namespace, if known.
#[inline(always)]
pub fn listener<R: Read>(o: &Offsets, sk: Sock<R>, local_port: u16) -> Option<Owner> {
    let key = listen_key(o, sk, local_port);
    // SAFETY: plain data copied out of the map value.
    unsafe { LISTENERS.get(key).map(|listener| listener.owner) }
}

/// Whether the socket's local port is a listening port of its network namespace: registered at
/// `listen()` or seeded from `/proc` (`LISTENERS`), or found by the `find_listeners` iterator
/// (`LISTEN_PORTS`, every namespace). A connection on such a port is the server end.
#[inline(always)]
pub fn is_listening_port<R: Read>(o: &Offsets, sk: Sock<R>, local_port: u16) -> bool {
    let key = listen_key(o, sk, local_port);
    // SAFETY: only the presence of the values is looked at.
    unsafe { LISTENERS.get(key).is_some() || LISTEN_PORTS.get(key).is_some() }
}

/// A socket started listening (in the process that called `listen()`).
#[inline(always)]
pub fn listening<R: Read>(o: &Offsets, sk: Sock<R>) {
    let key = listen_key(o, sk, sk.local_port(o));
    remember_listener(sk.key(), key.netns, key.port);
    if let Some(listener) = LISTENERS.get_ptr_mut(key) {
        // SAFETY: a valid map value; the count is approximate under races, never invalid.
        unsafe { (*listener).count += 1 };
        return;
    }
    let listener = Listener {
        owner: current_owner(),
        count: 1,
        _pad: 0,
    };
    let _ = LISTENERS.insert(key, listener, 0);
}

/// A listening socket closed (or its `listen()` failed).
#[inline(always)]
pub fn not_listening<R: Read>(o: &Offsets, sk: Sock<R>) {
    let _ = LISTEN_SOCKS.remove(sk.key());
    let key = listen_key(o, sk, sk.local_port(o));
    let Some(listener) = LISTENERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: as in `listening`.
    let left = unsafe {
        (*listener).count = (*listener).count.saturating_sub(1);
        (*listener).count
    };
    if left == 0 {
        let _ = LISTENERS.remove(key);
    }
}

#[inline(always)]
fn applies(mode: u8, matched: impl FnOnce() -> bool) -> bool {
    match mode {
        filter_mode::INCLUDE => matched(),
        filter_mode::EXCLUDE => !matched(),
        _ => true,
    }
}

/// Whether a socket with these endpoints and owner is traced. `owner` is asked only if a pid
/// or cgroup filter is on (finding an accepted socket's owner costs a namespace read and a
/// lookup).
#[inline(always)]
pub fn allowed(endpoints: &Endpoints, owner: impl FnOnce() -> Option<Owner>) -> bool {
    let Some(config) = FILTER.get(0) else {
        return true;
    };
    let FilterConfig {
        ports,
        cidrs,
        pids,
        cgroups,
        ..
    } = *config;
    if ports | cidrs | pids | cgroups == filter_mode::OFF {
        return true;
    }
    applies(ports, || {
        PORT_FILTER.get_ptr(endpoints.lport).is_some()
            || PORT_FILTER.get_ptr(endpoints.rport).is_some()
    }) && applies(cidrs, || cidr_match(endpoints))
        && (pids | cgroups == filter_mode::OFF || owner_allowed(pids, cgroups, owner()))
}

/// Whether `owner` passes the pid and cgroup filters in these modes (an unknown owner fails
/// an include filter and passes an exclude filter).
#[inline(always)]
fn owner_allowed(pids: u8, cgroups: u8, owner: Option<Owner>) -> bool {
    applies(pids, || {
        owner.is_some_and(|owner| PID_FILTER.get_ptr(owner.pid).is_some())
    }) && applies(cgroups, || {
        owner.is_some_and(|owner| CGROUP_FILTER.get_ptr(owner.cgroup).is_some())
    })
}

/// Whether the current process passes the pid and cgroup filters, for what no traced socket
/// carries: a name resolution, a TLS handshake on no traced socket (the libcall families,
/// judged as they are reported). The port and CIDR filters cannot apply to them: a
/// resolution comes before any connection.
#[inline(always)]
pub fn current_process_allowed() -> bool {
    let Some(config) = FILTER.get(0) else {
        return true;
    };
    let FilterConfig { pids, cgroups, .. } = *config;
    pids | cgroups == filter_mode::OFF || owner_allowed(pids, cgroups, Some(current_owner()))
}

#[inline(always)]
fn cidr_match(endpoints: &Endpoints) -> bool {
    let v4 = |addr: &[u8; 16], at: usize| {
        let mut ip = [0u8; 4];
        ip.copy_from_slice(&addr[at..at + 4]);
        CIDR4_FILTER.get(Key::new(32, ip)).is_some()
    };
    if endpoints.family != AF_INET6 {
        return v4(&endpoints.raddr, 0) || v4(&endpoints.laddr, 0);
    }
    let mapped = |addr: &[u8; 16]| addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff];
    let v6 = |addr: &[u8; 16]| {
        if mapped(addr) {
            v4(addr, 12)
        } else {
            CIDR6_FILTER.get(Key::new(128, *addr)).is_some()
        }
    };
    v6(&endpoints.raddr) || v6(&endpoints.laddr)
}
