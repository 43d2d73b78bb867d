//! DNS family: name resolution through the C library.
//!
//! Hooks: a uprobe and a uretprobe on `int getaddrinfo(const char *node, const char *service,
//! const struct addrinfo *hints, struct addrinfo **res)` in glibc (`libc.so.6`) and musl
//! (`ld-musl-<arch>.so.1`), on the host and in containers (the daemon finds the files).
//! `getaddrinfo` is how `curl`, Python's `socket` and most dynamically linked programs resolve
//! names. Programs that resolve on their own (Go's pure resolver, c-ares, statically linked
//! binaries) are not seen.
//!
//! The entry saves `node` and `res` by thread; the return reads the host name (bounded) and
//! walks the answer's `struct addrinfo` list (bounded) for the first TCP addresses. Nothing
//! else of the process's memory is read.
//!
//! `struct addrinfo` is user-space ABI, the same in glibc and musl on every 64-bit Linux
//! architecture: `ai_flags`, `ai_family`, `ai_socktype`, `ai_protocol` (4 × int),
//! `ai_addrlen` (socklen_t, padded to 8), then `ai_addr`, `ai_canonname`, `ai_next`
//! (pointers). `sockaddr_in` holds its address at offset 4, `sockaddr_in6` at offset 8.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tcpobs_common::{
    DnsCall, DnsEvent, EventHeader, kind,
    libcalls::{DNS_HOST_LEN, DNS_MAX_ADDRS, DNS_MAX_ENTRIES, dns_flag},
};

use crate::{
    filter::current_process_allowed,
    helpers::{current_task, now_ns},
    record::emit,
};

/// Calls in progress, by thread. LRU, so that calls whose return was never seen (the thread
/// died, or the daemon attached mid-call) cannot fill it.
#[map]
static DNS_CALLS: LruHashMap<u64, DnsCall> = LruHashMap::with_max_entries(8192, 0);

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const SOCK_STREAM: i32 = 1;

/// `struct addrinfo` (LP64).
#[repr(C)]
#[derive(Clone, Copy)]
struct AddrInfo {
    flags: i32,
    family: i32,
    socktype: i32,
    protocol: i32,
    addrlen: u32,
    _pad: u32,
    addr: u64,
    canonname: u64,
    next: u64,
}

/// `getaddrinfo` entry: saves `node` and `res` for the return.
#[uprobe]
pub fn getaddrinfo_entry(ctx: ProbeContext) -> u32 {
    let (Some(node), Some(res)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) else {
        return 0;
    };
    let call = DnsCall {
        node,
        res,
        start_ns: now_ns(),
    };
    let _ = DNS_CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
    0
}

/// `getaddrinfo` return: the result, the name and the answer's first addresses.
#[uretprobe]
pub fn getaddrinfo_return(ctx: RetProbeContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map value.
    let Some(call) = (unsafe { DNS_CALLS.get(thread) }).copied() else {
        return 0;
    };
    let _ = DNS_CALLS.remove(thread);
    // Judged as it is reported, so that a filter changed during the call applies.
    if !current_process_allowed() {
        return 0;
    }
    let result: i32 = ctx.ret();
    emit_dns(&call, result);
    0
}

#[inline(never)]
fn emit_dns(call: &DnsCall, result: i32) {
    let now = now_ns();
    // SAFETY: the pointer is a reserved ring buffer slot of a `DnsEvent`; every field the
    // daemon reads is written before submit (`host` and `addrs` up to their counts).
    let _ = emit(|event: *mut DnsEvent| unsafe {
        (*event).hdr = EventHeader {
            kind: kind::DNS,
            _pad: 0,
            ts_ns: now,
            sock: 0,
            start_ns: 0,
        };
        current_task(&mut (*event).task);
        (*event).call_ns = call.start_ns;
        (*event).result = result;
        (*event).flags = 0;
        (*event).host_len = 0;
        (*event).addr_count = 0;
        (*event).families = [0; DNS_MAX_ADDRS];
        read_host(call.node, &mut *event);
        if result == 0 {
            read_answer(call.res, &mut *event);
        }
    });
}

/// The host name, at most `DNS_HOST_LEN - 1` bytes.
#[inline(always)]
fn read_host(node: u64, event: &mut DnsEvent) {
    if node == 0 {
        event.flags |= dns_flag::NO_HOST;
        return;
    }
    // SAFETY: the helper checks the user address and stops at the buffer's end.
    match unsafe {
        aya_ebpf::helpers::bpf_probe_read_user_str_bytes(node as *const u8, &mut event.host)
    } {
        Ok(host) => {
            let len = host.len();
            event.host_len = len as u16;
            if len >= DNS_HOST_LEN - 1 {
                event.flags |= dns_flag::HOST_TRUNCATED;
            }
        }
        Err(_) => event.flags |= dns_flag::NO_HOST,
    }
}

/// The first TCP addresses of the answer `*res`.
#[inline(always)]
fn read_answer(res: u64, event: &mut DnsEvent) {
    // SAFETY (all reads): bpf_probe_read_user checks the address and fails instead of
    // faulting; the answer belongs to the calling thread, which is blocked in this return.
    let Ok(mut next) = (unsafe { bpf_probe_read_user(res as *const u64) }) else {
        return;
    };
    let mut count = 0usize;
    for _ in 0..DNS_MAX_ENTRIES {
        if next == 0 {
            break;
        }
        let Ok(entry) = (unsafe { bpf_probe_read_user(next as *const AddrInfo) }) else {
            break;
        };
        next = entry.next;
        if entry.socktype != 0 && entry.socktype != SOCK_STREAM {
            continue;
        }
        let (offset, len) = match entry.family {
            AF_INET => (4u64, 4usize),
            AF_INET6 => (8u64, 16usize),
            _ => continue,
        };
        if count >= DNS_MAX_ADDRS {
            event.flags |= dns_flag::MORE_ADDRS;
            break;
        }
        let (Some(addr), Some(family)) =
            (event.addrs.get_mut(count), event.families.get_mut(count))
        else {
            break;
        };
        let src = (entry.addr + offset) as *const u8;
        if unsafe { bpf_probe_read_user_buf(src, &mut addr[..len]) }.is_err() {
            continue;
        }
        *family = entry.family as u16;
        count += 1;
    }
    event.addr_count = count as u8;
}
