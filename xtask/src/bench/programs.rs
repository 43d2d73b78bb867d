//! What tcpobs's kernel programs cost, from the kernel's own program statistics: run count
//! and run time of each program a process holds (`/proc/PID/fdinfo`, with
//! `kernel.bpf_stats_enabled` on while measuring), named through the BPF syscall.
//!
//! The statistics add their own clock reads to every run (about 30-50 ns here), so the
//! figures are an upper bound; they are not taken during the runs whose throughput is
//! compared.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on while this lives (restored on drop).
pub struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    pub fn new() -> Result<Self> {
        let before =
            fs::read_to_string(STATS_SYSCTL).context("reading kernel.bpf_stats_enabled")?;
        fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { before })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, self.before.trim());
    }
}

/// Run count and total run time (ns) by program name, for the programs `pid` holds.
pub type Snapshot = BTreeMap<String, (u64, u64)>;

/// Each program counted once, however many descriptors of it `pid` holds (the daemon keeps a
/// second one of each, to read its skipped runs at scrape time).
pub fn snapshot(pid: u32) -> Result<Snapshot> {
    let mut programs = Snapshot::new();
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim_start_matches(':').trim().parse().ok())
        };
        // Links name their program too: only program file descriptors have run counts.
        let (Some(id), Some(time), Some(count)) =
            (field("prog_id"), field("run_time_ns"), field("run_cnt"))
        else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let name = program_name(id as u32).unwrap_or_else(|_| format!("program {id}"));
        let slot = programs.entry(name).or_default();
        slot.0 += count;
        slot.1 += time;
    }
    Ok(programs)
}

/// One program's cost over a run: runs and ns per run.
pub struct Cost {
    pub name: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// What ran between two snapshots, busiest first.
pub fn costs(before: &Snapshot, after: &Snapshot) -> Vec<Cost> {
    let mut costs: Vec<Cost> = after
        .iter()
        .filter_map(|(name, &(count, time))| {
            let (count_before, time_before) = before.get(name).copied().unwrap_or_default();
            let runs = count.saturating_sub(count_before);
            (runs > 0).then(|| Cost {
                name: name.clone(),
                runs,
                ns_per_run: time.saturating_sub(time_before) as f64 / runs as f64,
            })
        })
        .collect();
    costs.sort_by(|a, b| (b.runs as f64 * b.ns_per_run).total_cmp(&(a.runs as f64 * a.ns_per_run)));
    costs
}

/// `bpf(2)` commands and the offset of `name` in `struct bpf_prog_info` (stable UAPI).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const INFO_NAME: usize = 64;

/// A loaded program's name (`struct bpf_prog_info::name`).
fn program_name(id: u32) -> Result<String> {
    // union bpf_attr for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &attr).with_context(|| format!("program {id}"))?;
    let mut info = [0u8; INFO_NAME + 16];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info (pointer).
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // The kernel writes at most `info_len` bytes into `info`; no descriptor comes back.
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, &attr).with_context(|| format!("program {id}"))?;
    let name = &info[INFO_NAME..];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// A `bpf(2)` command that returns a new descriptor.
pub fn bpf(command: libc::c_long, attr: &[u8; 128]) -> std::io::Result<OwnedFd> {
    let fd = bpf_call(command, attr)?;
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A `bpf(2)` command; its non-negative result.
fn bpf_call(command: libc::c_long, attr: &[u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: the bpf syscall reads `size` bytes of a valid attribute union; every pointer in
    // it (instructions, license, names, an output buffer of the size given) outlives the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_ptr(), attr.len() as u32) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_the_growth_busiest_first() {
        let before = Snapshot::from([("a".to_owned(), (10, 1_000)), ("b".to_owned(), (0, 0))]);
        let after = Snapshot::from([
            ("a".to_owned(), (20, 3_000)),
            ("b".to_owned(), (100, 5_000)),
            ("c".to_owned(), (0, 0)),
        ]);
        let costs = costs(&before, &after);
        let got: Vec<(&str, u64, f64)> = costs
            .iter()
            .map(|c| (c.name.as_str(), c.runs, c.ns_per_run))
            .collect();
        assert_eq!(got, [("b", 100, 50.0), ("a", 10, 200.0)]);
    }
}
