//! A second floor under the state program: what keeping a record per socket in a hash table
//! costs at the least, laid out as tcpobs lays its own on a kernel with `tp_btf` (this host):
//! on `inet_sock_set_state` a program inserts a zeroed record of tcpobs's size (456 bytes,
//! copied from a per-CPU array) when a socket opens (`CLOSE -> SYN_SENT`, `LISTEN -> SYN_RECV`),
//! looks it up and sets a bit in it at every later transition but the last, and does nothing
//! at `-> CLOSE` (as tcpobs's state program returns early there for a closed socket); a second
//! program on `tcp_destroy_sock` deletes it. The table is an LRU hash of tcpobs's default size
//! (`--max-sockets`). They are measured in a churn run of their own, without tcpobs (attached
//! beside it, they would add their cost to the traced runs), with the empty programs of
//! [`super::floor`] in the same run; so what tcpobs's state program costs above this floor is
//! what its own logic costs beyond the table's work, and what the floor costs above the empty
//! program is the table's work.

use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, anyhow};

use super::{
    floor::{attach_raw_tracepoint, encode, load_raw_tracepoint},
    programs::bpf,
};

/// The tracepoints, each with its program's name (15 bytes at most).
pub const PROGRAMS: [(&str, &str); 2] = [
    ("inet_sock_set_state", "floor_rec_state"),
    ("tcp_destroy_sock", "floor_rec_close"),
];

/// tcpobs's `SockRecord`, and its table's default size.
const RECORD_BYTES: u32 = 456;
const TABLE_ENTRIES: u32 = 131_072;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// `enum tcp_state` values the program tests.
const SYN_SENT: i32 = 2;
const SYN_RECV: i32 = 3;
const CLOSE: i32 = 7;
const LISTEN: i32 = 10;

/// The programs, their links and their two maps, attached while this lives.
pub struct RecordFloor {
    _fds: Vec<OwnedFd>,
}

impl RecordFloor {
    pub fn attach() -> Result<Self> {
        let table = create_map(BPF_MAP_TYPE_LRU_HASH, 8, RECORD_BYTES, TABLE_ENTRIES)
            .context("creating the record floor's table")?;
        let zero = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, RECORD_BYTES, 1)
            .context("creating the record floor's zeroed record")?;
        let (table_fd, zero_fd) = (table.as_raw_fd(), zero.as_raw_fd());
        let mut fds = vec![table, zero];
        for ((tracepoint, name), insns) in PROGRAMS
            .into_iter()
            .zip([state_program(table_fd, zero_fd), close_program(table_fd)])
        {
            let program = load_raw_tracepoint(name, &insns)?;
            let link = attach_raw_tracepoint(tracepoint, &program)?;
            fds.extend([program, link]);
        }
        Ok(Self { _fds: fds })
    }
}

fn create_map(map_type: u32, key_size: u32, value_size: u32, entries: u32) -> Result<OwnedFd> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut attr = [0u8; 128];
    for (index, value) in [map_type, key_size, value_size, entries]
        .into_iter()
        .enumerate()
    {
        attr[index * 4..index * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    bpf(BPF_MAP_CREATE, &attr).map_err(|err| anyhow!("BPF_MAP_CREATE: {err}"))
}

/// One instruction of the program, or a jump to a label, or a label.
enum Op {
    Insn([u8; 8]),
    Jump {
        code: u8,
        dst: u8,
        imm: i32,
        to: &'static str,
    },
    Label(&'static str),
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R8: u8 = 8;
const R9: u8 = 9;
const FP: u8 = 10;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Op {
    Op::Insn(encode(code, dst, src, off, imm))
}

fn exit() -> Op {
    insn(0x95, 0, 0, 0, 0)
}

fn load_u64(dst: u8, src: u8, off: i16) -> Op {
    insn(0x79, dst, src, off, 0)
}

fn store_u64(dst: u8, off: i16, src: u8) -> Op {
    insn(0x7b, dst, src, off, 0)
}

fn mov_reg(dst: u8, src: u8) -> Op {
    insn(0xbf, dst, src, 0, 0)
}

fn mov_imm(dst: u8, imm: i32) -> Op {
    insn(0xb7, dst, 0, 0, imm)
}

fn call(helper: i32) -> Op {
    insn(0x85, 0, 0, 0, helper)
}

fn jump_eq(dst: u8, imm: i32, to: &'static str) -> Op {
    Op::Jump {
        code: 0x15,
        dst,
        imm,
        to,
    }
}

fn jump_ne(dst: u8, imm: i32, to: &'static str) -> Op {
    Op::Jump {
        code: 0x55,
        dst,
        imm,
        to,
    }
}

fn jump(to: &'static str) -> Op {
    Op::Jump {
        code: 0x05,
        dst: 0,
        imm: 0,
        to,
    }
}

/// `r1 = map` (`ld_imm64` with `BPF_PSEUDO_MAP_FD`), then `r2 = fp + key_offset`.
fn map_and_key(map_fd: i32, key_offset: i32) -> [Op; 4] {
    [
        insn(0x18, R1, 1, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        mov_reg(R2, FP),
        insn(0x07, R2, 0, 0, key_offset),
    ]
}

const LOOKUP: i32 = 1;
const UPDATE: i32 = 2;
const DELETE: i32 = 3;

/// On `inet_sock_set_state`, whose raw tracepoint context is its arguments, 8 bytes each:
/// `sk`, `oldstate`, `newstate`. The key (`sk`) is at `fp - 8`, the per-CPU array's key at
/// `fp - 16`.
fn state_program(table: i32, zero: i32) -> Vec<[u8; 8]> {
    let mut ops = vec![
        load_u64(R6, R1, 0),
        load_u64(R8, R1, 8),
        load_u64(R9, R1, 16),
        store_u64(FP, -8, R6),
        jump_eq(R9, LISTEN, "exit"),
        jump_eq(R9, CLOSE, "exit"),
        jump_eq(R8, LISTEN, "from_listen"),
        jump_ne(R8, CLOSE, "lookup"),
        jump_eq(R9, SYN_SENT, "insert"),
        jump("lookup"),
        Op::Label("from_listen"),
        jump_eq(R9, SYN_RECV, "insert"),
        jump("exit"),
        Op::Label("lookup"),
    ];
    ops.extend(map_and_key(table, -8));
    ops.extend([
        call(LOOKUP),
        jump_eq(R0, 0, "exit"),
        load_u64(R1, R0, 0),
        insn(0x47, R1, 0, 0, 1),
        store_u64(R0, 0, R1),
        jump("exit"),
        Op::Label("insert"),
    ]);
    ops.push(insn(0x62, FP, 0, -16, 0));
    ops.extend(map_and_key(zero, -16));
    ops.extend([call(LOOKUP), jump_eq(R0, 0, "exit"), mov_reg(R3, R0)]);
    ops.extend(map_and_key(table, -8));
    ops.extend([
        mov_imm(R4, 0),
        call(UPDATE),
        Op::Label("exit"),
        mov_imm(R0, 0),
        exit(),
    ]);
    assemble(&ops)
}

/// On `tcp_destroy_sock`, whose one argument is `sk`: the record's delete.
fn close_program(table: i32) -> Vec<[u8; 8]> {
    let mut ops = vec![load_u64(R6, R1, 0), store_u64(FP, -8, R6)];
    ops.extend(map_and_key(table, -8));
    ops.extend([call(DELETE), mov_imm(R0, 0), exit()]);
    assemble(&ops)
}

/// Resolves the labels: a jump's offset counts instructions from the one after it.
fn assemble(ops: &[Op]) -> Vec<[u8; 8]> {
    let mut labels = Vec::new();
    let mut index = 0i32;
    for op in ops {
        match op {
            Op::Label(name) => labels.push((*name, index)),
            _ => index += 1,
        }
    }
    let target = |name: &str| {
        labels
            .iter()
            .find(|(label, _)| *label == name)
            .map(|&(_, at)| at)
            .unwrap_or_else(|| panic!("no label {name}"))
    };
    let mut insns = Vec::new();
    for op in ops {
        match *op {
            Op::Insn(bytes) => insns.push(bytes),
            Op::Jump { code, dst, imm, to } => {
                let off = i16::try_from(target(to) - (insns.len() as i32 + 1))
                    .expect("a jump within 32,767 instructions");
                insns.push(encode(code, dst, 0, off, imm));
            }
            Op::Label(_) => {}
        }
    }
    insns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_count_from_the_next_instruction() {
        let insns = assemble(&[
            jump("end"),
            mov_imm(R0, 1),
            Op::Label("end"),
            mov_imm(R0, 0),
            jump("end"),
        ]);
        assert_eq!(insns.len(), 4);
        // Forward over one instruction, and back to itself's predecessor.
        assert_eq!(i16::from_le_bytes([insns[0][2], insns[0][3]]), 1);
        assert_eq!(i16::from_le_bytes([insns[3][2], insns[3][3]]), -2);
    }

    #[test]
    fn the_programs_end_with_exit_and_load_their_maps_as_pseudo_fds() {
        let maps = |insns: &[[u8; 8]]| -> Vec<i32> {
            assert_eq!(insns.last().unwrap()[0], 0x95);
            insns
                .iter()
                .filter(|insn| insn[0] == 0x18)
                .map(|insn| {
                    assert_eq!(insn[1] >> 4, 1, "BPF_PSEUDO_MAP_FD");
                    i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]])
                })
                .collect()
        };
        // The lookup, then the zeroed record and the insert.
        assert_eq!(maps(&state_program(7, 9)), [7, 9, 7]);
        assert_eq!(maps(&close_program(7)), [7]);
        for (_, name) in PROGRAMS {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
