//! Reading `struct sock` fields at offsets resolved from BTF by the daemon.
//!
//! All reads go through `bpf_probe_read_kernel`, which works from both `tp_btf` and classic
//! tracepoint programs and never faults, whatever the pointer.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use tcpobs_common::{DiagOffsets, DiagStats, Endpoints, Offsets, TcpStats, diag::have, tcp_state};

use crate::helpers::zero;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;

/// A `struct sock *`.
#[derive(Clone, Copy)]
pub struct Sock(pub *const u8);

impl Sock {
    /// The socket's address: its identity in the `SOCKETS` table.
    #[inline(always)]
    pub fn key(self) -> u64 {
        self.0 as u64
    }

    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.0.is_null()
    }

    #[inline(always)]
    fn read<T>(self, offset: u16) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
        unsafe { bpf_probe_read_kernel(self.0.add(usize::from(offset)).cast::<T>()).ok() }
    }

    #[inline(always)]
    pub fn state(self, o: &Offsets) -> u8 {
        self.read::<u8>(o.sk_state).unwrap_or(0)
    }

    /// An IPv4 or IPv6 TCP stream socket (a raw socket can have `IPPROTO_TCP` too). Only
    /// valid on full sockets (not request or time-wait sockets).
    #[inline(always)]
    pub fn is_tcp(self, o: &Offsets) -> bool {
        let family = self.read::<u16>(o.sk_family).unwrap_or(0);
        (family == AF_INET || family == AF_INET6)
            && self.read::<u16>(o.sk_protocol) == Some(IPPROTO_TCP)
            && self.read::<u16>(o.sk_type) == Some(SOCK_STREAM)
    }

    /// The kernel's TCP counters (`struct tcp_sock`), where the loader found their offsets.
    #[inline(always)]
    pub fn tcp_stats(self, o: &Offsets, stats: &mut TcpStats) {
        if o.tcp_srtt_us == 0 {
            return;
        }
        let field = |offset: u16| if offset == 0 { None } else { Some(offset) };
        stats.srtt_us8 = self.read::<u32>(o.tcp_srtt_us).unwrap_or(0);
        stats.mdev_us4 = field(o.tcp_mdev_us)
            .and_then(|at| self.read::<u32>(at))
            .unwrap_or(0);
        stats.total_retrans = field(o.tcp_total_retrans)
            .and_then(|at| self.read::<u32>(at))
            .unwrap_or(0);
        stats.bytes_acked = field(o.tcp_bytes_acked)
            .and_then(|at| self.read::<u64>(at))
            .unwrap_or(0);
        stats.bytes_received = field(o.tcp_bytes_received)
            .and_then(|at| self.read::<u64>(at))
            .unwrap_or(0);
        stats.valid = 1;
    }

    /// The field at `offset`, or `T::default()` where the kernel lacks it (offset 0) or the
    /// read fails.
    #[inline(always)]
    pub fn field<T: Default>(self, offset: u16) -> T {
        if offset == 0 {
            return T::default();
        }
        self.read::<T>(offset).unwrap_or_default()
    }

    /// The chrono counters and the RTO count, as `tcp_info` would report them now (at close):
    /// see `DiagStats`.
    #[inline(always)]
    pub fn diag_at_close(self, o: &DiagOffsets, diag: &mut DiagStats) {
        if o.chrono_stat != 0 && o.chrono_start != 0 && o.chrono_type != 0 {
            diag.chrono_j = self.read::<[u32; 3]>(o.chrono_stat).unwrap_or([0; 3]);
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

    /// The inode number of the socket's network namespace (0 if unreadable).
    #[inline(always)]
    pub fn netns(self, o: &Offsets) -> u32 {
        let Some(net) = self.read::<*const u8>(o.sk_net) else {
            return 0;
        };
        // SAFETY: as in `read`.
        unsafe { bpf_probe_read_kernel(net.add(usize::from(o.net_inum)).cast::<u32>()) }
            .unwrap_or(0)
    }

    /// `sk_err`, an errno (0 when there is none).
    #[inline(always)]
    pub fn err(self, o: &Offsets) -> u32 {
        self.read::<i32>(o.sk_err).unwrap_or(0).unsigned_abs()
    }

    /// (local port, remote port), host byte order.
    #[inline(always)]
    pub fn ports(self, o: &Offsets) -> (u16, u16) {
        let local = u16::from_be(self.read::<u16>(o.inet_sport).unwrap_or(0));
        let remote = u16::from_be(self.read::<u16>(o.sk_dport).unwrap_or(0));
        (local, remote)
    }

    /// Reads addresses and ports straight into `endpoints` (no copy on the stack).
    #[inline(always)]
    pub fn read_endpoints(self, o: &Offsets, endpoints: &mut Endpoints) {
        let family = self.read::<u16>(o.sk_family).unwrap_or(0);
        (endpoints.lport, endpoints.rport) = self.ports(o);
        endpoints.family = family;
        let (local, remote, len) = if family == AF_INET6 {
            (o.sk_v6_rcv_saddr, o.sk_v6_daddr, 16)
        } else {
            (o.sk_rcv_saddr, o.sk_daddr, 4)
        };
        for (offset, addr) in [
            (local, &mut endpoints.laddr),
            (remote, &mut endpoints.raddr),
        ] {
            zero(addr);
            // SAFETY: as in `read`; the destination is a 16-byte array.
            let _ = unsafe {
                bpf_probe_read_kernel_buf(self.0.add(usize::from(offset)), &mut addr[..len])
            };
        }
    }
}

/// States in which a socket carries a connection worth adopting when first seen mid-life.
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
