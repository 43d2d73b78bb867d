//! Deferred opens, the daemon's side (`tcpobs_common::PendingList`): the programs may defer
//! opens only while the daemon can take entries out of a CPU's list, with the `flush_opens`
//! program. The daemon flushes the lists that have waited [`OPEN_DEFER_NS`] (a CPU where no
//! connection has been established since: a busy one takes its own entries out), every list
//! when the reader goes idle (and once more when it stops its timer), and every list before it
//! stops reading. A connection whose open is deferred is therefore unknown to the daemon (its
//! live table, the open connections gauge, `/connections`) for up to about twice
//! [`OPEN_DEFER_NS`] (a run that finds a list busy waits for the next look, or sweep), unless
//! it closes first: its close then stands for its open.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use tcpobs_common::{OPEN_DEFER_NS, OPENS_PER_FLUSH, PENDING_OPEN_SLOTS, PendingList, names};
use tracing::warn;

use crate::kernel::{
    loader::families::FLUSH_OPENS_PROGRAM,
    report::{ProgramFailure, error_chain, program_mut, take_map},
};

/// How often the lists are looked at.
const CHECK_EVERY: Duration = Duration::from_nanos(OPEN_DEFER_NS);

/// The switch, the lists' counters and their flush program.
pub(crate) struct DeferredOpens {
    allowed: Array<MapData, u32>,
    lists: PerCpuArray<MapData, PendingList>,
    checked: Instant,
    /// Each CPU's `tail` at the last look (empty before the first).
    seen: Vec<u32>,
    /// A flush failed: deferring is off (warned).
    failed: bool,
}

impl DeferredOpens {
    /// Loads the flush program, takes the maps and allows the programs to defer opens; why
    /// not, if any of it fails (the programs then send every open at once).
    pub(crate) fn start(ebpf: &mut Ebpf) -> Result<Self, String> {
        let program: &mut RawTracePoint =
            program_mut(ebpf, FLUSH_OPENS_PROGRAM).map_err(|err| err.to_string())?;
        program
            .load()
            .map_err(|err| ProgramFailure::from(err).to_string())?;
        let mut opens = Self {
            allowed: take_map(ebpf, names::DEFER_OPENS_MAP).map_err(|err| err.to_string())?,
            lists: take_map(ebpf, names::PENDING_LISTS_MAP).map_err(|err| err.to_string())?,
            checked: Instant::now(),
            seen: Vec::new(),
            failed: false,
        };
        opens
            .allowed
            .set(0, 1, 0)
            .map_err(|err| format!("{}: {err}", names::DEFER_OPENS_MAP))?;
        Ok(opens)
    }

    /// Flushes the lists that have waited long enough, if it is time to look: those that still
    /// hold an entry they held at the last look, [`CHECK_EVERY`] ago or more (the entries'
    /// own times are not read: the look copies each CPU's counters only).
    pub(crate) fn tick(&mut self, ebpf: &Ebpf) {
        if self.checked.elapsed() < CHECK_EVERY {
            return;
        }
        self.checked = Instant::now();
        let mut seen = std::mem::take(&mut self.seen);
        self.flush(ebpf, |cpu, list| {
            let due = seen.get(cpu).is_some_and(|&tail| waited(tail, list));
            match seen.get_mut(cpu) {
                Some(tail) => *tail = list.tail,
                None => seen.push(list.tail),
            }
            due
        });
        self.seen = seen;
    }

    /// Flushes every list: the reader is about to wait for the kernel's next event (the
    /// programs defer nothing while it waits), and a deferred open is not one.
    pub(crate) fn flush_all(&mut self, ebpf: &Ebpf) {
        self.flush(ebpf, |_, _| true);
    }

    /// No more deferring: flushes every list (twice, for an open deferred by a program that
    /// read the switch just before it turned). What a program still held on its CPU at both
    /// flushes (microseconds wide) stays unreported if its connection outlives the daemon.
    pub(crate) fn stop(&mut self, ebpf: &Ebpf) {
        self.disallow();
        for _ in 0..2 {
            self.flush(ebpf, |_, _| true);
        }
    }

    fn disallow(&mut self) {
        if let Err(err) = self.allowed.set(0, 0, 0) {
            warn!("deferred opens: turning them off: {err}");
        }
    }

    /// Runs the flush program on every CPU whose list `due` picks (it sees every CPU's, in
    /// order, waiting or not), as many times as its
    /// entries need (a run that finds the list busy, or the ring buffer full, is tried again,
    /// up to twice the runs a full list needs). If a run fails, the programs stop deferring
    /// opens (warned once) and the other CPUs' lists are still flushed: what is left on the
    /// failing CPU's list is announced by the connections' next events, or stood for by their
    /// closes.
    fn flush(&mut self, ebpf: &Ebpf, mut due: impl FnMut(usize, &PendingList) -> bool) {
        let lists = match self.lists.get(&0, 0) {
            Ok(lists) => lists,
            Err(err) => {
                self.fail(&format!("reading the lists: {err}"));
                return;
            }
        };
        for (cpu, list) in lists.iter().enumerate() {
            if !due(cpu, list) || list.waiting() == 0 {
                continue;
            }
            let mut runs = (list.waiting() as usize)
                .min(PENDING_OPEN_SLOTS)
                .div_ceil(OPENS_PER_FLUSH);
            for _ in 0..2 * PENDING_OPEN_SLOTS / OPENS_PER_FLUSH {
                match run_on(ebpf, cpu as u32) {
                    Ok(true) => runs -= 1,
                    Ok(false) => {}
                    Err(err) => {
                        self.fail(&format!("flushing CPU {cpu}: {err}"));
                        break;
                    }
                }
                if runs == 0 {
                    break;
                }
            }
        }
    }

    fn fail(&mut self, why: &str) {
        if !self.failed {
            self.failed = true;
            warn!("deferred opens: {why}; every open is sent at once from now on");
            self.disallow();
        }
    }
}

/// Whether `list` still holds an entry it held when its tail was `tail` (its head has not
/// passed that tail). The counters wrap.
fn waited(tail: u32, list: &PendingList) -> bool {
    (tail.wrapping_sub(list.head) as i32) > 0
}

/// One run of the flush program on `cpu`: whether it took out what it could (false: the list
/// was busy, or the ring buffer full).
fn run_on(ebpf: &Ebpf, cpu: u32) -> Result<bool, String> {
    let program: &RawTracePoint = ebpf
        .program(FLUSH_OPENS_PROGRAM)
        .ok_or("the program is gone")?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| err.to_string())?;
    program
        .test_run(RawTracePointRunOptions {
            args: [0; 12],
            cpu: Some(cpu),
        })
        .map(|result| result.return_value == 0)
        .map_err(|err| error_chain(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(head: u32, tail: u32) -> PendingList {
        PendingList {
            head,
            tail,
            ..PendingList::default()
        }
    }

    #[test]
    fn a_list_is_due_while_it_holds_an_entry_it_held_at_the_last_look() {
        // The last look saw tail 10: entries up to the tenth were there.
        assert!(waited(10, &list(9, 12)), "the tenth entry is still waiting");
        assert!(!waited(10, &list(10, 12)), "only entries put in since");
        assert!(!waited(10, &list(10, 10)), "empty");
        assert!(
            !waited(10, &list(12, 12)),
            "emptied, then refilled and emptied"
        );
        // Across the counters' wrap.
        assert!(waited(2, &list(u32::MAX, 3)));
        assert!(!waited(u32::MAX, &list(u32::MAX, 3)));
        assert!(!waited(u32::MAX, &list(1, 3)));
    }
}
