//! Libcalls: the calls an application makes into user-space libraries around a connection,
//! seen by uprobes (`--phases`): name resolution ([`dns`]) and the TLS handshake ([`tls`]).

mod dns;
pub mod tls;
