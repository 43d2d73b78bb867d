//! The kernel's exchange folding, from the daemon's side (`tcpobs_common::folds`).
//!
//! The data hooks end each exchange when the next request begins and, with no optional metric
//! label, fold its timings into per-CPU histograms with the daemon's own bucket limits
//! ([`ExchangeOptions::fold`], set at load); they count the bytes of every completed burst in
//! any case. [`FoldReader`] reads those totals and hands over what was added since its last
//! read, which the daemon adds to its histograms and counters bucket by bucket: the metrics say
//! what they would have said with one event per exchange.
//!
//! With `pod`/`namespace` labels only, the kernel folds by label slot instead
//! (`export::metrics::slots`): [`FoldReader`] also makes the daemon's changes to the cgroups'
//! slots and reads each slot's folds.
//!
//! An exchange is also sent as an event while something needs each one
//! ([`ExchangeSwitch`], which follows the runtime event selection): a JSON event or a
//! justniffer line per exchange. An exchange the kernel did not fold is sent in any case: with
//! metric labels the kernel cannot resolve (it folds none, and the daemon observes every
//! exchange itself), or of a cgroup without a label slot.

use std::sync::{Arc, Mutex};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
};
use tcpobs_common::{FoldConfig, Folds, RoleFolds, folds::LABEL_SLOTS, names};
use tracing::warn;

use crate::{
    config::live::EventSelection,
    kernel::report::{MapError, take_map},
    sync::lock,
};

/// How exchanges are handled in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Fold exchanges into histograms with these limits (all of them, or by label slot);
    /// `None` when the daemon must see each exchange for its metrics (optional labels other
    /// than `pod` and `namespace`).
    pub fold: Option<FoldConfig>,
    /// The output is justniffer lines (one per exchange unless `--events none`).
    pub justniffer: bool,
}

impl ExchangeOptions {
    /// Whether the kernel must send every exchange under this event selection, folded or not
    /// (those it did not fold it sends in any case).
    pub(crate) fn events_wanted(&self, selection: EventSelection) -> bool {
        if self.justniffer {
            selection != EventSelection::None
        } else {
            selection == EventSelection::Exchanges
        }
    }
}

/// Turns the kernel's exchange events on and off (`EXCHANGE_EVENTS`). Cloning shares the map:
/// the daemon's loop and `PUT /config` both set it.
#[derive(Clone)]
pub(crate) struct ExchangeSwitch {
    map: Arc<Mutex<Array<MapData, u32>>>,
    options: ExchangeOptions,
}

impl ExchangeSwitch {
    pub(crate) fn take(ebpf: &mut Ebpf, options: ExchangeOptions) -> Result<Self, MapError> {
        Ok(Self {
            map: Arc::new(Mutex::new(take_map(ebpf, names::EXCHANGE_EVENTS_MAP)?)),
            options,
        })
    }

    /// Sets the events for this selection; returns whether they are on.
    pub(crate) fn apply(&self, selection: EventSelection) -> Result<bool, MapError> {
        let wanted = self.options.events_wanted(selection);
        lock(&self.map)
            .set(0, u32::from(wanted), 0)
            .map_err(|err| MapError::new(names::EXCHANGE_EVENTS_MAP, err))?;
        Ok(wanted)
    }
}

/// Reads what the kernel folded (`FOLDS`, summed over CPUs) and returns the growth since the
/// previous read. Sums wrap in the kernel; the growth is computed with wrapping arithmetic, so
/// it is exact as long as reads are less than 2^64 ns of observations apart.
pub(crate) struct FoldReader {
    map: PerCpuArray<MapData, Folds>,
    last: Box<Folds>,
    labeled: Labeled,
}

/// The label slots' side: the cgroup table and the slots' folds, with their last totals
/// (`LABELED_FOLDS` entry order).
struct Labeled {
    cgroups: HashMap<MapData, u64, u32>,
    folds: PerCpuArray<MapData, RoleFolds>,
    last: Vec<RoleFolds>,
    /// A write to the cgroup table failed (warned once).
    write_warned: bool,
    /// A read of a slot's folds failed (warned once).
    read_warned: bool,
}

impl FoldReader {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            map: take_map(ebpf, names::FOLDS_MAP)?,
            last: Box::default(),
            labeled: Labeled {
                cgroups: take_map(ebpf, names::LABEL_SLOTS_MAP)?,
                folds: take_map(ebpf, names::LABELED_FOLDS_MAP)?,
                last: vec![RoleFolds::default(); 2 * LABEL_SLOTS as usize],
                // (One entry each when the loader made them smallest: no label slots.)
                write_warned: false,
                read_warned: false,
            },
        })
    }

    /// What was folded since the previous call.
    pub(crate) fn growth(&mut self) -> Result<Box<Folds>, MapError> {
        let per_cpu = self
            .map
            .get(&0, 0)
            .map_err(|err| MapError::new(names::FOLDS_MAP, err))?;
        Ok(Box::new(growth_of(&per_cpu, &mut self.last, fold_into)))
    }

    /// Makes the daemon's changes to the cgroups' label slots. A failed write leaves that
    /// cgroup's exchanges sent as events (or folded under its previous slot's values, for a
    /// removal): warned once.
    pub(crate) fn write_slots(&mut self, writes: &[(u64, Option<u32>)]) {
        let labeled = &mut self.labeled;
        for &(cgroup, slot) in writes {
            let written = match slot {
                Some(slot) => labeled.cgroups.insert(cgroup, slot, 0),
                None => labeled.cgroups.remove(&cgroup),
            };
            if let Err(err) = written
                && !labeled.write_warned
            {
                labeled.write_warned = true;
                warn!(
                    cgroup,
                    "{}: {err}; the exchanges of this cgroup's sockets are sent as events \
                     instead of folded (warned once)",
                    names::LABEL_SLOTS_MAP
                );
            }
        }
    }

    /// What was folded under each of the first `slots` label slots since the previous call:
    /// `(slot, socket role, growth)`, the slots that grew only, and whether every slot was
    /// read. A slot that cannot be read is read in full next time (warned once).
    pub(crate) fn labeled_growth(&mut self, slots: u32) -> (Vec<(u32, u8, RoleFolds)>, bool) {
        let labeled = &mut self.labeled;
        let mut grown = Vec::new();
        let mut read_all = true;
        for index in 0..2 * slots.min(LABEL_SLOTS) {
            let per_cpu = match labeled.folds.get(&index, 0) {
                Ok(per_cpu) => per_cpu,
                Err(err) => {
                    read_all = false;
                    if !labeled.read_warned {
                        labeled.read_warned = true;
                        warn!(
                            "{} (warned once)",
                            MapError::new(names::LABELED_FOLDS_MAP, err)
                        );
                    }
                    continue;
                }
            };
            let growth = growth_of(&per_cpu, &mut labeled.last[index as usize], role_into);
            if growth != RoleFolds::default() {
                let role = if index % 2 == 0 {
                    tcpobs_common::role::CLIENT
                } else {
                    tcpobs_common::role::SERVER
                };
                grown.push((index / 2, role, growth));
            }
        }
        (grown, read_all)
    }
}

/// An operation on two counters (`wrapping_add`, `wrapping_sub`).
type Op = fn(u64, u64) -> u64;

/// What the per-CPU values add up to now, less `last` (which becomes that total).
fn growth_of<T: aya::Pod + Default>(
    per_cpu: &PerCpuValues<T>,
    last: &mut T,
    into: fn(&mut T, &T, Op),
) -> T {
    let mut total = T::default();
    for value in per_cpu.iter() {
        into(&mut total, value, u64::wrapping_add);
    }
    let mut growth = total;
    into(&mut growth, last, u64::wrapping_sub);
    *last = total;
    growth
}

/// Applies `op` to every counter of `into` with the matching one of `other`.
fn fold_into(into: &mut Folds, other: &Folds, op: Op) {
    for (role, more) in into.roles.iter_mut().zip(&other.roles) {
        role_into(role, more, op);
    }
}

/// [`fold_into`] for one role's folds.
fn role_into(into: &mut RoleFolds, other: &RoleFolds, op: Op) {
    for (slot, more) in into.hists.iter_mut().zip(&other.hists) {
        for (bucket, more) in slot.buckets.iter_mut().zip(&more.buckets) {
            *bucket = op(*bucket, *more);
        }
        slot.sum = op(slot.sum, more.sum);
    }
    for (count, more) in into.exchanges.iter_mut().zip(&other.exchanges) {
        *count = op(*count, *more);
    }
    for (bytes, more) in into.bytes.iter_mut().zip(&other.bytes) {
        *bytes = op(*bytes, *more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_wanted_when_an_output_or_the_metrics_need_each_exchange() {
        use EventSelection::*;
        let folding = ExchangeOptions {
            fold: Some(FoldConfig::folding([&[1], &[1], &[1]])),
            justniffer: false,
        };
        let wanted = |options: ExchangeOptions| {
            [None, Anomalies, Connections, Exchanges].map(|s| options.events_wanted(s))
        };
        assert_eq!(wanted(folding), [false, false, false, true]);
        let justniffer = ExchangeOptions {
            justniffer: true,
            ..folding
        };
        assert_eq!(wanted(justniffer), [false, true, true, true]);
        // With no folding the kernel sends every exchange whatever the switch says (it sends
        // those it did not fold): the switch follows the output alone.
        let labels = ExchangeOptions::default();
        assert_eq!(wanted(labels), wanted(folding));
    }

    #[test]
    fn growth_wraps() {
        let mut later = Folds::default();
        later.roles[1].hists[0].sum = 5;
        later.roles[1].bytes[1] = 7;
        let mut earlier = Folds::default();
        earlier.roles[1].hists[0].sum = u64::MAX - 2;
        earlier.roles[1].bytes[1] = 3;
        fold_into(&mut later, &earlier, u64::wrapping_sub);
        assert_eq!(later.roles[1].hists[0].sum, 8);
        assert_eq!(later.roles[1].bytes[1], 4);
    }
}
