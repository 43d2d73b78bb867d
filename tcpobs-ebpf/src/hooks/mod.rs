//! The programs, one module per hook family (DESIGN §2).
//!
//! Every kernel hook family has programs for up to three attach strategies: fentry/fexit,
//! tracepoints (a `tp_btf` program with raw arguments, and a classic one reading record fields
//! at offsets from tracefs) and kprobes. The daemon attaches, per family, the first strategy
//! that loads (or the one asked for). All feed the same per-socket logic in
//! [`crate::record`]. Each program is thin: it reads its arguments and calls its family's
//! `on_*` function.
//!
//! The libcall families ([`libcalls`]) are uprobes on user-space libraries (the C library's
//! `getaddrinfo`, OpenSSL's handshake functions), attached to every copy the daemon finds.
//!
//! Four programs are not hooks: the [`sampler`], a raw tracepoint program the daemon runs on
//! demand to read live sockets by address; [`opens`], one it runs to flush a CPU's deferred
//! opens; and two iterators the daemon runs once at start-up: [`listeners`] finds the listening
//! sockets opened before it, then [`seed`] the connections.

mod accept;
mod close;
mod connect;
mod data;
mod drops;
pub mod libcalls;
mod listeners;
mod opens;
mod probes;
mod resets;
mod retransmit;
mod sampler;
mod seed;
mod sk_error;
mod state;

use aya_ebpf::programs::TracePointContext;

use crate::socket::{Probe, Sock};

/// Reads a socket pointer from a classic tracepoint record (`resets`, `retransmit`).
#[inline(always)]
fn read_sk(ctx: &TracePointContext, offset: u16) -> Result<Sock<Probe>, u32> {
    // SAFETY: the offset comes from the tracepoint's format file.
    let sk = unsafe { ctx.read_at::<u64>(usize::from(offset)) }.map_err(|_| 1u32)?;
    Ok(Sock::new(sk as *const u8))
}
