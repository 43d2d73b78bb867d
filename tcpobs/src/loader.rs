//! Loading and attaching the kernel programs.
//!
//! Start-up happens in three steps, each with an error a user can act on:
//! 1. **Prepare**: check privileges, resolve kernel layout (`struct sock` offsets from BTF,
//!    classic tracepoint record offsets from tracefs) into the `OFFSETS` global.
//! 2. **Load** the object with the table and ring buffer sizes chosen on the command line,
//!    and write the kernel-side filter.
//! 3. **Attach** every hook, choosing per hook the first strategy that loads and attaches:
//!    `tp_btf` (raw arguments, cheapest), then the classic tracepoint. The choice is logged and
//!    kept in [`Attached`] for the metrics.

use std::{fmt, io, path::PathBuf};

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader, Endianness,
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use tcpobs_common::{
    Offsets,
    names::{self, HOOKS, Hook},
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    btf::{Btf, BtfError},
    kfilter::{KernelFilters, Resolved},
    runtime::Filters,
    tracefs::{self, Format, TracefsError},
};

/// The compiled kernel programs, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpobs"));

/// How a hook is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// BTF-enabled raw tracepoint (`tp_btf`).
    TpBtf,
    /// Classic tracepoint through perf events and tracefs.
    Tracepoint,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tracepoint flavours the loader may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TracepointMode {
    /// `tp_btf` where it loads, else the classic tracepoint.
    #[default]
    Auto,
    /// `tp_btf` only.
    Btf,
    /// Classic tracepoints only.
    Classic,
}

/// What the loader needs to know.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Kernel BTF, normally `/sys/kernel/btf/vmlinux`.
    pub btf_path: PathBuf,
    pub tracepoints: TracepointMode,
    /// Capacity of the kernel socket table.
    pub max_sockets: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ringbuf_bytes: u32,
    /// Kernel-side filters to start with.
    pub filters: Filters,
}

/// One attached hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub hook: Hook,
    pub strategy: Strategy,
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "tcpobs needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {missing}); \
         run it with sudo"
    )]
    Privileges { missing: String },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("cannot parse kernel BTF at {path} for tp_btf programs: {reason}")]
    AyaBtf { path: String, reason: String },
    #[error("the kernel refused to load tcpobs's programs: {0}")]
    Load(String),
    #[error(
        "cannot attach to tracepoint {category}:{name} (needs Linux {since} or newer): \
         {reasons}"
    )]
    Attach {
        category: &'static str,
        name: &'static str,
        since: &'static str,
        reasons: String,
    },
    #[error("cannot set up kernel map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("cannot set up the kernel filters: {0}")]
    Filter(String),
}

/// The loaded object and how each hook is attached. Dropping it detaches everything.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub attached: Vec<Attached>,
    /// The filter maps, taken out of `ebpf` (until someone takes them over).
    pub filters: Option<KernelFilters>,
}

/// Loads, configures and attaches everything.
pub fn load(options: &LoadOptions) -> Result<Loaded, LoadError> {
    check_privileges()?;
    raise_memlock_limit();
    let btf = Btf::from_file(&options.btf_path)?;
    let mut offsets = sock_offsets(&btf)?;
    offsets.wakeup_bytes = u64::from(options.ringbuf_bytes / 4);
    let classic = if options.tracepoints == TracepointMode::Btf {
        Err("not allowed by --tracepoints btf".to_owned())
    } else {
        tracepoint_offsets(&mut offsets).map_err(|err| err.to_string())
    };
    let aya_btf = AyaBtf::parse_file(&options.btf_path, Endianness::default()).map_err(|err| {
        LoadError::AyaBtf {
            path: options.btf_path.display().to_string(),
            reason: err.to_string(),
        }
    })?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global(names::OFFSETS_GLOBAL, &offsets, true)
        .map_max_entries(names::EVENTS_MAP, options.ringbuf_bytes)
        .map_max_entries(names::SOCKETS_MAP, options.max_sockets)
        .load(OBJECT)
        .map_err(|err| LoadError::Load(error_chain(&err)))?;
    let resolved = Resolved::new(&options.filters).map_err(LoadError::Filter)?;
    let mut filters = KernelFilters::take(&mut ebpf)?;
    filters.seed_listeners();
    filters.apply(&resolved).map_err(LoadError::Filter)?;
    let mut attached = Vec::with_capacity(HOOKS.len());
    for hook in HOOKS {
        let strategy = attach(&mut ebpf, &aya_btf, hook, options.tracepoints, &classic)?;
        info!(
            family = hook.family,
            tracepoint = format!("{}:{}", hook.category, hook.name),
            %strategy,
            "attached"
        );
        attached.push(Attached { hook, strategy });
    }
    Ok(Loaded {
        ebpf,
        attached,
        filters: Some(filters),
    })
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    hook: Hook,
    mode: TracepointMode,
    classic: &Result<(), String>,
) -> Result<Strategy, LoadError> {
    let mut reasons = Vec::new();
    if mode != TracepointMode::Classic {
        match attach_btf(ebpf, btf, hook) {
            Ok(()) => return Ok(Strategy::TpBtf),
            Err(err) => {
                debug!(hook = hook.name, "tp_btf failed: {err}");
                reasons.push(format!("tp_btf: {}", short(&err)));
            }
        }
    }
    if mode != TracepointMode::Btf {
        match classic {
            Ok(()) => match attach_classic(ebpf, hook) {
                Ok(()) => {
                    if mode == TracepointMode::Auto {
                        warn!(
                            hook = hook.name,
                            "tp_btf unavailable, using the classic tracepoint"
                        );
                    }
                    return Ok(Strategy::Tracepoint);
                }
                Err(err) => {
                    debug!(hook = hook.name, "tracepoint failed: {err}");
                    reasons.push(format!("tracepoint: {}", short(&err)));
                }
            },
            Err(reason) => reasons.push(format!("tracepoint: {reason}")),
        }
    }
    Err(LoadError::Attach {
        category: hook.category,
        name: hook.name,
        since: hook.since,
        reasons: reasons.join("; "),
    })
}

fn attach_btf(ebpf: &mut Ebpf, btf: &AyaBtf, hook: Hook) -> Result<(), String> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(hook.btf_program)
        .ok_or("program missing from the object")?
        .try_into()
        .map_err(|err: ProgramError| error_chain(&err))?;
    program
        .load(hook.name, btf)
        .map_err(|err| error_chain(&err))?;
    program.attach().map_err(|err| error_chain(&err))?;
    Ok(())
}

fn attach_classic(ebpf: &mut Ebpf, hook: Hook) -> Result<(), String> {
    let program: &mut TracePoint = ebpf
        .program_mut(hook.tracepoint_program)
        .ok_or("program missing from the object")?
        .try_into()
        .map_err(|err: ProgramError| error_chain(&err))?;
    program.load().map_err(|err| error_chain(&err))?;
    program
        .attach(hook.category, hook.name)
        .map_err(|err| error_chain(&err))?;
    Ok(())
}

/// `struct sock` member offsets from the kernel's BTF.
fn sock_offsets(btf: &Btf) -> Result<Offsets, BtfError> {
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
        // Reported at close when present; a kernel without one of them reports it as absent.
        tcp_srtt_us: offset_in("tcp_sock", "srtt_us", 4).unwrap_or(0),
        tcp_mdev_us: offset_in("tcp_sock", "mdev_us", 4).unwrap_or(0),
        tcp_total_retrans: offset_in("tcp_sock", "total_retrans", 4).unwrap_or(0),
        tcp_bytes_acked: offset_in("tcp_sock", "bytes_acked", 8).unwrap_or(0),
        tcp_bytes_received: offset_in("tcp_sock", "bytes_received", 8).unwrap_or(0),
        ..Offsets::UNSET
    })
}

/// Classic tracepoint record offsets from tracefs (mounting it if needed).
fn tracepoint_offsets(offsets: &mut Offsets) -> Result<(), TracefsError> {
    tracefs::ensure_mounted()?;
    let root = std::path::Path::new(tracefs::TRACEFS);
    let format = |category, name| Format::read(root, category, name);
    let state = format("sock", "inet_sock_set_state")?;
    offsets.tp_state_sk = state.offset("skaddr")?;
    offsets.tp_state_old = state.offset("oldstate")?;
    offsets.tp_state_new = state.offset("newstate")?;
    let send = format("sock", "sock_send_length")?;
    offsets.tp_send_sk = send.offset("sk")?;
    offsets.tp_send_ret = send.offset("ret")?;
    offsets.tp_send_flags = send.offset("flags")?;
    let recv = format("sock", "sock_recv_length")?;
    offsets.tp_recv_sk = recv.offset("sk")?;
    offsets.tp_recv_ret = recv.offset("ret")?;
    offsets.tp_recv_flags = recv.offset("flags")?;
    offsets.tp_destroy_sk = format("tcp", "tcp_destroy_sock")?.offset("skaddr")?;
    offsets.tp_send_reset_sk = format("tcp", "tcp_send_reset")?.offset("skaddr")?;
    offsets.tp_recv_reset_sk = format("tcp", "tcp_receive_reset")?.offset("skaddr")?;
    offsets.tp_retransmit_sk = format("tcp", "tcp_retransmit_skb")?.offset("skaddr")?;
    Ok(())
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN covers both).
pub fn check_privileges() -> Result<(), LoadError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
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
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
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
fn raise_memlock_limit() {
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

/// An error and its sources, joined with ": " (sources already in the message are skipped).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The first line of an error, without a verifier log.
fn short(err: &str) -> &str {
    let end = err.find(". Verifier output").unwrap_or(err.len());
    let line = err[..end].lines().next().unwrap_or_default();
    &line[..line.len().min(300)]
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

    #[test]
    fn short_drops_the_verifier_log() {
        let err = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). \
                   Verifier output: 0: R1=ctx\n1: ...";
        assert_eq!(
            short(err),
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13)"
        );
    }

    #[test]
    fn error_chain_joins_sources() {
        let err = io::Error::other(BtfError::Malformed("truncated"));
        assert_eq!(error_chain(&err), "malformed BTF: truncated");
        let err = LoadError::Btf(BtfError::NoStruct("sock".into()));
        assert_eq!(error_chain(&err), "kernel BTF has no struct sock");
    }
}
