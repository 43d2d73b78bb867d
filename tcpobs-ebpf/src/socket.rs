//! Reading `struct sock` fields at offsets resolved from BTF by the daemon.
//!
//! Two ways, chosen per program at compile time ([`Sock`] is generic over them, so each
//! program gets the code for its own way and pays nothing for the choice):
//!
//! - [`Direct`], for `tp_btf` and fentry/fexit programs, whose socket argument the verifier
//!   knows as a typed pointer (`struct sock *`): plain loads (~1 ns each, against ~10 ns for
//!   the helper). The offsets come from the frozen read-only `OFFSETS` global, which the
//!   verifier reads as constants, so every load is checked against the kernel's BTF. Loads are
//!   allowed within `struct sock` only; `inet_sock` and `tcp_sock` fields (the local port, the
//!   TCP counters) are read through the `tcp_sock *` that `bpf_skc_to_tcp_sock` returns (NULL
//!   for anything but a full TCP socket). IPv6 addresses and the network namespace keep the
//!   helper: a 16-byte address is a union of arrays, and the verifier refuses word loads into
//!   a byte array.
//! - [`Probe`], for classic tracepoints and kprobes, whose socket is a plain number to the
//!   verifier: every read goes through `bpf_probe_read_kernel`, which never faults.

use core::{ffi::c_void, marker::PhantomData};

use aya_ebpf::helpers::{
    bpf_jiffies64, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated::bpf_skc_to_tcp_sock,
};
use tcpobs_common::{DiagOffsets, DiagStats, Endpoints, Offsets, TcpStats, diag::have, tcp_state};

use crate::helpers::zero;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;
/// `SOCK_DEAD`, bit 0 of `sk_flags` (`enum sock_flags`): the socket is orphaned, no file
/// refers to it any more.
const SOCK_DEAD: u64 = 1;

/// An IPv4 or IPv6 socket of `IPPROTO_TCP` (`protocol` is read only for those families): what
/// a tracepoint's record can say of a socket without reading it.
#[inline(always)]
pub fn inet_tcp(family: u16, protocol: impl FnOnce() -> u16) -> bool {
    (family == AF_INET || family == AF_INET6) && protocol() == IPPROTO_TCP
}

/// How a program reads kernel memory at a socket.
pub trait Read: Copy {
    /// A `T` at `base + offset`; zero if it cannot be read.
    fn at<T: Copy + Default>(base: *const u8, offset: u16) -> T;

    /// Where `inet_sock` and `tcp_sock` fields are read from: the socket itself, or null.
    fn tcp_base(sk: *const u8) -> *const u8;
}

/// Loads through the typed pointer (`tp_btf`, fentry/fexit).
#[derive(Clone, Copy)]
pub struct Direct;

/// `bpf_probe_read_kernel` (classic tracepoints, kprobes).
#[derive(Clone, Copy)]
pub struct Probe;

impl Read for Direct {
    #[inline(always)]
    fn at<T: Copy + Default>(base: *const u8, offset: u16) -> T {
        // SAFETY: `base` is the program's typed socket pointer (or one derived from it by a
        // helper), so the verifier checks this load against BTF and turns it into a
        // fault-handling load. Volatile, so that the compiler neither merges nor widens loads
        // (the verifier checks each against its member's bounds).
        unsafe { core::ptr::read_volatile(base.add(usize::from(offset)).cast::<T>()) }
    }

    #[inline(always)]
    fn tcp_base(sk: *const u8) -> *const u8 {
        // SAFETY: the helper takes any socket pointer and returns NULL unless it is a full TCP
        // socket.
        unsafe { bpf_skc_to_tcp_sock(sk.cast_mut().cast::<c_void>()) }.cast::<u8>()
    }
}

impl Read for Probe {
    #[inline(always)]
    fn at<T: Copy + Default>(base: *const u8, offset: u16) -> T {
        // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
        unsafe { bpf_probe_read_kernel(base.add(usize::from(offset)).cast::<T>()) }
            .unwrap_or_default()
    }

    #[inline(always)]
    fn tcp_base(sk: *const u8) -> *const u8 {
        sk
    }
}

/// A `struct sock *`, read the program's way.
pub struct Sock<R> {
    ptr: *const u8,
    read: PhantomData<R>,
}

impl<R> Clone for Sock<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Sock<R> {}

impl<R: Read> Sock<R> {
    #[inline(always)]
    pub fn new(ptr: *const u8) -> Self {
        Self {
            ptr,
            read: PhantomData,
        }
    }

    /// The socket's address: its identity in the `SOCKETS` table.
    #[inline(always)]
    pub fn key(self) -> u64 {
        self.ptr as u64
    }

    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.ptr.is_null()
    }

    #[inline(always)]
    fn read<T: Copy + Default>(self, offset: u16) -> T {
        R::at(self.ptr, offset)
    }

    #[inline(always)]
    pub fn state(self, o: &Offsets) -> u8 {
        self.read::<u8>(o.sk_state)
    }

    /// The application has let go of the socket (`SOCK_DEAD`): when such a socket reaches
    /// `CLOSE`, `tcp:tcp_destroy_sock` follows in the same call.
    #[inline(always)]
    pub fn is_orphan(self, o: &Offsets) -> bool {
        self.read::<u64>(o.sk_flags) & SOCK_DEAD != 0
    }

    /// An IPv4 or IPv6 TCP stream socket (a raw socket can have `IPPROTO_TCP` too). Only
    /// valid on full sockets (not request or time-wait sockets).
    #[inline(always)]
    pub fn is_tcp(self, o: &Offsets) -> bool {
        inet_tcp(self.read::<u16>(o.sk_family), || {
            self.read::<u16>(o.sk_protocol)
        }) && self.read::<u16>(o.sk_type) == SOCK_STREAM
    }

    /// The kernel's TCP counters (`struct tcp_sock`), where the loader found their offsets.
    #[inline(always)]
    pub fn tcp_stats(self, o: &Offsets, stats: &mut TcpStats) {
        if o.tcp_srtt_us == 0 {
            return;
        }
        let tcp = R::tcp_base(self.ptr);
        if tcp.is_null() {
            return;
        }
        let field = |offset: u16| offset != 0;
        stats.srtt_us8 = R::at::<u32>(tcp, o.tcp_srtt_us);
        stats.mdev_us4 = if field(o.tcp_mdev_us) {
            R::at::<u32>(tcp, o.tcp_mdev_us)
        } else {
            0
        };
        stats.total_retrans = if field(o.tcp_total_retrans) {
            R::at::<u32>(tcp, o.tcp_total_retrans)
        } else {
            0
        };
        stats.bytes_acked = if field(o.tcp_bytes_acked) {
            R::at::<u64>(tcp, o.tcp_bytes_acked)
        } else {
            0
        };
        stats.bytes_received = if field(o.tcp_bytes_received) {
            R::at::<u64>(tcp, o.tcp_bytes_received)
        } else {
            0
        };
        stats.valid = 1;
    }

    /// The field at `offset`, or `T::default()` where the kernel lacks it (offset 0) or the
    /// read fails. Always through the helper, whatever the program's way: the diagnostics read
    /// `tcp_sock` and `inet_connection_sock` fields (bitfields among them) once per sweep or
    /// close, where a direct load would need the verifier's approval field by field.
    #[inline(always)]
    pub fn field<T: Copy + Default>(self, offset: u16) -> T {
        if offset == 0 {
            return T::default();
        }
        Probe::at(self.ptr, offset)
    }

    /// The chrono counters and the RTO count, as `tcp_info` would report them now (at close):
    /// see `DiagStats`.
    #[inline(always)]
    pub fn diag_at_close(self, o: &DiagOffsets, diag: &mut DiagStats) {
        if o.chrono_stat != 0 && o.chrono_start != 0 && o.chrono_type != 0 {
            diag.chrono_j = self.field::<[u32; 3]>(o.chrono_stat);
            let raw: u8 = self.field(o.chrono_type);
            let running = (raw >> (o.chrono_type_shift & 7)) & (o.chrono_type_mask as u8);
            // SAFETY: bpf_jiffies64 has no preconditions.
            let now = unsafe { bpf_jiffies64() } as u32;
            let elapsed = now.wrapping_sub(self.field::<u32>(o.chrono_start));
            match running {
                1 => diag.chrono_j[0] = diag.chrono_j[0].wrapping_add(elapsed),
                2 => diag.chrono_j[1] = diag.chrono_j[1].wrapping_add(elapsed),
                3 => diag.chrono_j[2] = diag.chrono_j[2].wrapping_add(elapsed),
                _ => {}
            }
            diag.have |= have::CHRONO;
        }
        if o.total_rto != 0 {
            diag.total_rto = u32::from(self.field::<u16>(o.total_rto));
            diag.have |= have::RTO;
        }
    }

    /// The inode number of the socket's network namespace (0 if unreadable). Through the
    /// helper on every strategy (a pointer chase into `struct net`).
    #[inline(always)]
    pub fn netns(self, o: &Offsets) -> u32 {
        let net = Probe::at::<u64>(self.ptr, o.sk_net) as *const u8;
        if net.is_null() {
            return 0;
        }
        Probe::at::<u32>(net, o.net_inum)
    }

    /// `sk_err`, an errno (0 when there is none).
    #[inline(always)]
    pub fn err(self, o: &Offsets) -> u32 {
        self.read::<i32>(o.sk_err).unsigned_abs()
    }

    /// The local port, host byte order (`inet_sport`, still set at `CLOSE`, unlike
    /// `skc_num`).
    #[inline(always)]
    pub fn local_port(self, o: &Offsets) -> u16 {
        let base = R::tcp_base(self.ptr);
        if base.is_null() {
            return 0;
        }
        u16::from_be(R::at::<u16>(base, o.inet_sport))
    }

    /// The remote port (host byte order).
    #[inline(always)]
    pub fn remote_port(self, o: &Offsets) -> u16 {
        u16::from_be(self.read::<u16>(o.sk_dport))
    }

    /// Reads addresses and ports straight into `endpoints` (no copy on the stack).
    #[inline(always)]
    pub fn read_endpoints(self, o: &Offsets, endpoints: &mut Endpoints) {
        let family = self.read::<u16>(o.sk_family);
        endpoints.lport = self.local_port(o);
        endpoints.rport = self.remote_port(o);
        endpoints.family = family;
        zero(&mut endpoints.laddr);
        zero(&mut endpoints.raddr);
        if family == AF_INET6 {
            for (offset, addr) in [
                (o.sk_v6_rcv_saddr, &mut endpoints.laddr),
                (o.sk_v6_daddr, &mut endpoints.raddr),
            ] {
                // SAFETY: bpf_probe_read_kernel_buf validates the source and fails instead of
                // faulting; the destination is a 16-byte array.
                let _ = unsafe {
                    bpf_probe_read_kernel_buf(self.ptr.add(usize::from(offset)), &mut addr[..])
                };
            }
        } else {
            let local = self.read::<u32>(o.sk_rcv_saddr).to_ne_bytes();
            let remote = self.read::<u32>(o.sk_daddr).to_ne_bytes();
            endpoints.laddr[..4].copy_from_slice(&local);
            endpoints.raddr[..4].copy_from_slice(&remote);
        }
    }
}

/// States in which a socket carries a connection: worth adopting when first seen mid-life, and
/// the sampler's test of whether a record's socket is still open.
#[inline(always)]
pub fn is_connected_state(state: u8) -> bool {
    matches!(
        state,
        tcp_state::ESTABLISHED
            | tcp_state::SYN_SENT
            | tcp_state::SYN_RECV
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSE_WAIT
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING
    )
}
