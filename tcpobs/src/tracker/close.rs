//! How a connection ended: originator, kind, connect failures (DESIGN §3, "Close").
//!
//! - The side that sent the first FIN or RST closed first: `ESTABLISHED -> FIN_WAIT1` or a
//!   reset sent is local, `ESTABLISHED -> CLOSE_WAIT` or a reset received is the peer. Local and
//!   peer map to client and server through the socket's role.
//! - The kind is `timeout` when the kernel gave up (`sk_err == ETIMEDOUT`; the originator is
//!   then `timeout` unless a side had already closed), `rst` when any reset was exchanged,
//!   `fin` for an orderly close, `error` for anything else.
//! - A socket that never left `SYN_SENT`/`SYN_RECV` is a connect failure: `refused` (a reset
//!   answered the SYN), `timeout`, `unreachable` (ICMP, or, where the application took the
//!   error before any hook read it, the kernel dropped the SYN for want of a neighbour or a
//!   route), or `other`.

use tcpobs_common::{
    FLAG_APP_CLOSED, FLAG_CLOSE_WAIT, FLAG_RST_RECV, FLAG_RST_SENT, SockRecord, diag::have,
    tcp_state, teardown,
};

use super::KernelFacts;
use crate::model::{
    Close, CloseKind, CloseOriginator, ConnectFailure, Diagnosis, DiagnosisParts, ECONNREFUSED,
    ETIMEDOUT, Role, Side, drop_reason_name,
};

/// Retransmitted segments, as the kernel counts them (`TcpRetransSegs`): its own
/// `total_retrans` where it was read (SYN and SYN-ACK retransmits included), else the
/// segments the retransmit hook counted.
pub(super) fn retransmits_of(rec: &SockRecord) -> u32 {
    if rec.tcp.valid != 0 {
        rec.tcp.total_retrans
    } else {
        rec.retransmits
    }
}

/// What the kernel's record says about why the connection was slow or stuck.
pub(super) fn diagnosis_of(rec: &SockRecord, role: Role, facts: &KernelFacts) -> Diagnosis {
    let d = &rec.diag;
    let chrono = d.chrono_ns(facts.hz);
    DiagnosisParts {
        syn_retransmits: match role {
            Role::Client => Some(d.syn_retrans),
            // The child socket starts with the request's retransmits (`tcp_create_openreq_child`
            // copies `req->num_retrans` into `total_retrans`); the hook saw the rest.
            Role::Server if rec.tcp.valid != 0 => {
                Some(rec.tcp.total_retrans.saturating_sub(rec.retransmits))
            }
            _ => None,
        },
        busy_ns: chrono.map(|(busy, _, _)| busy),
        rwnd_limited_ns: chrono.map(|(_, rwnd, _)| rwnd),
        sndbuf_limited_ns: chrono.map(|(_, _, sndbuf)| sndbuf),
        rto_count: (d.have & have::RTO != 0).then_some(d.total_rto),
        accept_wait_ns: (role == Role::Server
            && d.accept_ns != 0
            && rec.established_ns != 0
            && d.accept_ns >= rec.established_ns)
            .then(|| d.accept_ns - rec.established_ns),
        packet_drops: d.drops,
        drop_reason: (d.drops != 0).then_some(d.drop_reason),
        zero_window_probes: facts.probes.then_some(d.probes0),
    }
    .into()
}

const ENETUNREACH: u32 = 101;
const EHOSTDOWN: u32 = 112;
const EHOSTUNREACH: u32 = 113;

/// Derives the close of a connection from its final kernel record.
pub(super) fn close_of(rec: &SockRecord, role: Role) -> Close {
    let closed_by = match rec.first_teardown {
        teardown::LOCAL_FIN | teardown::LOCAL_RST => Some(Side::Local),
        teardown::PEER_FIN | teardown::PEER_RST => Some(Side::Peer),
        _ => None,
    };
    let rst = match rec.first_teardown {
        teardown::LOCAL_RST => Some(Side::Local),
        teardown::PEER_RST => Some(Side::Peer),
        _ if rec.flags & FLAG_RST_SENT != 0 => Some(Side::Local),
        _ if rec.flags & FLAG_RST_RECV != 0 => Some(Side::Peer),
        _ => None,
    };
    let kind = if rec.sk_err == ETIMEDOUT {
        CloseKind::Timeout
    } else if rst.is_some() {
        CloseKind::Rst
    } else if closed_by.is_some() {
        CloseKind::Fin
    } else {
        CloseKind::Error
    };
    let originator = match closed_by {
        // The keep-alive timer resets the connection as it gives up: the kernel timed out,
        // nobody closed.
        Some(Side::Local)
            if kind == CloseKind::Timeout && rec.first_teardown == teardown::LOCAL_RST =>
        {
            CloseOriginator::Timeout
        }
        Some(side) => CloseOriginator::from_side(side, role),
        None if kind == CloseKind::Timeout => CloseOriginator::Timeout,
        None => CloseOriginator::Unknown,
    };
    let close_wait = rec.flags & FLAG_CLOSE_WAIT != 0 && rec.close_wait_ns != 0;
    let app_closed = rec.flags & FLAG_APP_CLOSED != 0;
    Close {
        at_ns: rec.close_ns,
        originator,
        closed_by,
        kind,
        rst,
        final_state: rec.final_state,
        teardown_ns: (rec.teardown_ns != 0).then(|| rec.close_ns.saturating_sub(rec.teardown_ns)),
        close_wait_ns: close_wait.then(|| {
            let end = if app_closed && rec.app_close_ns >= rec.close_wait_ns {
                rec.app_close_ns
            } else {
                rec.close_ns
            };
            end.saturating_sub(rec.close_wait_ns)
        }),
        close_wait_unclosed: close_wait && !app_closed,
        errno: rec.sk_err,
    }
}

/// Why the handshake failed, if the socket never got past it.
pub(super) fn connect_failure_of(rec: &SockRecord) -> Option<ConnectFailure> {
    if !matches!(rec.final_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV) {
        return None;
    }
    Some(match rec.sk_err {
        _ if rec.flags & FLAG_RST_RECV != 0 => ConnectFailure::Refused,
        ECONNREFUSED => ConnectFailure::Refused,
        ETIMEDOUT => ConnectFailure::Timeout,
        ENETUNREACH | EHOSTUNREACH | EHOSTDOWN => ConnectFailure::Unreachable,
        0 if dropped_as_unreachable(rec) => ConnectFailure::Unreachable,
        _ => ConnectFailure::Other,
    })
}

/// Drop reasons (`enum skb_drop_reason`) that say a packet could not leave because the peer has
/// no route or no link-layer neighbour: the kernel's own verdict of "unreachable".
const UNREACHABLE_DROPS: [&str; 3] = ["neigh_failed", "neigh_createfail", "ip_outnoroutes"];

/// Whether the handshake's packets were dropped as unreachable. The kernel sets `sk_err` and
/// wakes the application (`tcp_v4_err()`) before it moves the socket to `CLOSE`; an application
/// on another CPU can take the error in between (`getsockopt(SO_ERROR)`), and where the errors
/// family runs after the wake-up (the `inet_sk_error_report` tracepoint) or is missing, no
/// hook sees it. The SYN's drop, counted by the drops family, still says why.
fn dropped_as_unreachable(rec: &SockRecord) -> bool {
    rec.diag.drops != 0 && UNREACHABLE_DROPS.contains(&&*drop_reason_name(rec.diag.drop_reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(first_teardown: u8, flags: u8, sk_err: u32) -> SockRecord {
        SockRecord {
            start_ns: 1_000,
            established_ns: 2_000,
            teardown_ns: 10_000,
            close_ns: 12_000,
            first_teardown,
            flags,
            sk_err,
            final_state: tcp_state::LAST_ACK,
            ..Default::default()
        }
    }

    #[test]
    fn fin_from_either_side() {
        let close = close_of(
            &record(teardown::LOCAL_FIN, FLAG_APP_CLOSED, 0),
            Role::Client,
        );
        assert_eq!(close.kind, CloseKind::Fin);
        assert_eq!(close.originator, CloseOriginator::Client);
        assert_eq!(close.closed_by, Some(Side::Local));
        assert_eq!(close.teardown_ns, Some(2_000));
        assert_eq!(close.rst, None);

        let close = close_of(&record(teardown::PEER_FIN, 0, 0), Role::Client);
        assert_eq!(close.originator, CloseOriginator::Server);
        let close = close_of(&record(teardown::PEER_FIN, 0, 0), Role::Server);
        assert_eq!(close.originator, CloseOriginator::Client);
        let close = close_of(&record(teardown::PEER_FIN, 0, 0), Role::Unknown);
        assert_eq!(close.originator, CloseOriginator::Unknown);
        assert_eq!(close.closed_by, Some(Side::Peer));
    }

    #[test]
    fn resets_make_the_kind_rst() {
        let close = close_of(&record(teardown::LOCAL_RST, FLAG_RST_SENT, 0), Role::Client);
        assert_eq!(
            (close.kind, close.originator),
            (CloseKind::Rst, CloseOriginator::Client)
        );
        assert_eq!(close.rst, Some(Side::Local));

        let close = close_of(
            &record(teardown::PEER_RST, FLAG_RST_RECV, 104),
            Role::Server,
        );
        assert_eq!(
            (close.kind, close.originator),
            (CloseKind::Rst, CloseOriginator::Client)
        );

        // FIN first, then a reset (data arrived after close): still closed by the FIN sender.
        let close = close_of(&record(teardown::PEER_FIN, FLAG_RST_SENT, 0), Role::Client);
        assert_eq!(
            (close.kind, close.originator),
            (CloseKind::Rst, CloseOriginator::Server)
        );
        assert_eq!(close.rst, Some(Side::Local));
    }

    #[test]
    fn kernel_timeouts() {
        let close = close_of(&record(teardown::NONE, 0, ETIMEDOUT), Role::Client);
        assert_eq!(
            (close.kind, close.originator),
            (CloseKind::Timeout, CloseOriginator::Timeout)
        );
        assert_eq!(close.teardown_ns, Some(2_000));
        // Keep-alive timeouts also send a reset; the cause is still the timeout.
        let close = close_of(
            &record(teardown::LOCAL_RST, FLAG_RST_SENT, ETIMEDOUT),
            Role::Client,
        );
        assert_eq!(close.kind, CloseKind::Timeout);
    }

    #[test]
    fn close_wait_duration_and_leak() {
        let mut rec = record(teardown::PEER_FIN, FLAG_CLOSE_WAIT | FLAG_APP_CLOSED, 0);
        rec.close_wait_ns = 10_000;
        rec.app_close_ns = 10_500;
        let close = close_of(&rec, Role::Server);
        assert_eq!(close.close_wait_ns, Some(500));
        assert!(!close.close_wait_unclosed);

        // The peer closed, then reset; the application never closed its end.
        rec.flags = FLAG_CLOSE_WAIT | FLAG_RST_RECV;
        rec.app_close_ns = 0;
        let close = close_of(&rec, Role::Server);
        assert_eq!(close.close_wait_ns, Some(2_000));
        assert!(close.close_wait_unclosed);
    }

    #[test]
    fn connect_failures() {
        let failed = |flags, sk_err| {
            connect_failure_of(&SockRecord {
                final_state: tcp_state::SYN_SENT,
                flags,
                sk_err,
                ..Default::default()
            })
        };
        assert_eq!(
            failed(FLAG_RST_RECV, ECONNREFUSED),
            Some(ConnectFailure::Refused)
        );
        assert_eq!(failed(0, ETIMEDOUT), Some(ConnectFailure::Timeout));
        assert_eq!(failed(0, EHOSTUNREACH), Some(ConnectFailure::Unreachable));
        assert_eq!(failed(0, 0), Some(ConnectFailure::Other));
        assert_eq!(connect_failure_of(&record(teardown::LOCAL_FIN, 0, 0)), None);
    }

    #[test]
    fn a_lost_error_is_read_from_the_syns_drop() {
        // The only test that names drop reasons (the values are made up).
        let mut names = vec![None; 42];
        names[6] = Some("netfilter_drop".into());
        names[41] = Some("neigh_failed".into());
        crate::model::set_drop_reason_names(names);
        let failed = |sk_err, drops, drop_reason| {
            let mut rec = SockRecord {
                final_state: tcp_state::SYN_SENT,
                sk_err,
                ..Default::default()
            };
            rec.diag.drops = drops;
            rec.diag.drop_reason = drop_reason;
            connect_failure_of(&rec)
        };
        assert_eq!(failed(0, 1, 41), Some(ConnectFailure::Unreachable));
        // A firewall's drop is not the peer being unreachable, and the kernel's own error wins.
        assert_eq!(failed(0, 1, 6), Some(ConnectFailure::Other));
        assert_eq!(failed(ETIMEDOUT, 3, 41), Some(ConnectFailure::Timeout));
        assert_eq!(failed(0, 0, 41), Some(ConnectFailure::Other));
    }
}
