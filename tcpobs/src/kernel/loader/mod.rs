//! Loading and attaching the kernel programs.
//!
//! Start-up happens in four steps, each with an error a user can act on:
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
//! 4. With `--phases on`, attach the libcall families' uprobes to the libraries found
//!    ([`crate::kernel::libcalls`]); a library that is missing is logged, never fatal.
//!
//! `prepare` holds step 1's checks and layout readers, `attach` step 3 (and `strategy` the
//! ways it may try, from `--probe-strategy`), `error` the errors; step 4 is
//! [`crate::kernel::libcalls`]. [`load`] runs the steps in order.

mod attach;
mod error;
pub(crate) mod families;
mod prepare;
mod strategy;

use std::path::PathBuf;

use aya::{Btf as AyaBtf, Ebpf, EbpfLoader, Endianness, maps::Array};
use tcpobs_common::{DiagOffsets, FoldConfig, names};
use tracing::{info, warn};

pub(crate) use self::prepare::{check_privileges, sock_offsets};
use self::{
    attach::{Kernel, NoClassic, attach_family},
    families::family,
    prepare::{raise_memlock_limit, tracepoint_offsets},
};
pub use self::{
    error::LoadError,
    families::{FAMILIES, Strategy},
    strategy::{StrategyChoice, StrategyError, TracepointMode},
};
use crate::{
    config::live::Filters,
    kernel::{
        btf::{Btf, BtfError},
        diag::{DropReasons, Sampler},
        filters::{KernelFilters, Resolved},
        folds::{ExchangeOptions, ExchangeSwitch, FoldReader},
        libcalls::{LibcallOptions, LibcallProbes},
        report::{FamilyAttach, MapError, error_chain},
    },
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
    /// The DNS and TLS libcall families (`--phases`).
    pub libcalls: LibcallOptions,
    /// Whether the kernel folds exchanges into histograms.
    pub exchanges: ExchangeOptions,
    /// Whether the programs may defer opens (`--defer-opens`, `tcpobs_common::PendingList`).
    pub defer_opens: bool,
}

/// The loaded object and how each family is attached. Dropping it detaches everything.
pub struct Loaded {
    pub(crate) ebpf: Ebpf,
    pub(crate) families: Vec<FamilyAttach>,
    /// Optional families that did not attach, and why.
    pub(crate) unattached: Vec<(&'static str, String)>,
    /// The sampler (stall checks, listener health, HZ), or why it cannot run.
    pub(crate) sampler: Result<Sampler, String>,
    /// Listening sockets found at start-up (opened before tcpobs), or why they were not looked
    /// for.
    pub(crate) listeners_found: Result<usize, String>,
    /// Connections open before tcpobs, seeded into the socket table at start-up, or why they
    /// were not.
    pub(crate) connections_seeded: Result<u64, String>,
    /// The drop reasons (`None` before Linux 5.17).
    pub(crate) drop_reasons: Option<DropReasons>,
    /// What the diagnostics can read on this kernel.
    pub(crate) diag_offsets: DiagOffsets,
    /// The filter maps, taken out of `ebpf` (until someone takes them over).
    pub(crate) filters: Option<KernelFilters>,
    /// The libcall families' probes (`None` with `--phases off`, or if they cannot load).
    pub(crate) libcalls: Option<LibcallProbes>,
    /// Turns exchange events on and off.
    pub(crate) exchange_events: ExchangeSwitch,
    /// What the kernel folded.
    pub(crate) folds: FoldReader,
}

/// Loads, configures and attaches everything.
pub fn load(options: &LoadOptions) -> Result<Loaded, LoadError> {
    check_privileges()?;
    raise_memlock_limit();
    let btf = Btf::from_file(&options.btf_path).map_err(|err| match err {
        BtfError::Malformed(why) => LoadError::BadBtf {
            path: options.btf_path.display().to_string(),
            why,
        },
        other => other.into(),
    })?;
    let mut offsets = sock_offsets(&btf)?;
    offsets.wakeup_bytes = u64::from(options.ringbuf_bytes / 4);
    offsets.ephemeral_low = ephemeral_low();
    offsets.recv_flags_arg = btf
        .func_params("tcp_recvmsg")
        .ok()
        .and_then(|params| params.iter().position(|param| param == "flags"))
        .and_then(|index| u16::try_from(index).ok())
        .unwrap_or(3);
    let classic = if options.tracepoints == TracepointMode::Btf {
        Err(NoClassic::NotAllowed)
    } else {
        tracepoint_offsets(&mut offsets).map_err(NoClassic::from)
    };
    let aya_btf = AyaBtf::parse_file(&options.btf_path, Endianness::default()).map_err(|err| {
        LoadError::AyaBtf {
            path: options.btf_path.display().to_string(),
            reason: err.to_string(),
        }
    })?;
    let fold = options.exchanges.fold.unwrap_or(FoldConfig::UNSET);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&aya_btf))
        .override_global(names::OFFSETS_GLOBAL, &offsets, true)
        .override_global(names::FOLD_CONFIG_GLOBAL, &fold, true)
        .map_max_entries(names::EVENTS_MAP, options.ringbuf_bytes)
        .map_max_entries(names::SOCKETS_MAP, options.max_sockets)
        .map_max_entries(names::SPILLED_MAP, options.max_sockets);
    if !options.libcalls.enabled {
        // Unused: the smallest tables.
        for map in [
            names::DNS_CALLS_MAP,
            names::TLS_THREADS_MAP,
            names::TLS_PENDING_MAP,
        ] {
            loader.map_max_entries(map, 64);
        }
    }
    if fold.labeled == 0 {
        // No label slots: the smallest tables (a lookup past the first slot finds nothing, and
        // nothing is folded by label).
        loader
            .map_max_entries(names::LABELED_FOLDS_MAP, 1)
            .map_max_entries(names::LABEL_SLOTS_MAP, 1);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|err| LoadError::Load(error_chain(&err)))?;
    let exchange_events = ExchangeSwitch::take(&mut ebpf, options.exchanges)?;
    // Until the daemon's loop applies its event selection: the kernel sends only the exchanges
    // it does not fold (every one, without folding).
    exchange_events.apply(crate::config::live::EventSelection::None)?;
    let folds = FoldReader::take(&mut ebpf)?;
    let resolved = Resolved::new(&options.filters)?;
    let mut filters = KernelFilters::take(&mut ebpf)?;
    filters.seed_listeners();
    filters.apply(&resolved)?;
    // Before the drops family attaches: which reasons it looks at.
    let drop_reasons = DropReasons::start(&mut ebpf, &btf);
    let kernel = Kernel {
        btf,
        aya_btf,
        classic,
        tracepoints: options.tracepoints,
    };
    let mut families = Vec::with_capacity(FAMILIES.len());
    let mut unattached = Vec::new();
    for family in &FAMILIES {
        if options.strategy.is_off(family) {
            info!(family = family.name, "not attached: turned off");
            unattached.push((
                family.name,
                format!("turned off by --probe-strategy {}=off", family.name),
            ));
            continue;
        }
        let attached = match attach_family(&mut ebpf, &kernel, family, &options.strategy) {
            Ok(attached) => attached,
            Err(err) if family.optional => {
                let reason = error_chain(&err);
                warn!(
                    family = family.name,
                    "not attached, tcpobs goes on without it: {reason}"
                );
                unattached.push((family.name, reason));
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
    // After the state family, which registers new listeners: the iterator finds the rest.
    let sampler = Sampler::start(&mut ebpf).map_err(|err| {
        warn!("no stall checks and listener health: {}", error_chain(&err));
        error_chain(&err)
    });
    let listeners_found = match &sampler {
        Ok(sampler) => sampler.find_listeners(&mut ebpf, &kernel.aya_btf),
        Err(_) => Err("no sampler to read them".to_owned()),
    };
    if let Err(err) = &listeners_found {
        warn!("listening sockets opened before tcpobs are not watched: {err}");
    }
    // After the listeners: their ports decide which end of a connection is the server.
    let seeding = std::time::Instant::now();
    let connections_seeded = crate::kernel::seed::seed_connections(&mut ebpf, &kernel.aya_btf);
    match &connections_seeded {
        Ok(seeded) => info!(
            seeded,
            elapsed_ms = seeding.elapsed().as_millis() as u64,
            "connections open before tcpobs seeded"
        ),
        Err(err) => warn!(
            "connections open before tcpobs are not seeded (reported with role unknown and no \
             exchanges): {err}"
        ),
    }
    let libcalls = options
        .libcalls
        .enabled
        .then(|| LibcallProbes::start(&mut ebpf, &options.libcalls))
        .flatten();
    Ok(Loaded {
        ebpf,
        families,
        unattached,
        sampler,
        listeners_found,
        connections_seeded,
        drop_reasons,
        diag_offsets: offsets.diag,
        filters: Some(filters),
        libcalls,
        exchange_events,
        folds,
    })
}

/// The first port of `net.ipv4.ip_local_port_range` (this network namespace's; others usually
/// keep the default), 0 if it cannot be read: the seeding then takes every end on a port
/// that does not listen for a client.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Tells the state program that a `tcp_connect` program starts client records.
fn set_connect_hooked(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let map_error = |reason| MapError::new(names::CONNECT_HOOKED_MAP, reason);
    let map = ebpf
        .map_mut(names::CONNECT_HOOKED_MAP)
        .ok_or_else(|| map_error("missing".to_owned()))?;
    let mut hooked: Array<_, u32> =
        Array::try_from(map).map_err(|err| map_error(err.to_string()))?;
    hooked
        .set(0, 1, 0)
        .map_err(|err| map_error(err.to_string()))?;
    Ok(())
}

impl Loaded {
    /// What `--check` says of the diagnostics beside the families: for each thing read, where
    /// it comes from on this kernel, or `none` and why (the field is then `null`).
    pub fn readings(&self) -> Vec<String> {
        let attached = |name: &str| self.families.iter().any(|f| f.family == name);
        let missing = |name: &str| {
            self.unattached
                .iter()
                .find(|(family, _)| *family == name)
                .map_or("not attached", |(_, why)| why.as_str())
                .to_owned()
        };
        let d = &self.diag_offsets;
        let mut lines = vec![
            if d.chrono_stat != 0 && d.chrono_type != 0 {
                "read=chrono source=tcp_sock.chrono_stat".to_owned()
            } else {
                "read=chrono source=none why=\"no tcp_sock.chrono_stat in BTF: busy_s, \
                 rwnd_limited_s and sndbuf_limited_s are null\""
                    .to_owned()
            },
            if d.total_rto != 0 {
                "read=rto_count source=tcp_sock.total_rto".to_owned()
            } else {
                "read=rto_count source=none why=\"tcp_sock.total_rto is Linux 6.7: rto_count is \
                 null\""
                    .to_owned()
            },
        ];
        for (name, field, family) in [
            ("accept_wait", "accept_wait_s", family::ACCEPT),
            ("drop_reason", "packet_drops and drop_reason", family::DROPS),
            ("zero_window_probes", "zero_window_probes", family::PROBES),
        ] {
            lines.push(if attached(family) {
                format!("read={name} source={family}")
            } else {
                format!(
                    "read={name} source=none why=\"{}: {field} null or 0\"",
                    missing(family).replace('"', "'")
                )
            });
        }
        lines.push(match &self.sampler {
            Ok(sampler) => format!("read=live_sockets source=sampler hz={}", sampler.hz),
            Err(why) => format!(
                "read=live_sockets source=none why=\"{}: no stalled_receiver, blackhole or \
                 listener health\"",
                why.replace('"', "'")
            ),
        });
        lines.push(match &self.listeners_found {
            Ok(found) => format!("read=listeners_at_start source=iter/task_file found={found}"),
            Err(why) => format!(
                "read=listeners_at_start source=none why=\"{}: listeners opened before tcpobs \
                 are not watched\"",
                why.replace('"', "'")
            ),
        });
        lines.push(match &self.connections_seeded {
            Ok(seeded) => {
                format!("read=connections_at_start source=iter/task_file seeded={seeded}")
            }
            Err(why) => format!(
                "read=connections_at_start source=none why=\"{}: connections opened before \
                 tcpobs have role unknown and no exchanges\"",
                why.replace('"', "'")
            ),
        });
        lines
    }

    /// Optional families that did not attach, as `--check` prints them.
    pub fn unattached_lines(&self) -> Vec<String> {
        self.unattached
            .iter()
            .map(|(family, why)| {
                format!(
                    "family={family} strategy=none programs=none why=\"{}\"",
                    why.replace('"', "'")
                )
            })
            .collect()
    }
}
