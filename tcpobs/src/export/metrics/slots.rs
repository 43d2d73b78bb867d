//! Label slots: how the kernel folds the exchanges of labeled series (`pod`, `namespace`).
//!
//! Those labels depend on a socket's cgroup only, so the kernel can fold an exchange into the
//! right series if it knows which combination of label values the cgroup has: the daemon numbers
//! each combination it meets (a slot, up to [`LABEL_SLOTS`]; a slot keeps its values for good)
//! and tells the kernel each cgroup's slot as its records show it (`LABEL_SLOTS`, at most
//! [`LABELED_CGROUPS`] cgroups). The data hooks fold an exchange of a socket whose cgroup has a
//! slot into the slot's per-CPU histograms, which the daemon adds to that combination's series;
//! any other exchange (a cgroup not seen yet, every slot taken, the table full) is sent as an
//! event and observed by the daemon, as with the other labels. So nothing is counted twice or
//! lost: an exchange is either folded or sent. A cgroup whose values change (a namespace
//! leaving the top N, the pod metadata arriving) moves to the slot of its new values with its
//! next record; what it folded before counts under the old values, as the exchange events
//! observed before would have.

use std::collections::HashMap;

use tcpobs_common::folds::{LABEL_SLOTS, LABELED_CGROUPS};

use super::labels::Dims;

/// A change to the kernel's cgroup table: the cgroup's slot, or `None` to take it out.
pub(crate) type SlotWrite = (u64, Option<u32>);

#[derive(Debug, Default)]
pub(crate) struct LabelSlots {
    /// Each slot's label values.
    values: Vec<Dims>,
    /// Each cgroup's slot, as the kernel has it once the writes are made.
    by_cgroup: HashMap<u64, u32>,
    /// Changes not yet made to the kernel's table, oldest first.
    writes: Vec<SlotWrite>,
}

impl LabelSlots {
    /// Notes that `cgroup`'s records have the label values `dims`.
    pub(crate) fn assign(&mut self, cgroup: u64, dims: &Dims) {
        if cgroup == 0 {
            return;
        }
        let slot = match self.values.iter().position(|values| values == dims) {
            Some(slot) => Some(slot as u32),
            None if self.values.len() < LABEL_SLOTS as usize => {
                self.values.push(dims.clone());
                Some(self.values.len() as u32 - 1)
            }
            None => None,
        };
        match (self.by_cgroup.get(&cgroup).copied(), slot) {
            (Some(old), Some(new)) if old == new => {}
            (old, Some(new)) => {
                if old.is_none() && self.by_cgroup.len() >= LABELED_CGROUPS as usize {
                    return;
                }
                self.by_cgroup.insert(cgroup, new);
                self.writes.push((cgroup, Some(new)));
            }
            (Some(_), None) => {
                self.by_cgroup.remove(&cgroup);
                self.writes.push((cgroup, None));
            }
            (None, None) => {}
        }
    }

    /// The changes to make to the kernel's table since the last call.
    pub(crate) fn take_writes(&mut self) -> Vec<SlotWrite> {
        std::mem::take(&mut self.writes)
    }

    /// How many slots have values.
    pub(crate) fn used(&self) -> u32 {
        self.values.len() as u32
    }

    /// How many cgroups have a slot.
    pub(crate) fn cgroups(&self) -> usize {
        self.by_cgroup.len()
    }

    /// A slot's label values.
    pub(crate) fn values(&self, slot: u32) -> Option<&Dims> {
        self.values.get(slot as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn namespace(value: &str) -> Dims {
        Dims::of_namespace(Arc::from(value))
    }

    #[test]
    fn each_combination_gets_a_slot_and_each_cgroup_its_combination_s() {
        let mut slots = LabelSlots::default();
        slots.assign(7, &namespace("shop"));
        slots.assign(8, &namespace("shop"));
        slots.assign(9, &namespace("auth"));
        slots.assign(7, &namespace("shop"));
        slots.assign(0, &namespace("shop"));
        assert_eq!(slots.used(), 2);
        assert_eq!(slots.values(1), Some(&namespace("auth")));
        assert_eq!(
            slots.take_writes(),
            [(7, Some(0)), (8, Some(0)), (9, Some(1))],
            "once per change; cgroup 0 (unknown) never"
        );
        // The pod metadata arrives, or the namespace leaves the top N: the cgroup moves.
        slots.assign(8, &namespace("other"));
        assert_eq!(slots.take_writes(), [(8, Some(2))]);
        assert_eq!(slots.take_writes(), []);
    }

    #[test]
    fn past_the_last_slot_a_cgroup_has_none() {
        let mut slots = LabelSlots::default();
        for n in 0..LABEL_SLOTS {
            slots.assign(u64::from(n) + 1, &namespace(&format!("ns{n}")));
        }
        let _ = slots.take_writes();
        slots.assign(100, &namespace("late"));
        assert_eq!(slots.take_writes(), [], "no slot: its exchanges are events");
        // A cgroup with a slot whose values now have none leaves the table.
        slots.assign(1, &namespace("late"));
        assert_eq!(slots.take_writes(), [(1, None)]);
        assert_eq!(slots.used(), LABEL_SLOTS);
    }
}
