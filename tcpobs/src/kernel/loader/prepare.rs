//! Step 1, preparing: privileges, the memlock limit on old kernels, and the kernel layout
//! the programs read through the `OFFSETS` global (`struct sock` members from BTF, classic
//! tracepoint record offsets from tracefs).

use std::io;

use tcpobs_common::{DiagOffsets, Offsets};
use tracing::debug;

use super::LoadError;
use crate::kernel::{
    btf::{Btf, BtfError},
    tracefs::{self, Format, TracefsError},
};

/// `struct sock` member offsets from the kernel's BTF.
pub(crate) fn sock_offsets(btf: &Btf) -> Result<Offsets, BtfError> {
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
        diag: diag_offsets(btf),
        ..Offsets::UNSET
    })
}

/// The diagnostics' layout (`DiagOffsets`): every field optional, 0 where this kernel lacks it
/// (the program then reads nothing there, and the daemon reports the value as unknown).
fn diag_offsets(btf: &Btf) -> DiagOffsets {
    let at = |ty: &str, path: &str, size: u32| -> u16 {
        btf.member(ty, path)
            .ok()
            .filter(|member| member.size == size)
            .and_then(|member| u16::try_from(member.offset).ok())
            .unwrap_or(0)
    };
    let tcp = |path: &str, size: u32| at("tcp_sock", path, size);
    let icsk = |path: &str, size: u32| at("inet_connection_sock", path, size);
    // `chrono_type` is a 2-bit field before Linux 6.8 and a byte since: read its byte, then
    // shift and mask. A field across a byte boundary (none so far) is left unread.
    let (chrono_type, chrono_type_shift, chrono_type_mask) = btf
        .member_bits("tcp_sock", "chrono_type")
        .ok()
        .and_then(|bits| {
            let width = if bits.bitfield == 0 { 8 } else { bits.bitfield };
            let shift = bits.bit_offset % 8;
            let byte = u16::try_from(bits.bit_offset / 8).ok()?;
            (shift + width <= 8).then_some((byte, shift as u16, ((1u32 << width) - 1) as u16))
        })
        .unwrap_or((0, 0, 0));
    // `TCP_SKB_CB(skb)->tcp_gso_segs`, i.e. `tcp_skb_pcount()`: in the skb's control buffer.
    let skb_pcount = match (
        btf.member("sk_buff", "cb"),
        btf.member("tcp_skb_cb", "tcp_gso_segs"),
    ) {
        (Ok(cb), Ok(segs)) if segs.size == 2 => u16::try_from(cb.offset + segs.offset).unwrap_or(0),
        _ => 0,
    };
    DiagOffsets {
        chrono_start: tcp("chrono_start", 4),
        chrono_stat: tcp("chrono_stat", 12),
        chrono_type,
        chrono_type_shift,
        chrono_type_mask,
        total_rto: tcp("total_rto", 2),
        snd_wnd: tcp("snd_wnd", 4),
        packets_out: tcp("packets_out", 4),
        write_seq: tcp("write_seq", 4),
        snd_nxt: tcp("snd_nxt", 4),
        snd_una: tcp("snd_una", 4),
        rcv_tstamp: tcp("rcv_tstamp", 4),
        icsk_pending: icsk("icsk_pending", 1),
        icsk_retransmits: icsk("icsk_retransmits", 1),
        icsk_backoff: icsk("icsk_backoff", 1),
        icsk_probes_out: icsk("icsk_probes_out", 1),
        icsk_qlen: icsk("icsk_accept_queue.qlen", 4),
        sk_drops: at("sock", "sk_drops", 4),
        sk_ack_backlog: at("sock", "sk_ack_backlog", 4),
        sk_max_ack_backlog: at("sock", "sk_max_ack_backlog", 4),
        skb_sk: at("sk_buff", "sk", 8),
        skb_head: at("sk_buff", "head", 8),
        skb_network_header: at("sk_buff", "network_header", 2),
        skb_pcount,
        task_files: at("task_struct", "files", 8),
        files_fdt: at("files_struct", "fdt", 8),
        fdt_max_fds: at("fdtable", "max_fds", 4),
        fdt_fd: at("fdtable", "fd", 8),
        file_private_data: at("file", "private_data", 8),
        socket_sk: at("socket", "sk", 8),
        file_inode: at("file", "f_inode", 8),
        inode_mode: at("inode", "i_mode", 2),
        task_tgid: at("task_struct", "tgid", 4),
        task_comm: at("task_struct", "comm", 16),
        ..DiagOffsets::UNSET
    }
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
        &mut [
            ("skaddr", &mut offsets.tp_retransmit_sk),
            ("skbaddr", &mut offsets.diag.tp_retransmit_skb),
        ],
    );
    read(
        "skb",
        "kfree_skb",
        &mut [
            ("skbaddr", &mut offsets.diag.tp_kfree_skb),
            // Linux 5.17: before, the record says nothing of why.
            ("reason", &mut offsets.diag.tp_kfree_reason),
        ],
    );
    read(
        "syscalls",
        "sys_exit_accept4",
        &mut [("ret", &mut offsets.diag.tp_accept4_ret)],
    );
    read(
        "syscalls",
        "sys_exit_accept",
        &mut [("ret", &mut offsets.diag.tp_accept_ret)],
    );
    // Fields newer kernels added, read where present.
    let optional = |category: &str, name: &str, field: &str| {
        Format::read(root, category, name)
            .and_then(|format| format.offset(field))
            .unwrap_or(0)
    };
    offsets.diag.tp_retransmit_err = optional("tcp", "tcp_retransmit_skb", "err");
    offsets.diag.tp_kfree_rx_sk = optional("skb", "kfree_skb", "rx_sk");
    // The data records' `family` and `protocol`: one event class, so the send record's offsets
    // serve both programs, unless the two formats disagree.
    let length = |name: &str| {
        [
            optional("sock", name, "family"),
            optional("sock", name, "protocol"),
        ]
    };
    let send = length("sock_send_length");
    if !send.contains(&0) && send == length("sock_recv_length") {
        [offsets.tp_length_family, offsets.tp_length_protocol] = send;
    }
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
        return Ok(());
    }
    let missing = missing.join(", ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Err(LoadError::RootWithoutCapabilities { missing })
    } else {
        Err(LoadError::Privileges { missing })
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
