//! Connections older than tcpobs: a BPF iterator over every open file of every process, run
//! once at start-up, after the hook families are attached and the listeners found
//! ([`super::listeners`]).
//!
//! `seed_connections` is an `iter/task_file` program (Linux 5.8), like `find_listeners`: the
//! kernel calls it for each (task, fd, file) of the processes in tcpobs's PID namespace,
//! whatever their network namespace, so one pass covers every namespace that has a process
//! holding a socket (a BPF TCP iterator, `iter/tcp`, walks only the namespace of the process
//! that creates it). It seeds a record for each TCP socket in a connected state that has none
//! yet ([`crate::record::seed`]): the first process found holding it is its owner. Sockets no
//! process holds (orphans after `close()`, children still in the accept queue) are left to
//! the hooks, which adopt them when they next see them.

use core::ffi::c_void;

use tcpobs_common::tcp_state;

use super::listeners::{socket_of, task_and_file};
use crate::{
    maps::offsets,
    record::seed,
    socket::{Probe, Sock},
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn seed_connections(ctx: *mut c_void) -> i32 {
    if let Some((task, file)) = task_and_file(ctx) {
        visit(task, file);
    }
    0
}

#[inline(never)]
fn visit(task: u64, file: u64) {
    let o = offsets();
    let Some(sk) = socket_of(o, file) else {
        return;
    };
    let sock = Sock::<Probe>::new(sk as *const u8);
    let state = sock.state(o);
    // Connecting sockets are left to the state family, which knows their role at
    // `ESTABLISHED`; the others are past the handshake.
    if !matches!(
        state,
        tcp_state::ESTABLISHED
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSE_WAIT
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING
    ) || !sock.is_tcp(o)
    {
        return;
    }
    seed(o, sock, state, task);
}
