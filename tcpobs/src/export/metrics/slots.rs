//! Label slots: how the kernel folds the exchanges of labeled series (`pod`, `namespace`).
//!
//! Those labels depend on a socket's cgroup only, so the kernel can fold an exchange into the
//! right series if it knows which combination of label values the cgroup has: the daemon numbers
//! each combination it meets (a slot, up to [`LABEL_SLOTS`]) and tells the kernel each cgroup's
//! slot as its records show it (`LABEL_SLOTS`, at most [`LABELED_CGROUPS`] cgroups). The data
//! hooks fold an exchange of a socket whose cgroup has a slot into the slot's per-CPU
//! histograms, which the daemon adds to that combination's series; any other exchange (a
//! cgroup not seen yet, every slot taken, the table full) is sent as an event and observed by
//! the daemon, as with the other labels. So nothing is counted twice or lost: an exchange is
//! either folded or sent.
//!
//! The table is kept current ([`LabelSlots::maintain`], every [`REFRESH`]): each cgroup's
//! values are resolved again (a pod whose metadata was not there yet at its first connection,
//! a namespace that left the top N), so a long-lived connection's exchanges move to their
//! current values within [`REFRESH`] as they would with one event each; a cgroup no record
//! has shown for [`EXPIRE`] leaves the table (a container gone; one still busy is back with
//! its next unfolded exchange); and a slot no cgroup has had since a round is freed for other
//! values at a later one, once two complete reads of the folds have followed (so that a fold
//! made as its last cgroup was taken out counts under its old values).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tcpobs_common::folds::{LABEL_SLOTS, LABELED_CGROUPS};

use super::labels::Dims;

/// A change to the kernel's cgroup table: the cgroup's slot, or `None` to take it out.
pub(crate) type SlotWrite = (u64, Option<u32>);

/// How often the cgroups' values are resolved again, expired cgroups removed and unused slots
/// freed.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);

/// A cgroup no record has shown for this long leaves the table.
pub(crate) const EXPIRE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
struct Cgroup {
    slot: u32,
    /// A process of the cgroup (the metadata lookup's hint).
    pid: u32,
    /// When a record last showed it.
    seen: Instant,
}

#[derive(Debug)]
pub(crate) struct LabelSlots {
    /// Each slot's label values (`None`: free).
    values: Vec<Option<Dims>>,
    /// For each slot no cgroup has, the complete reads of the folds when that was found (freed
    /// once two more have been made).
    unused_since: Vec<Option<u64>>,
    /// Complete reads of the slots' folds so far ([`LabelSlots::note_read`]).
    reads: u64,
    by_cgroup: HashMap<u64, Cgroup>,
    /// Changes not yet made to the kernel's table, oldest first.
    writes: Vec<SlotWrite>,
    maintained: Instant,
}

impl Default for LabelSlots {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            unused_since: Vec::new(),
            reads: 0,
            by_cgroup: HashMap::new(),
            writes: Vec::new(),
            maintained: Instant::now(),
        }
    }
}

impl LabelSlots {
    /// Notes that a record of `cgroup` (a process `pid` of it) has the label values `dims`.
    pub(crate) fn assign(&mut self, cgroup: u64, pid: u32, dims: &Dims, now: Instant) {
        if cgroup == 0 {
            return;
        }
        let full = self.by_cgroup.len() >= LABELED_CGROUPS as usize;
        match self.by_cgroup.get_mut(&cgroup) {
            Some(known) => {
                known.seen = now;
                known.pid = pid;
            }
            None if full => return,
            None => {}
        }
        self.place(cgroup, dims, pid, now);
    }

    /// Gives `cgroup` the slot of `dims` (a free one if no slot has them), or takes it out of
    /// the table if every slot is taken.
    fn place(&mut self, cgroup: u64, dims: &Dims, pid: u32, now: Instant) {
        let slot = self.slot_of(dims);
        match (self.by_cgroup.get(&cgroup).map(|known| known.slot), slot) {
            (Some(old), Some(new)) if old == new => {}
            (_, Some(new)) => {
                let seen = self.by_cgroup.get(&cgroup).map_or(now, |known| known.seen);
                self.by_cgroup.insert(
                    cgroup,
                    Cgroup {
                        slot: new,
                        pid,
                        seen,
                    },
                );
                self.writes.push((cgroup, Some(new)));
            }
            (Some(_), None) => {
                self.by_cgroup.remove(&cgroup);
                self.writes.push((cgroup, None));
            }
            (None, None) => {}
        }
    }

    /// The slot that has `dims`, or a free one given them.
    fn slot_of(&mut self, dims: &Dims) -> Option<u32> {
        if let Some(slot) = self
            .values
            .iter()
            .position(|values| values.as_ref() == Some(dims))
        {
            self.unused_since[slot] = None;
            return Some(slot as u32);
        }
        let slot = match self.values.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.values.len() < LABEL_SLOTS as usize => {
                self.values.push(None);
                self.unused_since.push(None);
                self.values.len() - 1
            }
            None => return None,
        };
        self.values[slot] = Some(dims.clone());
        self.unused_since[slot] = None;
        Some(slot as u32)
    }

    /// Notes a read of every slot's folds (after the writes before it were made).
    pub(crate) fn note_read(&mut self) {
        self.reads += 1;
    }

    /// Whether a maintenance round is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now.duration_since(self.maintained) >= REFRESH
    }

    /// Every [`REFRESH`]: resolves each cgroup's values again with `resolve(cgroup, pid)`
    /// (moving it if they changed), takes out cgroups no record has shown for [`EXPIRE`], and
    /// frees the slots no cgroup has had since an earlier round with two complete reads since.
    pub(crate) fn maintain(&mut self, now: Instant, mut resolve: impl FnMut(u64, u32) -> Dims) {
        if !self.due(now) {
            return;
        }
        self.maintained = now;
        let cgroups: Vec<(u64, Cgroup)> = self
            .by_cgroup
            .iter()
            .map(|(&cgroup, &known)| (cgroup, known))
            .collect();
        for (cgroup, known) in cgroups {
            if now.duration_since(known.seen) >= EXPIRE {
                self.by_cgroup.remove(&cgroup);
                self.writes.push((cgroup, None));
            } else {
                let dims = resolve(cgroup, known.pid);
                self.place(cgroup, &dims, known.pid, now);
            }
        }
        let mut held = vec![false; self.values.len()];
        for known in self.by_cgroup.values() {
            held[known.slot as usize] = true;
        }
        for (slot, held) in held.into_iter().enumerate() {
            if held || self.values[slot].is_none() {
                self.unused_since[slot] = None;
                continue;
            }
            match self.unused_since[slot] {
                Some(since) if self.reads >= since + 2 => {
                    self.values[slot] = None;
                    self.unused_since[slot] = None;
                }
                Some(_) => {}
                None => self.unused_since[slot] = Some(self.reads),
            }
        }
    }

    /// The changes to make to the kernel's table since the last call.
    pub(crate) fn take_writes(&mut self) -> Vec<SlotWrite> {
        std::mem::take(&mut self.writes)
    }

    /// How many slots there are to read (free ones among them).
    pub(crate) fn slots(&self) -> u32 {
        self.values.len() as u32
    }

    /// How many slots have values.
    pub(crate) fn used(&self) -> u32 {
        self.values.iter().filter(|values| values.is_some()).count() as u32
    }

    /// How many cgroups have a slot.
    pub(crate) fn cgroups(&self) -> usize {
        self.by_cgroup.len()
    }

    /// A slot's label values.
    pub(crate) fn values(&self, slot: u32) -> Option<&Dims> {
        self.values.get(slot as usize)?.as_ref()
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
        let now = Instant::now();
        let mut slots = LabelSlots::default();
        slots.assign(7, 70, &namespace("shop"), now);
        slots.assign(8, 80, &namespace("shop"), now);
        slots.assign(9, 90, &namespace("auth"), now);
        slots.assign(7, 70, &namespace("shop"), now);
        slots.assign(0, 1, &namespace("shop"), now);
        assert_eq!((slots.used(), slots.cgroups()), (2, 3));
        assert_eq!(slots.values(1), Some(&namespace("auth")));
        assert_eq!(
            slots.take_writes(),
            [(7, Some(0)), (8, Some(0)), (9, Some(1))],
            "once per change; cgroup 0 (unknown) never"
        );
        // The pod metadata arrives, or the namespace leaves the top N: the cgroup moves.
        slots.assign(8, 80, &namespace("other"), now);
        assert_eq!(slots.take_writes(), [(8, Some(2))]);
        assert_eq!(slots.take_writes(), []);
    }

    #[test]
    fn past_the_last_slot_a_cgroup_has_none() {
        let now = Instant::now();
        let mut slots = LabelSlots::default();
        for n in 0..LABEL_SLOTS {
            slots.assign(u64::from(n) + 1, n, &namespace(&format!("ns{n}")), now);
        }
        let _ = slots.take_writes();
        slots.assign(100, 1, &namespace("late"), now);
        assert_eq!(slots.take_writes(), [], "no slot: its exchanges are events");
        // A cgroup with a slot whose values now have none leaves the table.
        slots.assign(1, 0, &namespace("late"), now);
        assert_eq!(slots.take_writes(), [(1, None)]);
        assert_eq!(slots.used(), LABEL_SLOTS);
    }

    #[test]
    fn values_are_resolved_again_and_idle_cgroups_and_slots_let_go() {
        let mut slots = LabelSlots::default();
        let start = Instant::now();
        // Cgroup 7's pod metadata is not there yet at its first connection.
        slots.assign(7, 70, &namespace(""), start);
        slots.assign(8, 80, &namespace("auth"), start);
        let _ = slots.take_writes();
        let current = |cgroup: u64, _pid: u32| {
            namespace(match cgroup {
                7 => "shop",
                9 => "cart",
                _ => "auth",
            })
        };
        slots.maintain(start + REFRESH / 2, current);
        assert_eq!(slots.take_writes(), [], "not due yet");
        // Within a refresh its long-lived connection's exchanges go under its pod's values.
        let first = start + REFRESH;
        slots.maintain(first, current);
        assert_eq!(slots.take_writes(), [(7, Some(2))]);
        assert_eq!(slots.values(0), Some(&namespace("")), "kept one round");
        // Its last folds are read twice over before it goes: one read is not enough.
        slots.note_read();
        let second = first + REFRESH;
        slots.maintain(second, current);
        assert_eq!(slots.values(0), Some(&namespace("")), "one read since");
        slots.note_read();
        let second = second + REFRESH;
        slots.maintain(second, current);
        assert_eq!(slots.values(0), None, "two reads since: freed");
        assert_eq!((slots.used(), slots.slots()), (2, 3));
        // A freed slot takes the next new values.
        slots.assign(9, 90, &namespace("cart"), second);
        assert_eq!(slots.take_writes(), [(9, Some(0))]);
        // A cgroup no record has shown for EXPIRE leaves the table; one just seen stays.
        slots.assign(9, 90, &namespace("cart"), start + EXPIRE);
        slots.maintain(start + EXPIRE, current);
        let mut writes = slots.take_writes();
        writes.sort_unstable();
        assert_eq!(writes, [(7, None), (8, None)]);
        assert_eq!(slots.cgroups(), 1);
    }
}
