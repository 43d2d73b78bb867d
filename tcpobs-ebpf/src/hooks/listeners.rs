//! Listeners older than tcpobs: a BPF iterator over every open file of every process.
//!
//! Listening sockets opened while tcpobs runs are registered at `listen()` by the state family
//! (`crate::maps::remember_listener`). Those opened before are found once at start-up by
//! `find_listeners`, an `iter/task_file` program (Linux 5.8): the kernel calls it for each
//! (task, fd, file) of the processes in tcpobs's PID namespace, whatever their network
//! namespace, and it keeps the TCP sockets in `LISTEN`, with the process that holds them
//! (first found wins: workers share their master's listening socket). It also notes each
//! listening port in `LISTEN_PORTS`, by network namespace, for the `seed_connections` iterator
//! ([`super::seed`]) that runs next.
//!
//! aya-ebpf has no `#[iter]` macro: the section is named by hand, and the context is
//! `struct bpf_iter__task_file { struct bpf_iter_meta *meta; struct task_struct *task; u32 fd;
//! struct file *file; }`, whose words the verifier types from BTF (read as they are, with
//! volatile loads, not through helpers).

use core::ffi::c_void;

use tcpobs_common::{ListenKey, ListenSock, Offsets, tcp_state};

use crate::{
    helpers::{kread, zero},
    maps::{LISTEN_PORTS, LISTEN_SOCKS, offsets},
    socket::{Probe, Sock},
};

const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;
const BPF_NOEXIST: u64 = 1;

/// The iterator context's task and file (`bpf_iter__task_file`, see the module docs); `None`
/// at the end of the walk.
#[inline(always)]
pub(super) fn task_and_file(ctx: *mut c_void) -> Option<(u64, u64)> {
    let ctx = ctx as *const u64;
    // SAFETY: the iterator's context, as laid out above; `file` is the fourth word.
    let (task, file) = unsafe {
        (
            core::ptr::read_volatile(ctx.add(1)),
            core::ptr::read_volatile(ctx.add(3)),
        )
    };
    (task != 0 && file != 0).then_some((task, file))
}

/// The `struct sock` of a socket file, `None` for any other file.
#[inline(always)]
pub(super) fn socket_of(o: &Offsets, file: u64) -> Option<u64> {
    let d = &o.diag;
    if d.file_inode == 0 || d.file_private_data == 0 || d.socket_sk == 0 {
        return None;
    }
    let inode = kread::<u64>(file, d.file_inode)?;
    if kread::<u16>(inode, d.inode_mode).unwrap_or(0) & S_IFMT != S_IFSOCK {
        return None;
    }
    let sk = kread::<u64>(file, d.file_private_data).and_then(|s| kread::<u64>(s, d.socket_sk))?;
    (sk != 0).then_some(sk)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn find_listeners(ctx: *mut c_void) -> i32 {
    if let Some((task, file)) = task_and_file(ctx) {
        visit(offsets(), task, file);
    }
    0
}

#[inline(never)]
fn visit(o: &Offsets, task: u64, file: u64) {
    let d = &o.diag;
    let Some(sk) = socket_of(o, file) else {
        return;
    };
    let sock = Sock::<Probe>::new(sk as *const u8);
    if sock.state(o) != tcp_state::LISTEN || !sock.is_tcp(o) {
        return;
    }
    let mut listener = ListenSock {
        netns: sock.netns(o),
        port: sock.local_port(o),
        found: 1,
        ..ListenSock::default()
    };
    listener.task.pid = kread(task, d.task_tgid).unwrap_or(0);
    zero(&mut listener.task.comm);
    if d.task_comm != 0 {
        listener.task.comm = kread(task, d.task_comm).unwrap_or([0; 16]);
    }
    let port = ListenKey {
        netns: listener.netns,
        port: listener.port,
        _pad: 0,
    };
    let _ = LISTEN_PORTS.insert(port, 1, 0);
    let _ = LISTEN_SOCKS.insert(sk, listener, BPF_NOEXIST);
}
