//! Deferred opens, the daemon's side (`tcpobs_common::PendingOpens`): the programs may defer
//! opens only while the daemon can flush a CPU's list, with the sampler. The daemon flushes
//! the lists that have waited [`OPEN_DEFER_NS`] (a CPU where no connection has been established
//! since: a busy one flushes its own), and every list before it stops reading. A connection
//! whose open is deferred is therefore unknown to the daemon (its live table, the open
//! connections gauge, `/connections`) for [`OPEN_DEFER_NS`] to twice that, unless it closes
//! first: its close then stands for its open.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
};
use tcpobs_common::{OPEN_DEFER_NS, PendingOpens, names};
use tracing::debug;

use crate::{
    clock::monotonic_now_ns,
    kernel::{
        diag::Sampler,
        report::{MapError, take_map},
    },
};

/// How often the lists are looked at.
const CHECK_EVERY: Duration = Duration::from_nanos(OPEN_DEFER_NS);

/// The switch and the lists.
pub(crate) struct DeferredOpens {
    allowed: Array<MapData, u32>,
    lists: PerCpuArray<MapData, PendingOpens>,
    checked: Instant,
}

impl DeferredOpens {
    /// Takes the maps and allows the programs to defer opens.
    pub(crate) fn start(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        let mut opens = Self {
            allowed: take_map(ebpf, names::DEFER_OPENS_MAP)?,
            lists: take_map(ebpf, names::PENDING_OPENS_MAP)?,
            checked: Instant::now(),
        };
        opens
            .allowed
            .set(0, 1, 0)
            .map_err(|err| MapError::new(names::DEFER_OPENS_MAP, err))?;
        Ok(opens)
    }

    /// Flushes the lists that have waited long enough, if it is time to look.
    pub(crate) fn tick(&mut self, ebpf: &Ebpf, sampler: &Sampler) {
        if self.checked.elapsed() < CHECK_EVERY {
            return;
        }
        self.checked = Instant::now();
        let due = monotonic_now_ns().saturating_sub(OPEN_DEFER_NS);
        self.flush(ebpf, sampler, |list| list.oldest_ns <= due);
    }

    /// No more deferring: flushes every list (twice, for an open deferred by a program that
    /// read the switch just before it turned). What a program still held on its CPU at both
    /// flushes (microseconds wide) stays unreported if its connection outlives the daemon.
    pub(crate) fn stop(&mut self, ebpf: &Ebpf, sampler: &Sampler) {
        if let Err(err) = self.allowed.set(0, 0, 0) {
            debug!("deferred opens: {err}");
        }
        for _ in 0..2 {
            self.flush(ebpf, sampler, |_| true);
        }
    }

    /// Runs the sampler on every CPU whose list holds an entry that `due` picks.
    fn flush(&self, ebpf: &Ebpf, sampler: &Sampler, due: impl Fn(&PendingOpens) -> bool) {
        let lists = match self.lists.get(&0, 0) {
            Ok(lists) => lists,
            Err(err) => {
                debug!("deferred opens: {err}");
                return;
            }
        };
        for (cpu, list) in lists.iter().enumerate() {
            if list.count == 0 || !due(list) {
                continue;
            }
            // A CPU whose list is busy under a program skips this run; the next check retries.
            if let Err(err) = sampler.flush_opens(ebpf, cpu as u32) {
                debug!("deferred opens of CPU {cpu}: {err}");
            }
        }
    }
}
