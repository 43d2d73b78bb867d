//! Connections older than tcpobs (issue 14 §4): the `seed_connections` iterator
//! (`iter/task_file`, Linux 5.8), run once at start-up after the hook families are attached and
//! the `find_listeners` iterator has noted the listening ports of every network namespace.
//!
//! It gives each connection that some process holds open a record in the kernel's socket table
//! (role from the listening ports, owner, state, byte counters) and announces it with a partial
//! open event (`already_open`), so the live table and the hang detector know it at once and
//! its later exchanges are timed and classified like any other's. See
//! `tcpobs-ebpf/src/record.rs` (`seed`) for what is known and what is not.

use std::io::Read as _;

use aya::{Btf as AyaBtf, Ebpf, maps::PerCpuArray, programs::Iter};
use tcpobs_common::{names, stat};

use crate::kernel::{
    loader::families::SEED_ITERATOR,
    report::{error_chain, program_mut},
};

/// Runs the iterator once; returns how many connections it seeded (traced ones, not those the
/// filters exclude).
pub(crate) fn seed_connections(ebpf: &mut Ebpf, btf: &AyaBtf) -> Result<u64, String> {
    let before = seeded(ebpf)?;
    let iter: &mut Iter = program_mut(ebpf, SEED_ITERATOR).map_err(|e| e.to_string())?;
    iter.load("task_file", btf).map_err(|e| error_chain(&e))?;
    let link = iter.attach().map_err(|e| error_chain(&e))?;
    let link = iter.take_link(link).map_err(|e| error_chain(&e))?;
    let mut file = link.into_file().map_err(|e| error_chain(&e))?;
    file.read_to_end(&mut Vec::new())
        .map_err(|e| e.to_string())?;
    Ok(seeded(ebpf)?.saturating_sub(before))
}

/// The kernel's count of seeded connections, summed over CPUs.
fn seeded(ebpf: &Ebpf) -> Result<u64, String> {
    let map = ebpf
        .map(names::STATS_MAP)
        .ok_or_else(|| format!("no {} map", names::STATS_MAP))?;
    let stats = PerCpuArray::<_, u64>::try_from(map).map_err(|e| e.to_string())?;
    let values = stats.get(&stat::SEEDED, 0).map_err(|e| e.to_string())?;
    Ok(values.iter().sum())
}
