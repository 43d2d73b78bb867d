//! The daemon's side of the diagnostics (issue 15): the sampler, which reads live sockets by
//! address (the hang detector's stall check, the listener health gauges), the listening sockets
//! it reads, the kernel's HZ, and the drop reasons.
//!
//! The sampler is a raw tracepoint program run on demand with `BPF_PROG_TEST_RUN` (Linux
//! 5.10), never attached: one system call reads up to eleven sockets, in any network
//! namespace, and a socket without a traced record (or a listener no longer listening) is
//! skipped by the program, so an address whose socket was freed is never read as one. The
//! listening sockets are those the state family registered at `listen()`, plus those the
//! `find_listeners` iterator (Linux 5.8) found at start-up.

use std::{fs, io::Read as _, thread, time::Duration};

use aya::{
    Btf as AyaBtf, Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{Iter, RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use tcpobs_common::{
    ListenSample, ListenSock, SockSample,
    diag::{DROP_REASONS, sample},
    names, tcp_state,
};
use thiserror::Error;
use tracing::{debug, warn};

use crate::{
    kernel::{
        btf::Btf,
        loader::families::{LISTENERS_ITERATOR, SAMPLER_PROGRAM},
        report::{MapError, ProgramFailure, error_chain, program_mut, take_map},
    },
    model::{Process, set_drop_reason_names},
    tracker::Listening,
};

/// Why the sampler cannot be used.
#[derive(Debug, Error)]
pub(crate) enum SamplerError {
    #[error("sampler program: {0}")]
    Program(#[from] ProgramFailure),
    #[error("sampler map: {0}")]
    Map(#[from] MapError),
    #[error("running the sampler (BPF_PROG_TEST_RUN on a raw tracepoint, Linux 5.10): {0}")]
    Run(String),
}

/// The sampler and what it reads.
pub(crate) struct Sampler {
    socks: Array<MapData, SockSample>,
    listeners: Array<MapData, ListenSample>,
    registry: HashMap<MapData, u64, ListenSock>,
    /// The kernel's tick rate, measured with the sampler at start-up.
    pub(crate) hz: u64,
}

impl Sampler {
    /// Loads the sampler and measures the kernel's HZ with it.
    pub(crate) fn start(ebpf: &mut Ebpf) -> Result<Self, SamplerError> {
        let program: &mut RawTracePoint = program_mut(ebpf, SAMPLER_PROGRAM)?;
        program.load().map_err(ProgramFailure::from)?;
        let mut sampler = Self {
            socks: take_map(ebpf, names::SOCK_SAMPLES_MAP)?,
            listeners: take_map(ebpf, names::LISTEN_SAMPLES_MAP)?,
            registry: take_map(ebpf, names::LISTEN_SOCKS_MAP)?,
            hz: 0,
        };
        sampler.hz = sampler.measure_hz(ebpf)?;
        Ok(sampler)
    }

    /// Runs the sampler once over `socks` (at most [`sample::PER_RUN`]).
    fn run(&self, ebpf: &Ebpf, kind: u64, socks: &[u64]) -> Result<(), SamplerError> {
        let program: &RawTracePoint = ebpf
            .program(SAMPLER_PROGRAM)
            .ok_or_else(|| SamplerError::Run("the program is gone".to_owned()))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| SamplerError::Run(err.to_string()))?;
        let mut args = [0u64; 12];
        args[0] = kind;
        for (slot, sock) in args[1..].iter_mut().zip(socks) {
            *slot = *sock;
        }
        program
            .test_run(RawTracePointRunOptions { args, cpu: None })
            .map(|_| ())
            .map_err(|err| SamplerError::Run(error_chain(&err)))
    }

    /// The kernel's HZ: `CONFIG_HZ` from `/boot/config-<release>` where the host has it, else
    /// jiffies per second measured between two ticks about 100 ms apart ([`snap_hz`]).
    fn measure_hz(&self, ebpf: &Ebpf) -> Result<u64, SamplerError> {
        let configured = fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| fs::read_to_string(format!("/boot/config-{}", release.trim())).ok())
            .and_then(|config| config_hz(&config));
        if let Some(hz) = configured {
            debug!("kernel HZ {hz} (CONFIG_HZ)");
            return Ok(hz);
        }
        let clocks = |sampler: &Self| -> Result<(u64, u64), SamplerError> {
            sampler.run(ebpf, sample::SOCKS, &[])?;
            let first = sampler
                .socks
                .get(&0, 0)
                .map_err(|err| SamplerError::Run(err.to_string()))?;
            Ok((first.now_ns, first.jiffies))
        };
        // Both clocks read just after jiffies moves (each reading takes microseconds, a tick
        // milliseconds), so the count of ticks between the readings is exact; a reading that
        // waited longer than EDGE_WAIT for the tick is taken as it is.
        let at_tick = |sampler: &Self| -> Result<(u64, u64), SamplerError> {
            let (began, before) = clocks(sampler)?;
            loop {
                let (now, jiffies) = clocks(sampler)?;
                if jiffies != before || now.saturating_sub(began) > EDGE_WAIT_NS {
                    return Ok((now, jiffies));
                }
            }
        };
        let (t0, j0) = at_tick(self)?;
        thread::sleep(Duration::from_millis(100));
        let (t1, j1) = at_tick(self)?;
        let elapsed = t1.saturating_sub(t0);
        if elapsed == 0 {
            return Err(SamplerError::Run("the clock did not move".to_owned()));
        }
        let measured = j1.saturating_sub(j0) as f64 * 1e9 / elapsed as f64;
        let hz = snap_hz(measured);
        if USUAL_HZ.contains(&hz) {
            debug!("kernel HZ {hz} (measured {measured:.1})");
        } else if hz == 0 {
            warn!(
                "the kernel's tick rate could not be measured (jiffies did not move): times \
                 read from jiffies (stall checks, busy and limited times at close) are not \
                 computed"
            );
        } else {
            warn!(
                "the kernel's tick rate measured {measured:.1} Hz, not one of the usual \
                 {USUAL_HZ:?}: times read from jiffies (stall checks, busy and limited times \
                 at close) use {hz}"
            );
        }
        Ok(hz)
    }

    /// Reads connections (`socks`), in runs of [`sample::PER_RUN`]; a reading whose `sock` is 0
    /// had no traced record.
    pub(crate) fn sample_socks(&self, ebpf: &Ebpf, socks: &[u64], out: &mut Vec<SockSample>) {
        for chunk in socks.chunks(sample::PER_RUN) {
            if let Err(err) = self.run(ebpf, sample::SOCKS, chunk) {
                debug!("{err}");
                return;
            }
            for slot in 0..chunk.len() as u32 {
                if let Ok(reading) = self.socks.get(&slot, 0)
                    && reading.sock != 0
                {
                    out.push(reading);
                }
            }
        }
    }

    /// Reads every registered listening socket; forgets those that no longer listen.
    pub(crate) fn listeners(&mut self, ebpf: &Ebpf) -> Vec<Listening> {
        let registered: Vec<(u64, ListenSock)> =
            self.registry.iter().filter_map(Result::ok).collect();
        let mut found = Vec::with_capacity(registered.len());
        for chunk in registered.chunks(sample::PER_RUN) {
            let socks: Vec<u64> = chunk.iter().map(|(sock, _)| *sock).collect();
            if let Err(err) = self.run(ebpf, sample::LISTENERS, &socks) {
                debug!("{err}");
                return found;
            }
            for (slot, (sock, listener)) in chunk.iter().enumerate() {
                let Ok(reading) = self.listeners.get(&(slot as u32), 0) else {
                    continue;
                };
                if reading.sock != *sock {
                    continue;
                }
                if reading.state != tcp_state::LISTEN {
                    // Closed without the state family seeing it (or reused): forget it.
                    let _ = self.registry.remove(sock);
                    continue;
                }
                found.push(Listening {
                    sample: reading,
                    owner: Process::from_kernel(&listener.task),
                    found: listener.found != 0,
                });
            }
        }
        found
    }

    /// Runs the `find_listeners` iterator once: registers the listening sockets that existed
    /// before tcpobs. Returns how many it registered.
    pub(crate) fn find_listeners(&self, ebpf: &mut Ebpf, btf: &AyaBtf) -> Result<usize, String> {
        let before = self.registry.keys().count();
        let iter: &mut Iter = program_mut(ebpf, LISTENERS_ITERATOR).map_err(|e| e.to_string())?;
        iter.load("task_file", btf).map_err(|e| error_chain(&e))?;
        let link = iter.attach().map_err(|e| error_chain(&e))?;
        let link = iter.take_link(link).map_err(|e| error_chain(&e))?;
        let mut file = link.into_file().map_err(|e| error_chain(&e))?;
        file.read_to_end(&mut Vec::new())
            .map_err(|e| e.to_string())?;
        Ok(self.registry.keys().count().saturating_sub(before))
    }
}

/// The drop reasons: their names, which ones the drops family looks at, and the counts.
pub(crate) struct DropReasons {
    counts: PerCpuArray<MapData, u64>,
    /// The values looked at (the only ones that can count).
    wanted: Vec<u32>,
}

/// Reasons the drops family leaves out: no drop at all, no reason given (the bulk of the
/// legacy `kfree_skb()` callers), or a closing socket's own queues freed (`QUEUE_PURGE`: every
/// closing connection frees some, and at one look-up and header parse each, about 0.5 µs per
/// churned connection, it was a tenth of the kernel's cost per connection; what a closing
/// application left unread shows as a reset instead).
const UNINTERESTING: [&str; 5] = [
    "NOT_DROPPED_YET",
    "CONSUMED",
    "NOT_SPECIFIED",
    "QUEUE_PURGE",
    "MAX",
];

impl DropReasons {
    /// Reads `enum skb_drop_reason` from BTF, names the reasons for the outputs, and writes the
    /// interest array. `None` on a kernel without drop reasons (before 5.17).
    pub(crate) fn start(ebpf: &mut Ebpf, btf: &Btf) -> Option<Self> {
        let reasons = match btf.enum_values("skb_drop_reason") {
            Ok(reasons) => reasons,
            Err(err) => {
                debug!("no drop reasons: {err}");
                return None;
            }
        };
        let mut names: Vec<Option<Box<str>>> = vec![None; DROP_REASONS as usize];
        for (name, value) in &reasons {
            let Some(slot) = usize::try_from(*value)
                .ok()
                .and_then(|at| names.get_mut(at))
            else {
                continue;
            };
            let short = name.trim_start_matches("SKB_DROP_REASON_");
            *slot = Some(short.to_ascii_lowercase().into_boxed_str());
        }
        let wanted: Vec<u32> = reasons
            .iter()
            .filter(|(name, _)| {
                !UNINTERESTING.contains(&name.trim_start_matches("SKB_DROP_REASON_"))
            })
            .filter_map(|(_, value)| u32::try_from(*value).ok())
            .filter(|&value| value < DROP_REASONS)
            .collect();
        // In place: the programs, loaded later, refer to the map by the object's descriptor.
        let map_error = |err: String| MapError::new(names::DROP_INTEREST_MAP, err);
        let interest = ebpf
            .map_mut(names::DROP_INTEREST_MAP)
            .ok_or_else(|| map_error("missing from the object".to_owned()))
            .and_then(|map| Array::<_, u8>::try_from(map).map_err(|err| map_error(err.to_string())))
            .and_then(|mut map| {
                wanted.iter().try_for_each(|&value| {
                    map.set(value, 1, 0)
                        .map_err(|err| map_error(err.to_string()))
                })
            });
        if let Err(err) = interest {
            warn!("drop reasons: {err}");
            return None;
        }
        set_drop_reason_names(names);
        match take_map(ebpf, names::DROP_COUNTS_MAP) {
            Ok(counts) => Some(Self { counts, wanted }),
            Err(err) => {
                warn!("drop reasons: {err}");
                None
            }
        }
    }

    /// Drops charged to traced connections so far, by reason value (non-zero ones).
    pub(crate) fn counts(&self) -> Vec<(u32, u64)> {
        self.wanted
            .iter()
            .filter_map(|&reason| {
                let total: u64 = self.counts.get(&reason, 0).ok()?.iter().sum();
                (total != 0).then_some((reason, total))
            })
            .collect()
    }
}

/// The `CONFIG_HZ` choices of the kernel's generic `kernel/Kconfig.hz`, which x86 and arm64
/// kernels take theirs from.
const USUAL_HZ: [u64; 4] = [100, 250, 300, 1000];

/// How long a reading of the clocks waits for the next tick: longer than a tick at HZ 100.
const EDGE_WAIT_NS: u64 = 25_000_000;

/// The kernel's HZ from a measured rate of jiffies: the nearest of [`USUAL_HZ`] when closer to
/// it than to its neighbours (within a ratio of 1.095, the halfway ratio between 250 and 300,
/// the closest pair), else the measurement rounded. A guest whose ticks come late (an emulated
/// CPU on a busy host) measures a few percent off: 267 was measured on an HZ 250 guest, which
/// a 5 % window kept as 267, making every time read from jiffies 6 % short.
fn snap_hz(measured: f64) -> u64 {
    let distance = |usual: u64| {
        let usual = usual as f64;
        (measured / usual).max(usual / measured)
    };
    USUAL_HZ
        .into_iter()
        .min_by(|&a, &b| distance(a).total_cmp(&distance(b)))
        .filter(|&usual| distance(usual) <= HALFWAY)
        .unwrap_or(measured.round() as u64)
}

/// The square root of 300/250.
const HALFWAY: f64 = 1.095_445;

/// `CONFIG_HZ` from a kernel's config file.
fn config_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ="))
        .and_then(|value| value.trim().parse().ok())
        .filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measured_tick_rate_is_snapped_to_the_nearest_usual_hz() {
        for (measured, hz) in [
            (250.0, 250),
            (267.0, 250),
            (270.0, 250),
            (233.0, 250),
            (280.0, 300),
            (290.0, 300),
            (320.0, 300),
            (106.0, 100),
            (93.0, 100),
            (1060.0, 1000),
            (930.0, 1000),
        ] {
            assert_eq!(snap_hz(measured), hz, "measured {measured}");
        }
    }

    #[test]
    fn an_unusual_tick_rate_is_kept_as_measured() {
        assert_eq!(snap_hz(500.4), 500);
        assert_eq!(snap_hz(48.0), 48);
        assert_eq!(snap_hz(2048.0), 2048);
        assert_eq!(snap_hz(0.0), 0, "jiffies did not move");
    }

    #[test]
    fn config_hz_is_read_from_a_kernel_config() {
        let config =
            "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n";
        assert_eq!(config_hz(config), Some(250));
        assert_eq!(config_hz("CONFIG_HZ_1000=y\nCONFIG_HZ=1000"), Some(1000));
        assert_eq!(config_hz("CONFIG_HZ_PERIODIC=y\n"), None);
        assert_eq!(config_hz("CONFIG_HZ=\n"), None);
    }
}
