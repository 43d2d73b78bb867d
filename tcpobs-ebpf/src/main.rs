//! tcpobs's kernel programs: one module per hook family (DESIGN §2).
//!
//! Every hook family has programs for up to three attach strategies (DESIGN §2): fentry/fexit,
//! tracepoints (a `tp_btf` program with raw arguments, and a classic one reading record fields
//! at offsets from tracefs) and kprobes. The daemon attaches, per family, the first strategy
//! that loads (or the one asked for). All feed the same per-socket logic in [`track`].
//!
//! The phase families ([`dns`], [`tls`]) are uprobes on user-space libraries (the C library's
//! `getaddrinfo`, OpenSSL's handshake functions), attached to every copy the daemon finds.
#![no_std]
#![no_main]
// `atomic_xadd` for the TLS in-progress counter (see `tls`).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics: the only atomic add on this target"
)]

mod close;
mod connect;
mod data;
mod dns;
mod errors;
mod filter;
mod maps;
mod resets;
mod retransmit;
mod sock;
mod state;
mod tls;
mod track;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
