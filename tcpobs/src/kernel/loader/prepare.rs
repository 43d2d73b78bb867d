//! Step 1, preparing: privileges, the memlock limit on old kernels, and the kernel layout
//! the programs read through the `OFFSETS` global (`struct sock` members from BTF, classic
//! tracepoint record offsets from tracefs).

use std::io;

use tcpobs_common::Offsets;
use tracing::debug;

use super::LoadError;
use crate::kernel::{
    btf::{Btf, BtfError},
    tracefs::{self, Format, TracefsError},
};

/// `struct sock` member offsets from the kernel's BTF.
pub(super) fn sock_offsets(btf: &Btf) -> Result<Offsets, BtfError> {
    let offset_in = |ty: &str, path: &str, size: u32| -> Result<u16, BtfError> {
        let member = btf.member(ty, path)?;
        if member.size != size {
            return Err(BtfError::NoMember {
                ty: ty.to_owned(),
                member: format!("{path} of {size} bytes (found {} bytes)", member.size),
            });
        }
        u16::try_from(member.offset).map_err(|_| BtfError::Malformed("offset beyond 64 KiB"))
    };
    let offset = |path: &str, size: u32| offset_in("sock", path, size);
    Ok(Offsets {
        sk_family: offset("__sk_common.skc_family", 2)?,
        sk_state: offset("__sk_common.skc_state", 1)?,
        // `struct inet_sock` starts with `struct sock`: same base address.
        inet_sport: offset_in("inet_sock", "inet_sport", 2)?,
        sk_dport: offset("__sk_common.skc_dport", 2)?,
        sk_rcv_saddr: offset("__sk_common.skc_rcv_saddr", 4)?,
        sk_daddr: offset("__sk_common.skc_daddr", 4)?,
        sk_v6_rcv_saddr: offset("__sk_common.skc_v6_rcv_saddr", 16)?,
        sk_v6_daddr: offset("__sk_common.skc_v6_daddr", 16)?,
        sk_protocol: offset("sk_protocol", 2)?,
        sk_err: offset("sk_err", 4)?,
        sk_type: offset("sk_type", 2)?,
        sk_net: offset("__sk_common.skc_net.net", 8)?,
        net_inum: offset_in("net", "ns.inum", 4)?,
        sk_flags: offset("__sk_common.skc_flags", 8)?,
        // Reported at close when present; a kernel without one of them reports it as absent.
        tcp_srtt_us: offset_in("tcp_sock", "srtt_us", 4).unwrap_or(0),
        tcp_mdev_us: offset_in("tcp_sock", "mdev_us", 4).unwrap_or(0),
        tcp_total_retrans: offset_in("tcp_sock", "total_retrans", 4).unwrap_or(0),
        tcp_bytes_acked: offset_in("tcp_sock", "bytes_acked", 8).unwrap_or(0),
        tcp_bytes_received: offset_in("tcp_sock", "bytes_received", 8).unwrap_or(0),
        ..Offsets::UNSET
    })
}

/// Classic tracepoint record offsets from tracefs (mounting it if needed). Returns the
/// tracepoints whose record could not be read (absent from this kernel, or laid out
/// differently), with why: their classic programs must not be attached, the others may.
pub(super) fn tracepoint_offsets(offsets: &mut Offsets) -> Result<Unreadable, TracefsError> {
    tracefs::ensure_mounted()?;
    let root = std::path::Path::new(tracefs::TRACEFS);
    let mut unreadable = Unreadable::new();
    let mut read = |category: &str, name: &str, fields: &mut [(&str, &mut u16)]| {
        let read = Format::read(root, category, name).and_then(|format| {
            for (field, offset) in fields.iter_mut() {
                **offset = format.offset(field)?;
            }
            Ok(())
        });
        if let Err(err) = read {
            debug!("classic tracepoint {category}:{name}: {err}");
            unreadable.insert(format!("{category}:{name}"), err.to_string());
        }
    };
    read(
        "sock",
        "inet_sock_set_state",
        &mut [
            ("skaddr", &mut offsets.tp_state_sk),
            ("oldstate", &mut offsets.tp_state_old),
            ("newstate", &mut offsets.tp_state_new),
        ],
    );
    read(
        "sock",
        "sock_send_length",
        &mut [
            ("sk", &mut offsets.tp_send_sk),
            ("ret", &mut offsets.tp_send_ret),
            ("flags", &mut offsets.tp_send_flags),
        ],
    );
    read(
        "sock",
        "sock_recv_length",
        &mut [
            ("sk", &mut offsets.tp_recv_sk),
            ("ret", &mut offsets.tp_recv_ret),
            ("flags", &mut offsets.tp_recv_flags),
        ],
    );
    read(
        "tcp",
        "tcp_destroy_sock",
        &mut [("skaddr", &mut offsets.tp_destroy_sk)],
    );
    read(
        "tcp",
        "tcp_send_reset",
        &mut [("skaddr", &mut offsets.tp_send_reset_sk)],
    );
    read(
        "tcp",
        "tcp_receive_reset",
        &mut [("skaddr", &mut offsets.tp_recv_reset_sk)],
    );
    read(
        "tcp",
        "tcp_retransmit_skb",
        &mut [("skaddr", &mut offsets.tp_retransmit_sk)],
    );
    Ok(unreadable)
}

/// Classic tracepoints (`category:name`) whose record offsets are unknown, and why.
pub(super) type Unreadable = std::collections::BTreeMap<String, String>;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN covers both).
pub(crate) fn check_privileges() -> Result<(), LoadError> {
    let effective = procfs::process::Process::myself()
        .and_then(|process| process.status())
        .map_or(0, |status| status.capeff);
    let missing = missing_capabilities(effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Privileges {
            missing: missing.join(", "),
        })
    }
}

/// Names of the capabilities tcpobs needs that `effective` (a CapEff bit set) lacks.
pub(crate) fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect()
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg accounting
/// and ignore it. Raising it may be refused (containers); that is not an error.
pub(super) fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "cannot raise RLIMIT_MEMLOCK ({}); fine on kernels with memcg accounting",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert!(missing_capabilities(u64::MAX).is_empty());
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
    }
}
