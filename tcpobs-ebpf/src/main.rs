//! tcpobs's kernel programs: one module per hook family (DESIGN §2).
//!
//! Every hook has two programs: a `tp_btf` one (raw arguments, cheapest) and a classic
//! tracepoint one (record fields at offsets read from tracefs). The daemon attaches the first
//! that loads. Both feed the same per-socket logic in [`track`].
#![no_std]
#![no_main]

mod close;
mod data;
mod filter;
mod maps;
mod resets;
mod retransmit;
mod sock;
mod state;
mod track;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
