//! Small wrappers over BPF helpers, used by every layer. A leaf: nothing here imports from
//! this crate.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns},
};
use tcpobs_common::{Owner, Task};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Writes the current process into `task`, in process context (connect, send/recv, close).
///
/// In place, through the raw helper: building a `Task` value (or aya's `[0; 16]` comm buffer)
/// would zero it first with a call to a byte-at-a-time `memset` subprogram.
#[inline(always)]
pub fn current_task(task: &mut Task) {
    let pid_tgid = bpf_get_current_pid_tgid();
    task.pid = (pid_tgid >> 32) as u32;
    task.tid = pid_tgid as u32;
    // SAFETY: `comm` is 16 writable bytes; the helper NUL-pads it (or zeroes it on error).
    unsafe { bpf_get_current_comm(task.comm.as_mut_ptr().cast(), task.comm.len() as u32) };
    // SAFETY: bpf_get_current_cgroup_id has no preconditions.
    task.cgroup = unsafe { bpf_get_current_cgroup_id() };
}

/// The current task as an owner (process context only).
#[inline(always)]
pub fn current_owner() -> Owner {
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        // SAFETY: bpf_get_current_cgroup_id has no preconditions.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Zeroes padding bytes with single-byte stores, for the same reason as [`current_task`].
#[inline(always)]
pub fn zero<const N: usize>(bytes: &mut [u8; N]) {
    for byte in bytes.iter_mut() {
        // SAFETY: a valid, exclusive reference.
        unsafe { core::ptr::write_volatile(byte, 0) };
    }
}

/// Reads a `T` at `base + offset` in kernel memory (`None` if `base` is null or the read
/// fails). Unlike `Sock::field`, offset 0 is a real offset here.
#[inline(always)]
pub fn kread<T>(base: u64, offset: u16) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T).ok() }
}
