//! Accept family (optional): when the application's `accept()` took a connection off the
//! listener's queue. With the connection's `ESTABLISHED` time (the moment the kernel queued
//! it), that is how long it waited for the application: the clearest sign of a saturated
//! server. It runs in the accepting process, which also names the socket's owner.
//!
//! Hooks, by strategy:
//! - tracepoint: `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept` (classic only:
//!   system call tracepoints are not raw tracepoints; `CONFIG_FTRACE_SYSCALLS`), record
//!   `__syscall_nr, long ret`. The new descriptor's socket is found through the current task's
//!   file table: `task->files->fdt->fd[ret]->private_data` (a `struct socket *`)`->sk`.
//! - fentry: fexit on `inet_csk_accept()`, whose return value is the accepted socket:
//!   `(struct sock *sk, struct proto_accept_arg *arg)` since Linux 6.10, `(sk, int flags,
//!   int *err, bool kern)` before. It also sees accepts that are not system calls (io_uring,
//!   in-kernel users).
//! - kprobe: a kretprobe on `inet_csk_accept()`.

use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{fexit, kretprobe, tracepoint},
    programs::{FExitContext, RetProbeContext, TracePointContext},
};
use tcpobs_common::{DiagOffsets, role};

use crate::{
    helpers::{kread, now_ns},
    maps::offsets,
    record::{claim, traced_record},
    socket::{Probe, Read, Sock},
};

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn accept4_exit_tp(ctx: TracePointContext) -> u32 {
    let o = &offsets().diag;
    on_accept_exit(&ctx, o, o.tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn accept_exit_tp(ctx: TracePointContext) -> u32 {
    let o = &offsets().diag;
    on_accept_exit(&ctx, o, o.tp_accept_ret);
    0
}

/// `inet_csk_accept(sk, arg)`, Linux 6.10.
#[fexit(function = "inet_csk_accept")]
pub fn accept_fexit(ctx: FExitContext) -> u32 {
    on_accepted(Sock::<Probe>::new(ctx.arg(2)));
    0
}

/// `inet_csk_accept(sk, flags, err, kern)`, before Linux 6.10.
#[fexit(function = "inet_csk_accept")]
pub fn accept_fexit_flags(ctx: FExitContext) -> u32 {
    on_accepted(Sock::<Probe>::new(ctx.arg(4)));
    0
}

#[kretprobe]
pub fn accept_kretprobe(ctx: RetProbeContext) -> u32 {
    on_accepted(Sock::<Probe>::new(ctx.ret()));
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext, o: &DiagOffsets, ret_offset: u16) {
    // SAFETY: the offset comes from this tracepoint's format file.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(usize::from(ret_offset)) }) else {
        return;
    };
    if ret < 0 {
        return;
    }
    if let Some(sk) = fd_socket(o, ret as u32) {
        on_accepted(Sock::<Probe>::new(sk as *const u8));
    }
}

/// The `struct sock *` behind file descriptor `fd` of the current process.
#[inline(always)]
fn fd_socket(o: &DiagOffsets, fd: u32) -> Option<u64> {
    if o.task_files == 0 {
        return None;
    }
    // SAFETY: bpf_get_current_task has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, o.task_files)?;
    let fdt: u64 = kread(files, o.files_fdt)?;
    let max_fds: u32 = kread(fdt, o.fdt_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let table: u64 = kread(fdt, o.fdt_fd)?;
    let file: u64 = kread(table + u64::from(fd) * 8, 0)?;
    let socket: u64 = kread(file, o.file_private_data)?;
    kread(socket, o.socket_sk)
}

#[inline(always)]
fn on_accepted<R: Read>(sk: Sock<R>) {
    if sk.is_null() {
        return;
    }
    let Some(rec) = traced_record(sk) else {
        return;
    };
    if rec.role != role::SERVER || rec.diag.accept_ns != 0 {
        return;
    }
    rec.diag.accept_ns = now_ns();
    claim(rec);
}
