//! Exchanges folded in the kernel: per-CPU histograms of the per-exchange timings, with the
//! daemon's own bucket limits, so that the daemon adds them to its histograms bucket by bucket
//! and the result is what it would have computed from one event per exchange.
//!
//! The daemon computes each layout's limits exactly as its histograms do (an observation `v`
//! falls in the first bucket whose limit is at least `v`, `+Inf` past the last) and passes them
//! in [`FoldConfig`], padded with `u64::MAX` to [`BUCKETS`]; [`bucket`] finds the bucket with a
//! five-step search. Sums are exact integers (ns); they wrap after 2^64 ns per CPU, which the
//! daemon's reads (at least once a second) take into account with wrapping subtraction.

use crate::role;

/// Per-exchange histograms, in the daemon's order (`Hist::Request` to `Hist::Session`).
pub mod hist {
    /// First to last byte of the request.
    pub const REQUEST: usize = 0;
    /// Last request byte to first response byte.
    pub const FIRST_BYTE: usize = 1;
    /// Last request byte to last response byte.
    pub const RESPONSE: usize = 2;
    /// `ESTABLISHED` to the first request byte (the first exchange of a connection seen from
    /// its start).
    pub const IDLE_BEFORE: usize = 3;
    /// Last response byte to the next request.
    pub const IDLE_AFTER: usize = 4;
    /// First to last response byte.
    pub const TRANSFER: usize = 5;
    /// Connection start to the last response byte.
    pub const SESSION: usize = 6;
    pub const COUNT: usize = 7;
}

/// Bucket layouts ([`FoldConfig::limits`] rows).
pub mod layout {
    /// 50 µs to 60 s.
    pub const LATENCY: usize = 0;
    /// 1 ms to 1 h.
    pub const IDLE: usize = 1;
    /// 1 ms to 1 day.
    pub const LIFETIME: usize = 2;
    pub const COUNT: usize = 3;
}

/// Each histogram's layout, indexed by [`hist`].
pub const LAYOUT: [usize; hist::COUNT] = [
    layout::LATENCY,
    layout::LATENCY,
    layout::LATENCY,
    layout::IDLE,
    layout::IDLE,
    layout::LATENCY,
    layout::LIFETIME,
];

/// Buckets per histogram, `+Inf` included (every layout has fewer limits).
pub const BUCKETS: usize = 32;

/// Exchanges folded, by class ([`RoleFolds::exchanges`]).
pub mod class {
    /// The first exchange of a connection, ended by the next request.
    pub const START: usize = 0;
    /// A later exchange, ended by the next request.
    pub const CONTINUE: usize = 1;
}

/// One histogram: bucket counts (not cumulative) and the exact sum of the observations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistSlot {
    pub buckets: [u64; BUCKETS],
    /// Sum of the observations (ns), wrapping.
    pub sum: u64,
}

/// What the kernel folded for sockets of one role.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleFolds {
    /// Indexed by [`hist`].
    pub hists: [HistSlot; hist::COUNT],
    /// Exchanges folded, indexed by [`class`].
    pub exchanges: [u64; 2],
    /// Payload bytes of completed bursts, `[sent, received]` (every traced socket, folding or
    /// not: the daemon counts only the burst in progress at close).
    pub bytes: [u64; 2],
}

/// The `FOLDS` value (one per CPU), indexed by [`role`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folds {
    pub roles: [RoleFolds; 3],
}

/// Label slots: with `pod`/`namespace` metric labels, the daemon gives each combination of
/// label values a slot (up to this many) and each socket cgroup its combination's slot
/// ([`names::LABEL_SLOTS_MAP`](crate::names::LABEL_SLOTS_MAP)); the data hooks fold the
/// exchanges of a socket whose cgroup has a slot into that slot's [`RoleFolds`]
/// ([`names::LABELED_FOLDS_MAP`](crate::names::LABELED_FOLDS_MAP), per CPU, entry
/// [`labeled_index`]), and send the others as events, which the daemon observes itself.
pub const LABEL_SLOTS: u32 = 16;

/// Socket cgroups the daemon can give a slot (the size of the table).
pub const LABELED_CGROUPS: u32 = 16_384;

/// The `LABELED_FOLDS` entry of a slot and a socket role: clients and servers only (a socket
/// of unknown role has no labeled series to fold into).
#[inline(always)]
pub fn labeled_index(slot: u32, socket_role: u8) -> Option<u32> {
    let side = match socket_role {
        role::CLIENT => 0,
        role::SERVER => 1,
        _ => return None,
    };
    (slot < LABEL_SLOTS).then_some(slot * 2 + side)
}

/// The `FOLD_CONFIG` global, written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldConfig {
    /// Bucket limits per [`layout`], ascending, padded with `u64::MAX`.
    pub limits: [[u64; BUCKETS]; layout::COUNT],
    /// 1 to fold exchanges into the histograms (no optional metric label); 0 when the daemon
    /// observes every exchange itself, or folds them by label slot (`labeled`).
    pub fold: u32,
    /// 1 to fold the exchanges of sockets whose cgroup has a label slot ([`LABEL_SLOTS`]).
    pub labeled: u32,
}

impl FoldConfig {
    /// What the object file holds until the loader writes it: nothing folded.
    pub const UNSET: Self = Self {
        limits: [[u64::MAX; BUCKETS]; layout::COUNT],
        fold: 0,
        labeled: 0,
    };

    /// Folding with these layouts' limits (ascending; at most `BUCKETS - 1` each).
    pub fn folding(layouts: [&[u64]; layout::COUNT]) -> Self {
        let mut config = Self::UNSET;
        for (padded, limits) in config.limits.iter_mut().zip(layouts) {
            padded[..limits.len()].copy_from_slice(limits);
        }
        config.fold = 1;
        config
    }

    /// Folding by label slot with these layouts' limits.
    pub fn folding_labeled(layouts: [&[u64]; layout::COUNT]) -> Self {
        Self {
            fold: 0,
            labeled: 1,
            ..Self::folding(layouts)
        }
    }
}

impl Default for FoldConfig {
    fn default() -> Self {
        Self::UNSET
    }
}

/// The bucket of `value` among `limits` (padded with `u64::MAX`): the index of the first limit
/// that is at least `value`, as the daemon's `partition_point(|limit| limit < value)`; one past
/// the real limits is `+Inf`.
#[inline(always)]
pub fn bucket(limits: &[u64; BUCKETS], value: u64) -> usize {
    let mut base = 0usize;
    for half in [16usize, 8, 4, 2, 1] {
        // Never past 30: base is at most 15 + 8 + 4 + 2 = 29 before the last step.
        if limits[(base + half - 1) & (BUCKETS - 1)] < value {
            base += half;
        }
    }
    base
}

/// The [`Folds::roles`] index of a socket role (its value).
#[inline(always)]
pub fn role_index(socket_role: u8) -> usize {
    match socket_role {
        role::CLIENT => 1,
        role::SERVER => 2,
        _ => 0,
    }
}

impl HistSlot {
    /// Adds one observation.
    #[inline(always)]
    pub fn observe(&mut self, limits: &[u64; BUCKETS], value: u64) {
        let index = bucket(limits, value) & (BUCKETS - 1);
        self.buckets[index] += 1;
        self.sum = self.sum.wrapping_add(value);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;

    #[test]
    fn the_search_is_the_daemons_partition_point() {
        // The daemon's Latency limits (ns), as its histograms compute them.
        let latency: Vec<u64> = [
            50_000u64,
            97_376,
            189_644,
            369_338,
            719_299,
            1_400_855,
            2_728_218,
            5_313_287,
            10_347_687,
            20_152_284,
            39_246_598,
            76_434_089,
            148_857_902,
            289_905_020,
            564_592_946,
            1_099_554_052,
            2_141_382_498,
            4_170_371_567,
            8_121_888_727,
            15_817_524_290,
            30_805_075_466,
            60_000_000_000,
        ]
        .to_vec();
        let counts: Vec<u64> = [
            1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000,
        ]
        .to_vec();
        let full: Vec<u64> = (1..BUCKETS as u64).collect();
        for limits in [&latency, &counts, &full] {
            let config = FoldConfig::folding([limits, &counts, &full]);
            let padded = &config.limits[0];
            let mut values = std::vec![0, 1, u64::MAX - 1, u64::MAX];
            for &limit in limits.iter() {
                values.extend([limit - 1, limit, limit + 1]);
            }
            for value in values {
                assert_eq!(
                    bucket(padded, value),
                    limits.partition_point(|&limit| limit < value),
                    "value {value}"
                );
            }
        }
    }

    #[test]
    fn observations_count_and_sum() {
        let config = FoldConfig::folding([&[10, 20], &[], &[]]);
        let mut slot = HistSlot::default();
        for value in [5, 10, 11, 25, u64::MAX] {
            slot.observe(&config.limits[0], value);
        }
        assert_eq!(slot.buckets[..4], [2, 1, 2, 0]);
        assert_eq!(slot.sum, 5u64 + 10 + 11 + 25 - 1, "wrapping");
        let empty = FoldConfig::folding([&[], &[], &[]]);
        let mut slot = HistSlot::default();
        slot.observe(&empty.limits[0], 7);
        assert_eq!(slot.buckets[0], 1, "no limits: everything is +Inf");
    }
}
