//! tcpobs's kernel programs (DESIGN §2).
//!
//! - [`hooks`]: the programs, one module per hook family, each beside the header that says
//!   which kernel symbol or tracepoint it attaches to and why;
//! - [`record`]: the per-socket record keeping they share, and everything that writes to the
//!   ring buffer;
//! - [`socket`] (reads of `struct sock`), [`filter`] (the kernel-side filters) and [`maps`]
//!   (the shared maps and globals), which the record keeping uses;
//! - [`helpers`]: small wrappers over BPF helpers, imported by all and importing nothing of
//!   this crate.
//!
//! Imports go one way: hooks -> record -> {socket, filter, maps} -> helpers.
#![no_std]
#![no_main]
// `atomic_xadd` for the TLS in-progress counter (see `hooks::libcalls::tls`) and
// `record::store_load_fence`.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics: the only atomic add on this target"
)]

mod filter;
mod helpers;
mod hooks;
mod maps;
mod record;
mod socket;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
