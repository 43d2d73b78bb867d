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
//!
//! `prepare` holds step 1's checks and layout readers, `attach` step 3 (and `strategy` the
//! ways it may try, from `--probe-strategy`), `error` the errors; [`load`] runs the steps in
//! order.

mod attach;
mod error;
pub(crate) mod families;
mod prepare;
mod strategy;

use std::path::PathBuf;

use aya::{Btf as AyaBtf, Ebpf, EbpfLoader, Endianness, maps::Array};
use tcpobs_common::names;
use tracing::{info, warn};

pub use self::{
    attach::{Attached, FamilyAttach},
    error::{LoadError, error_chain},
    families::{FAMILIES, Strategy},
    prepare::{check_privileges, missing_capabilities},
    strategy::{StrategyChoice, TracepointMode},
};
use self::{
    attach::{Kernel, attach_family},
    families::family,
    prepare::{raise_memlock_limit, sock_offsets, tracepoint_offsets},
};
use crate::{
    btf::Btf,
    kfilter::{KernelFilters, Resolved},
    runtime::Filters,
    uprobes::{PhaseOptions, PhaseProbes},
};

/// The compiled kernel programs, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpobs"));

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

/// The loaded object and how each family is attached. Dropping it detaches everything.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub families: Vec<FamilyAttach>,
    /// The filter maps, taken out of `ebpf` (until someone takes them over).
    pub filters: Option<KernelFilters>,
    /// The phase families' probes (`None` with `--phases off`, or if they cannot load).
    pub phases: Option<PhaseProbes>,
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
        let attached = match attach_family(&mut ebpf, &kernel, family, &options.strategy) {
            Ok(attached) => attached,
            Err(err) if family.optional => {
                warn!(
                    family = family.name,
                    "not attached, tcpobs goes on without it: {}",
                    error_chain(&err)
                );
                continue;
            }
            Err(err) => return Err(err),
        };
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
