//! Loading and attaching the kernel programs.
//!
//! Start-up happens in three steps, each with an error a user can act on:
//! 1. **Prepare**: check privileges, resolve kernel layout (`struct sock` offsets and
//!    function parameters from BTF, classic tracepoint record offsets from tracefs) into the
//!    `OFFSETS` global.
//! 2. **Load** the object with the table and ring buffer sizes chosen on the command line,
//!    and write the kernel-side filter.
//! 3. **Attach** every hook family (DESIGN §2), choosing per family the first strategy whose
//!    programs all load and attach, in the order fentry, tracepoint, kprobe (or the strategy
//!    asked for with `--probe-strategy`). Within the tracepoint strategy each hook prefers
//!    `tp_btf` (raw arguments, cheapest) to the classic tracepoint. The choice is logged and
//!    kept in [`FamilyAttach`] for the metrics; a family with no working strategy stops
//!    start-up with what each strategy lacked.
//! 4. With `--phases on`, attach the phase families' uprobes to the libraries found
//!    ([`crate::uprobes`]); a library that is missing is logged, never fatal.

use std::{fmt, io, path::PathBuf, str::FromStr};

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader, Endianness,
    maps::Array,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
};
pub use tcpobs_common::names::{FAMILIES, Strategy};
use tcpobs_common::{
    Offsets,
    names::{self, Attach, Family, Way, family},
};
use thiserror::Error;
use tracing::{debug, info};

use crate::{
    btf::{Btf, BtfError},
    kfilter::{KernelFilters, Resolved},
    runtime::Filters,
    tracefs::{self, Format, TracefsError},
    uprobes::{PhaseOptions, PhaseProbes},
};

/// The compiled kernel programs, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpobs"));

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

/// `--probe-strategy`: `auto`, one strategy for every family that has it, and/or
/// `family=strategy` for one family, comma-separated (`kprobe,state=tracepoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StrategyChoice {
    /// Every family that has this strategy must use it; the others choose as with `auto`.
    pub all: Option<Strategy>,
    /// These families must use these strategies.
    pub families: Vec<(&'static str, Strategy)>,
}

fn parse_strategy(text: &str) -> Result<Strategy, String> {
    Strategy::ALL
        .into_iter()
        .find(|strategy| strategy.as_str() == text)
        .ok_or_else(|| format!("unknown strategy `{text}` (expected fentry, tracepoint or kprobe)"))
}

impl FromStr for StrategyChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut choice = Self::default();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            match item.split_once('=') {
                None if item == "auto" => {}
                None => choice.all = Some(parse_strategy(item)?),
                Some((name, strategy)) => {
                    let family = FAMILIES
                        .iter()
                        .find(|family| family.name == name)
                        .ok_or_else(|| {
                            format!(
                                "unknown hook family `{name}` (expected one of: {})",
                                family_names()
                            )
                        })?;
                    let strategy = parse_strategy(strategy)?;
                    if !family.ways.iter().any(|way| way.strategy == strategy) {
                        return Err(format!(
                            "the {} family has no {} strategy (it has: {})",
                            family.name,
                            strategy.as_str(),
                            strategies_of(family)
                        ));
                    }
                    choice.families.retain(|(other, _)| *other != family.name);
                    choice.families.push((family.name, strategy));
                }
            }
        }
        Ok(choice)
    }
}

impl fmt::Display for StrategyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = self.all.iter().map(|s| s.as_str().to_owned()).collect();
        items.extend(
            self.families
                .iter()
                .map(|(family, strategy)| format!("{family}={}", strategy.as_str())),
        );
        if items.is_empty() {
            f.write_str("auto")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

fn family_names() -> String {
    FAMILIES.map(|family| family.name).join(", ")
}

fn strategies_of(family: &Family) -> String {
    family
        .ways
        .iter()
        .map(|way| way.strategy.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StrategyChoice {
    /// The ways to try for `family`, in order, and whether one was forced.
    fn ways(&self, family: &Family) -> (Vec<Way>, bool) {
        let forced = self
            .families
            .iter()
            .find(|(name, _)| *name == family.name)
            .map(|&(_, strategy)| strategy)
            .or(self
                .all
                .filter(|all| family.ways.iter().any(|way| way.strategy == *all)));
        match forced {
            Some(strategy) => (
                family
                    .ways
                    .iter()
                    .filter(|way| way.strategy == strategy)
                    .copied()
                    .collect(),
                true,
            ),
            None => (family.ways.to_vec(), false),
        }
    }
}

/// What the loader needs to know.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Kernel BTF, normally `/sys/kernel/btf/vmlinux`.
    pub btf_path: PathBuf,
    pub strategy: StrategyChoice,
    pub tracepoints: TracepointMode,
    /// Capacity of the kernel socket table.
    pub max_sockets: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ringbuf_bytes: u32,
    /// Kernel-side filters to start with.
    pub filters: Filters,
    /// The DNS and TLS phase families (`--phases`).
    pub phases: PhaseOptions,
}

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// `tp_btf`, `tracepoint` (classic), `fentry`, `fexit`, `kprobe` or `kretprobe`.
    pub program_type: &'static str,
    /// The tracepoint (`sock:inet_sock_set_state`) or kernel function.
    pub target: String,
}

/// How one hook family is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyAttach {
    pub family: &'static str,
    pub strategy: Strategy,
    /// Empty for the connect family under the tracepoint strategy, which the state hook
    /// covers.
    pub programs: Vec<Attached>,
}

impl FamilyAttach {
    /// The distinct program types, joined with `+` (`kprobe+kretprobe`); `state` for a
    /// family served by the state hook, `none` for a phase family with no library attached.
    pub fn program_types(&self) -> String {
        let mut types: Vec<&str> = Vec::new();
        for program in &self.programs {
            if !types.contains(&program.program_type) {
                types.push(program.program_type);
            }
        }
        match (types.is_empty(), self.strategy) {
            (true, Strategy::Uprobe) => "none".to_owned(),
            (true, _) => "state".to_owned(),
            (false, _) => types.join("+"),
        }
    }
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
    #[error("cannot attach the {family} hooks on this kernel: {reasons}")]
    Attach {
        family: &'static str,
        reasons: String,
    },
    #[error("cannot set up kernel map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("cannot set up the kernel filters: {0}")]
    Filter(String),
}

/// The loaded object and how each family is attached. Dropping it detaches everything.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub families: Vec<FamilyAttach>,
    /// The filter maps, taken out of `ebpf` (until someone takes them over).
    pub filters: Option<KernelFilters>,
    /// The phase families' probes (`None` with `--phases off`, or if they cannot load).
    pub phases: Option<PhaseProbes>,
}

/// Layout and signature facts the attach step needs besides `OFFSETS`.
struct Kernel {
    btf: Btf,
    aya_btf: AyaBtf,
    /// Classic tracepoints are usable (tracefs mounted, record offsets read), or why not.
    classic: Result<(), String>,
    tracepoints: TracepointMode,
}

/// Loads, configures and attaches everything.
pub fn load(options: &LoadOptions) -> Result<Loaded, LoadError> {
    check_privileges()?;
    raise_memlock_limit();
    let btf = Btf::from_file(&options.btf_path)?;
    let mut offsets = sock_offsets(&btf)?;
    offsets.wakeup_bytes = u64::from(options.ringbuf_bytes / 4);
    offsets.recv_flags_arg = btf
        .func_params("tcp_recvmsg")
        .ok()
        .and_then(|params| params.iter().position(|param| param == "flags"))
        .and_then(|index| u16::try_from(index).ok())
        .unwrap_or(3);
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
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&aya_btf))
        .override_global(names::OFFSETS_GLOBAL, &offsets, true)
        .map_max_entries(names::EVENTS_MAP, options.ringbuf_bytes)
        .map_max_entries(names::SOCKETS_MAP, options.max_sockets);
    if !options.phases.enabled {
        // Unused: the smallest tables.
        for map in [
            names::DNS_CALLS_MAP,
            names::TLS_THREADS_MAP,
            names::TLS_PENDING_MAP,
        ] {
            loader.map_max_entries(map, 64);
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|err| LoadError::Load(error_chain(&err)))?;
    let resolved = Resolved::new(&options.filters).map_err(LoadError::Filter)?;
    let mut filters = KernelFilters::take(&mut ebpf)?;
    filters.seed_listeners();
    filters.apply(&resolved).map_err(LoadError::Filter)?;
    let kernel = Kernel {
        btf,
        aya_btf,
        classic,
        tracepoints: options.tracepoints,
    };
    let mut families = Vec::with_capacity(FAMILIES.len());
    for family in &FAMILIES {
        let attached = attach_family(&mut ebpf, &kernel, family, &options.strategy)?;
        info!(
            family = family.name,
            strategy = attached.strategy.as_str(),
            programs = attached.program_types(),
            targets = attached
                .programs
                .iter()
                .map(|p| p.target.as_str())
                .collect::<Vec<_>>()
                .join(","),
            "attached"
        );
        if family.name == family::CONNECT && attached.strategy != Strategy::Tracepoint {
            set_connect_hooked(&mut ebpf)?;
        }
        families.push(attached);
    }
    let phases = options
        .phases
        .enabled
        .then(|| PhaseProbes::start(&mut ebpf, &options.phases))
        .flatten();
    Ok(Loaded {
        ebpf,
        families,
        filters: Some(filters),
        phases,
    })
}

/// Tells the state program that a `tcp_connect` program starts client records.
fn set_connect_hooked(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let map_error = |reason: String| LoadError::Map {
        map: names::CONNECT_HOOKED_MAP,
        reason,
    };
    let map = ebpf
        .map_mut(names::CONNECT_HOOKED_MAP)
        .ok_or_else(|| map_error("missing".into()))?;
    let mut hooked: Array<_, u32> =
        Array::try_from(map).map_err(|err| map_error(err.to_string()))?;
    hooked
        .set(0, 1, 0)
        .map_err(|err| map_error(err.to_string()))
}

/// Attaches `family` by the first of its ways that works entirely.
fn attach_family(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    family: &Family,
    choice: &StrategyChoice,
) -> Result<FamilyAttach, LoadError> {
    let (ways, forced) = choice.ways(family);
    let mut reasons = Vec::new();
    for way in ways {
        match attach_way(ebpf, kernel, &way) {
            Ok(programs) => {
                return Ok(FamilyAttach {
                    family: family.name,
                    strategy: way.strategy,
                    programs,
                });
            }
            Err(reason) => {
                debug!(
                    family = family.name,
                    strategy = way.strategy.as_str(),
                    "{reason}"
                );
                reasons.push(format!("{}: {reason}", way.strategy.as_str()));
            }
        }
    }
    if forced {
        reasons.push(format!("asked for by --probe-strategy {choice}"));
    }
    Err(LoadError::Attach {
        family: family.name,
        reasons: reasons.join("; "),
    })
}

/// Attaches every program of `way`, or none: on a failure the ones already attached are
/// unloaded, which detaches them.
fn attach_way(ebpf: &mut Ebpf, kernel: &Kernel, way: &Way) -> Result<Vec<Attached>, String> {
    let mut done: Vec<(&'static str, Attached)> = Vec::new();
    for attach in way.attach {
        match attach_one(ebpf, kernel, attach) {
            Ok(attached) => done.push(attached),
            Err(reason) => {
                for (program, _) in &done {
                    if let Some(program) = ebpf.program_mut(program) {
                        let _ = unload(program);
                    }
                }
                return Err(reason);
            }
        }
    }
    Ok(done.into_iter().map(|(_, attached)| attached).collect())
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|err: ProgramError| error_chain(&err))
}

/// Attaches one program; returns its name (to undo it) and what was attached.
fn attach_one(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    attach: &Attach,
) -> Result<(&'static str, Attached), String> {
    let attached = |program_type, target: &str| Attached {
        program_type,
        target: target.to_owned(),
    };
    match *attach {
        Attach::Tracepoint {
            category,
            name,
            since,
            btf_program,
            tracepoint_program,
        } => {
            let target = format!("{category}:{name}");
            let mut reasons = Vec::new();
            if kernel.tracepoints != TracepointMode::Classic {
                match attach_btf(ebpf, &kernel.aya_btf, btf_program, name) {
                    Ok(()) => return Ok((btf_program, attached("tp_btf", &target))),
                    Err(err) => reasons.push(format!("tp_btf: {}", short(&err))),
                }
            }
            if kernel.tracepoints != TracepointMode::Btf {
                let classic = kernel
                    .classic
                    .clone()
                    .and_then(|()| attach_classic(ebpf, tracepoint_program, category, name));
                match classic {
                    Ok(()) => return Ok((tracepoint_program, attached("tracepoint", &target))),
                    Err(err) => reasons.push(format!("classic: {}", short(&err))),
                }
            }
            Err(format!(
                "tracepoint {target} (Linux {since} or newer): {}",
                reasons.join(", ")
            ))
        }
        Attach::FEntry {
            function,
            program: name,
        } => {
            let result = program::<FEntry>(ebpf, name).and_then(|program| {
                program
                    .load(function, &kernel.aya_btf)
                    .map_err(|err| error_chain(&err))?;
                program.attach().map_err(|err| error_chain(&err))
            });
            result
                .map(|_| (name, attached("fentry", function)))
                .map_err(|err| trampoline_reason("fentry", function, &err))
        }
        Attach::FExit { function, programs } => {
            let params = kernel
                .btf
                .func_params(function)
                .map_err(|err| err.to_string())?;
            let &(_, name) = programs
                .iter()
                .find(|(count, _)| *count == params.len())
                .ok_or_else(|| {
                    format!(
                        "fexit {function}: unexpected signature ({} parameters)",
                        params.len()
                    )
                })?;
            let result = program::<FExit>(ebpf, name).and_then(|program| {
                program
                    .load(function, &kernel.aya_btf)
                    .map_err(|err| error_chain(&err))?;
                program.attach().map_err(|err| error_chain(&err))
            });
            result
                .map(|_| (name, attached("fexit", function)))
                .map_err(|err| trampoline_reason("fexit", function, &err))
        }
        Attach::KProbe {
            function,
            program: name,
        }
        | Attach::KRetProbe {
            function,
            program: name,
        } => {
            let program_type = attach.program_type();
            let program = program::<KProbe>(ebpf, name)?;
            program.load().map_err(|err| {
                format!(
                    "{program_type} {function}: the kernel refused the program: {}",
                    short(&error_chain(&err))
                )
            })?;
            program
                .attach(function, 0)
                .map(|_| (name, attached(program_type, function)))
                .map_err(|err| {
                    format!(
                        "{program_type} {function}: {} (needs a kernel built with CONFIG_KPROBES)",
                        short(&error_chain(&err))
                    )
                })
        }
    }
}

fn trampoline_reason(program_type: &str, function: &str, err: &str) -> String {
    format!(
        "{program_type} {function}: {} (needs BPF trampolines: Linux 5.5 or newer with BTF, on \
         x86_64 or arm64, and a kernel that allows them)",
        short(err)
    )
}

fn attach_btf(ebpf: &mut Ebpf, btf: &AyaBtf, name: &str, tracepoint: &str) -> Result<(), String> {
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program
        .load(tracepoint, btf)
        .map_err(|err| error_chain(&err))?;
    program.attach().map_err(|err| error_chain(&err))?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let program: &mut TracePoint = program(ebpf, name)?;
    program.load().map_err(|err| error_chain(&err))?;
    program
        .attach(category, tracepoint)
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

/// The first line of an error, without a verifier log; the log, when there is one, goes to
/// the debug log (`--log-level debug`).
fn short(err: &str) -> &str {
    let end = match err.find(". Verifier output") {
        Some(end) => {
            debug!("{err}");
            end
        }
        None => err.len(),
    };
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
