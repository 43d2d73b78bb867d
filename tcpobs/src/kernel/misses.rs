//! Program runs the kernel skipped. The kernel does not start a BPF program where running it
//! would nest: an fentry, `tp_btf` or raw tracepoint program is skipped on a CPU where the same
//! program is already running (an interrupt firing the same hook during its run), a kprobe or
//! classic tracepoint program on a CPU where any such program is running (any tool's). Each
//! skipped run is counted in the program's `recursion_misses`, which `/proc/self/fdinfo` shows
//! for its file descriptor: since Linux 5.12 for fentry, about 6.2 for `tp_btf`, about 6.7 for
//! kprobes and classic tracepoints (0 before). Under a flood of closes this happens to the
//! state and close programs, and the transitions they would have seen are unseen: the counts
//! are exported, and the stall check finds the records left behind.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use aya::Ebpf;

/// The loaded programs, by name (sorted), through descriptors of their own (so that the
/// counts stay readable whatever becomes of the loaded object), read at scrape time.
#[derive(Debug, Default)]
pub(crate) struct ProgramMisses {
    programs: Vec<(String, OwnedFd)>,
}

impl ProgramMisses {
    /// Every program of `ebpf` whose descriptor could be duplicated.
    pub(crate) fn of(ebpf: &Ebpf) -> Self {
        let mut programs: Vec<_> = ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().try_clone_to_owned().ok()?;
                Some((name.to_owned(), fd))
            })
            .collect();
        programs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self { programs }
    }

    /// Each program's skipped runs, by name; 0 where the kernel does not count them.
    pub(crate) fn read(&self) -> impl Iterator<Item = (&str, u64)> {
        self.programs.iter().map(|(name, fd)| {
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()));
            (
                name.as_str(),
                info.map_or(0, |info| recursion_misses(&info)),
            )
        })
    }
}

/// The `recursion_misses` line of a program's fdinfo; 0 if absent (before Linux 5.12).
fn recursion_misses(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fdinfo_line() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                    recursion_misses:\t216\nverified_insns:\t1234\n";
        assert_eq!(recursion_misses(info), 216);
        assert_eq!(
            recursion_misses("prog_type:\t26\nrun_cnt:\t0\n"),
            0,
            "Linux 5.10"
        );
    }
}
