//! The floor under the per-program figures: an empty program (`r0 = 0; exit`) attached as a
//! raw tracepoint to each tracepoint tcpobs's hot programs use, measured in the same run. It
//! costs what every program on that tracepoint pays before doing anything: the tracepoint's
//! dispatch to BPF and the program statistics' own clock reads (a raw tracepoint and a
//! `tp_btf` program go through the same `bpf_trace_run` path). A hook's figure minus its
//! tracepoint's floor is what its own code costs.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, OwnedFd},
};

use anyhow::{Result, anyhow};

use super::programs::{self, Snapshot, bpf};

/// The tracepoints, each with the tcpobs program that runs on it as a `tp_btf` program (the
/// classic tracepoint programs go through perf's path, which costs more: no floor for them).
const TRACEPOINTS: [(&str, &str); 4] = [
    ("inet_sock_set_state", "set_state_btf"),
    ("tcp_destroy_sock", "destroy_btf"),
    ("sock_send_length", "send_len_btf"),
    ("sock_recv_length", "recv_len_btf"),
];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `mov64 r0, 0` then `exit`.
const EMPTY: [[u8; 8]; 2] = [encode(0xb7, 0, 0, 0, 0), encode(0x95, 0, 0, 0, 0)];

/// One `struct bpf_insn`: opcode, destination and source registers (low and high nibble),
/// offset, immediate.
pub const fn encode(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let [off0, off1] = off.to_le_bytes();
    let [imm0, imm1, imm2, imm3] = imm.to_le_bytes();
    [code, dst | (src << 4), off0, off1, imm0, imm1, imm2, imm3]
}

/// The empty programs, attached while this lives (program and link descriptors).
pub struct Floor {
    _fds: Vec<OwnedFd>,
}

impl Floor {
    pub fn attach() -> Result<Self> {
        let mut fds = Vec::new();
        for (tracepoint, _) in TRACEPOINTS {
            let program = load_raw_tracepoint(&program_name(tracepoint), &EMPTY)?;
            // A kernel without this tracepoint (sock_*_length came in Linux 6.3) has no floor
            // for it: its row is left out, the rest of the measurement goes on.
            match attach_raw_tracepoint(tracepoint, &program) {
                Ok(link) => fds.extend([program, link]),
                Err(err) => eprintln!("no floor for {tracepoint}: {err}"),
            }
        }
        Ok(Self { _fds: fds })
    }

    /// The floors measured between two snapshots of this process's programs: tracepoint,
    /// runs, ns per run.
    pub fn measured(before: &Snapshot, after: &Snapshot) -> Vec<(&'static str, u64, f64)> {
        let costs = programs::costs(before, after);
        TRACEPOINTS
            .iter()
            .filter_map(|(tracepoint, _)| {
                costs
                    .iter()
                    .find(|cost| cost.name == program_name(tracepoint))
                    .map(|cost| (*tracepoint, cost.runs, cost.ns_per_run))
            })
            .collect()
    }
}

/// The floor under a tcpobs program, among `floors` ([`Floor::measured`]).
pub fn under(floors: &[(&str, u64, f64)], program: &str) -> Option<f64> {
    let (tracepoint, _) = TRACEPOINTS.iter().find(|(_, name)| *name == program)?;
    floors
        .iter()
        .find(|(measured, ..)| measured == tracepoint)
        .map(|&(.., ns)| ns)
}

/// The kernel keeps 15 bytes of a program's name.
fn program_name(tracepoint: &str) -> String {
    let mut name = format!("floor_{tracepoint}");
    name.truncate(15);
    name
}

/// Loads `insns` as a raw tracepoint program named `name` (15 bytes at most, as the kernel
/// keeps). If the verifier refuses it, the error carries the verifier's log.
pub fn load_raw_tracepoint(name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd> {
    if name.len() > 15 {
        return Err(anyhow!("program name {name:?} is longer than 15 bytes"));
    }
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    // log_size, log_buf, kern_version, prog_flags, prog_name[16].
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    bpf(BPF_PROG_LOAD, &attr).or_else(|err| {
        // Again with the verifier's log, to say why.
        let mut log = vec![0u8; 64 * 1024];
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
        attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        let retried = bpf(BPF_PROG_LOAD, &attr);
        let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
        retried.map_err(|_| {
            anyhow!(
                "loading the program {name}: {err}\n{}",
                String::from_utf8_lossy(&log[..end]).trim_end()
            )
        })
    })
}

/// Attaches `program` to `tracepoint` as a raw tracepoint; the link's descriptor.
pub fn attach_raw_tracepoint(tracepoint: &str, program: &OwnedFd) -> Result<OwnedFd> {
    let name = CString::new(tracepoint)?;
    // union bpf_attr for BPF_RAW_TRACEPOINT_OPEN: name (pointer), prog_fd.
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_RAW_TRACEPOINT_OPEN, &attr).map_err(|err| anyhow!("attaching to {tracepoint}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_has_the_floor_of_its_own_tracepoint_only() {
        let floors = [
            ("inet_sock_set_state", 10, 54.0),
            ("sock_recv_length", 2, 43.0),
        ];
        assert_eq!(under(&floors, "set_state_btf"), Some(54.0));
        assert_eq!(under(&floors, "recv_len_btf"), Some(43.0));
        // Measured on another tracepoint, or not a tp_btf program.
        assert_eq!(under(&floors, "send_len_btf"), None);
        assert_eq!(under(&floors, "set_state_tp"), None);
        assert_eq!(program_name("inet_sock_set_state"), "floor_inet_sock");
    }
}
