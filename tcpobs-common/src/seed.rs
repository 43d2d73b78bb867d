//! What a connection already open when tcpobs starts is seeded with (issue 14 §4): the rules
//! the kernel's `seed_connections` iterator applies, here so that they have host unit tests.
//!
//! - Role: a socket whose local port is a listening port of its network namespace is the
//!   server end, any other on an ephemeral port the client end, and the rest unknown
//!   ([`role_of`]). A server whose listener has closed since (a reload that keeps its
//!   connections) is unknown if its port is below the ephemeral range, as most are.
//! - Teardown: a socket past `ESTABLISHED` tells who sent the first FIN, not when
//!   ([`teardown_of`]).
//! - Bytes: the kernel counts sequence numbers acknowledged (`bytes_acked`) and received in order
//!   (`bytes_received`), which include the SYN an active opener sent and the FINs; the payload
//!   is what is left without them ([`payload_of`]). Bytes sent but not yet acknowledged, and
//!   bytes received that the application has not read yet, are not counted at the seeding, but
//!   as the application writes or reads them.

use crate::{FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, role, tcp_state, teardown};

/// The role of a seeded socket on `local_port`: `listening` when that is a listening port of
/// its network namespace. Any other end is the client if its port is ephemeral (at least
/// `ephemeral_low`, the first port of `ip_local_port_range`; 0 when unknown), else unknown: a
/// port below the range was bound on purpose, most likely by a server whose listener is gone.
#[inline(always)]
pub fn role_of(listening: bool, local_port: u16, ephemeral_low: u16) -> u8 {
    if listening {
        role::SERVER
    } else if local_port >= ephemeral_low {
        role::CLIENT
    } else {
        role::UNKNOWN
    }
}

/// The first sign of teardown and the `FLAG_*` bits a socket in `state` has shown: the peer's
/// FIN came first in `CLOSE_WAIT` and `LAST_ACK` (where the application has closed too), the
/// local one in `FIN_WAIT1`, `FIN_WAIT2` and `CLOSING`.
#[inline(always)]
pub fn teardown_of(state: u8) -> (u8, u8) {
    match state {
        tcp_state::CLOSE_WAIT => (teardown::PEER_FIN, FLAG_CLOSE_WAIT),
        tcp_state::LAST_ACK => (teardown::PEER_FIN, FLAG_CLOSE_WAIT | FLAG_APP_CLOSED),
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING => {
            (teardown::LOCAL_FIN, FLAG_APP_CLOSED)
        }
        _ => (teardown::NONE, 0),
    }
}

/// Payload bytes (sent, received) from the kernel's `bytes_acked` and `bytes_received` of a
/// socket with this role in `state`: without the SYN an active opener sent (a passive opener's
/// SYN-ACK is acknowledged before its socket exists), the local FIN once acknowledged
/// (`FIN_WAIT2`), and the peer's FIN once received (`CLOSE_WAIT`, `LAST_ACK`, `CLOSING`).
#[inline(always)]
pub fn payload_of(role: u8, state: u8, acked: u64, received: u64) -> (u64, u64) {
    let syn = u64::from(role == role::CLIENT);
    let local_fin = u64::from(state == tcp_state::FIN_WAIT2);
    let peer_fin = u64::from(matches!(
        state,
        tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING
    ));
    (
        acked.saturating_sub(syn + local_fin),
        received.saturating_sub(peer_fin),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_the_server_end() {
        assert_eq!(role_of(true, 8080, 32768), role::SERVER);
        assert_eq!(role_of(true, 40000, 32768), role::SERVER);
        assert_eq!(role_of(false, 40000, 32768), role::CLIENT, "ephemeral");
        assert_eq!(
            role_of(false, 32768, 32768),
            role::CLIENT,
            "the first ephemeral"
        );
        assert_eq!(
            role_of(false, 443, 32768),
            role::UNKNOWN,
            "bound on purpose, nobody listens: a server whose listener closed?"
        );
        assert_eq!(role_of(false, 443, 0), role::CLIENT, "range unknown");
    }

    #[test]
    fn the_state_tells_who_closed_first() {
        assert_eq!(teardown_of(tcp_state::ESTABLISHED), (teardown::NONE, 0));
        assert_eq!(
            teardown_of(tcp_state::CLOSE_WAIT),
            (teardown::PEER_FIN, FLAG_CLOSE_WAIT),
            "the peer closed, the application has not"
        );
        assert_eq!(
            teardown_of(tcp_state::LAST_ACK),
            (teardown::PEER_FIN, FLAG_CLOSE_WAIT | FLAG_APP_CLOSED)
        );
        for state in [
            tcp_state::FIN_WAIT1,
            tcp_state::FIN_WAIT2,
            tcp_state::CLOSING,
        ] {
            assert_eq!(teardown_of(state), (teardown::LOCAL_FIN, FLAG_APP_CLOSED));
        }
    }

    /// Figures from this kernel: a client that sent 5 bytes and received 6 has `bytes_acked`
    /// 6 (the SYN counts) and `bytes_received` 6; the server end 6 and 5.
    #[test]
    fn payload_leaves_out_syn_and_fins() {
        assert_eq!(
            payload_of(role::CLIENT, tcp_state::ESTABLISHED, 6, 6),
            (5, 6)
        );
        assert_eq!(
            payload_of(role::SERVER, tcp_state::ESTABLISHED, 6, 5),
            (6, 5)
        );
        assert_eq!(
            payload_of(role::SERVER, tcp_state::CLOSE_WAIT, 6, 6),
            (6, 5),
            "the peer's FIN"
        );
        assert_eq!(
            payload_of(role::CLIENT, tcp_state::FIN_WAIT2, 7, 6),
            (5, 6),
            "the SYN and the acknowledged FIN"
        );
        assert_eq!(
            payload_of(role::CLIENT, tcp_state::FIN_WAIT1, 6, 6),
            (5, 6),
            "the FIN not acknowledged yet"
        );
        assert_eq!(
            payload_of(role::CLIENT, tcp_state::ESTABLISHED, 0, 0),
            (0, 0)
        );
    }
}
