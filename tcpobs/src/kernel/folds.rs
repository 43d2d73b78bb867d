//! The kernel's exchange folding, from the daemon's side (`tcpobs_common::folds`).
//!
//! The data hooks end each exchange when the next request begins and, with no optional metric
//! label, fold its timings into per-CPU histograms with the daemon's own bucket limits
//! ([`ExchangeOptions::fold`], set at load); they count the bytes of every completed burst in
//! any case. [`FoldReader`] reads those totals and hands over what was added since its last
//! read, which the daemon adds to its histograms and counters bucket by bucket: the metrics say
//! what they would have said with one event per exchange.
//!
//! An exchange is also sent as an event while something needs each one
//! ([`ExchangeSwitch`], which follows the runtime event selection): a JSON event or a
//! justniffer line per exchange, or metric labels the kernel cannot resolve (then the kernel
//! does not fold, and the daemon observes every exchange itself).

use std::sync::{Arc, Mutex};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
};
use tcpobs_common::{FoldConfig, Folds, names};

use crate::{
    config::live::EventSelection,
    kernel::report::{MapError, take_map},
    sync::lock,
};

/// How exchanges are handled in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Fold exchanges into histograms with these limits; `None` when the daemon must see each
    /// exchange for its metrics (optional labels).
    pub fold: Option<FoldConfig>,
    /// The output is justniffer lines (one per exchange unless `--events none`).
    pub justniffer: bool,
}

impl ExchangeOptions {
    /// Whether the kernel must send every exchange under this event selection.
    pub(crate) fn events_wanted(&self, selection: EventSelection) -> bool {
        if self.fold.is_none() {
            return true;
        }
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
}

impl FoldReader {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            map: take_map(ebpf, names::FOLDS_MAP)?,
            last: Box::default(),
        })
    }

    /// What was folded since the previous call.
    pub(crate) fn growth(&mut self) -> Result<Box<Folds>, MapError> {
        let per_cpu = self
            .map
            .get(&0, 0)
            .map_err(|err| MapError::new(names::FOLDS_MAP, err))?;
        let mut total = Box::<Folds>::default();
        for folds in per_cpu.iter() {
            fold_into(&mut total, folds, u64::wrapping_add);
        }
        let mut growth = total.clone();
        fold_into(&mut growth, &self.last, u64::wrapping_sub);
        self.last = total;
        Ok(growth)
    }
}

/// Applies `op` to every counter of `into` with the matching one of `other`.
fn fold_into(into: &mut Folds, other: &Folds, op: fn(u64, u64) -> u64) {
    for (role, more) in into.roles.iter_mut().zip(&other.roles) {
        for (slot, more) in role.hists.iter_mut().zip(&more.hists) {
            for (bucket, more) in slot.buckets.iter_mut().zip(&more.buckets) {
                *bucket = op(*bucket, *more);
            }
            slot.sum = op(slot.sum, more.sum);
        }
        for (count, more) in role.exchanges.iter_mut().zip(&more.exchanges) {
            *count = op(*count, *more);
        }
        for (bytes, more) in role.bytes.iter_mut().zip(&more.bytes) {
            *bytes = op(*bytes, *more);
        }
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
        let labels = ExchangeOptions::default();
        assert_eq!(
            wanted(labels),
            [true; 4],
            "no folding: the metrics need them"
        );
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
