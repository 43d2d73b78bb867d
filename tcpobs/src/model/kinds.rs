//! The closed sets of values a record is classified by: role, side, close originator and
//! kind, connect failure, exchange class, partial reason; and names for the kernel's TCP
//! states and errno values.

use tcpobs_common::{role, tcp_state};

/// Which end of the connection this socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Active open: this socket sent the SYN. Requests are the bytes it sends.
    Client,
    /// Passive open: this socket accepted. Requests are the bytes it receives.
    Server,
    /// Already open when first seen: nobody knows, and tcpobs does not guess.
    Unknown,
}

impl Role {
    pub fn from_kernel(value: u8) -> Self {
        match value {
            role::CLIENT => Self::Client,
            role::SERVER => Self::Server,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Unknown => "unknown",
        }
    }
}

/// This socket or the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Local,
    Peer,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
        }
    }
}

/// Who ended the connection (justniffer's `%close.originator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseOriginator {
    Client,
    Server,
    /// The kernel gave up (retransmission or keep-alive timeout).
    Timeout,
    /// The role is unknown, or nobody sent FIN or RST.
    Unknown,
}

impl CloseOriginator {
    /// Maps the side that closed first to client/server through the socket's role.
    pub fn from_side(side: Side, role: Role) -> Self {
        match (side, role) {
            (Side::Local, Role::Client) | (Side::Peer, Role::Server) => Self::Client,
            (Side::Local, Role::Server) | (Side::Peer, Role::Client) => Self::Server,
            (_, Role::Unknown) => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Timeout => "timeout",
            Self::Unknown => "unknown",
        }
    }
}

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseKind {
    /// Orderly FIN handshake.
    Fin,
    /// A reset, sent or received.
    Rst,
    /// Retransmission or keep-alive timeout (`ETIMEDOUT`).
    Timeout,
    /// Any other end: a socket error, or a close with neither FIN nor RST.
    Error,
}

impl CloseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Why a connection never reached `ESTABLISHED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// A reset answered the SYN (nothing listening).
    Refused,
    /// No answer (`ETIMEDOUT`).
    Timeout,
    /// ICMP unreachable (`EHOSTUNREACH`, `ENETUNREACH`, ...).
    Unreachable,
    /// Anything else, e.g. the application gave up before the handshake finished.
    Other,
}

impl ConnectFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Other => "other",
        }
    }
}

/// justniffer's `%connection`: where the exchange sits in its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeClass {
    /// The connection's only exchange.
    Unique,
    /// First of several.
    Start,
    /// Neither first nor last.
    Continue,
    /// Last of several.
    Last,
}

impl ExchangeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unique => "unique",
            Self::Start => "start",
            Self::Continue => "continue",
            Self::Last => "last",
        }
    }
}

/// Why a connection record is incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartialReason {
    /// The kernel first saw the socket mid-life: it was open before tcpobs started (seeded at
    /// start-up, or adopted when next seen), or its kernel record was evicted from a full
    /// socket table and adopted again. The handshake and what came before are unknown.
    AlreadyOpen,
    /// tcpobs lost track of it: a newer connection appeared on the same socket before this one
    /// was seen to close (kernel record evicted, or the close event dropped).
    Lost,
    /// The close arrived but the open did not (dropped from a full ring buffer).
    MissedOpen,
    /// Still open when tcpobs stopped.
    Shutdown,
}

impl PartialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyOpen => "already_open",
            Self::Lost => "lost",
            Self::MissedOpen => "missed_open",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Name of a kernel TCP state, as in `/proc/net/tcp` tools.
pub fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Symbolic name of the errno values a socket ends with.
pub fn errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno {
        0 => return None,
        32 => "EPIPE",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => "EOTHER",
    })
}

pub const ETIMEDOUT: u32 = 110;
pub const ECONNREFUSED: u32 = 111;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originator_follows_the_role() {
        use CloseOriginator as O;
        assert_eq!(O::from_side(Side::Local, Role::Client), O::Client);
        assert_eq!(O::from_side(Side::Peer, Role::Client), O::Server);
        assert_eq!(O::from_side(Side::Local, Role::Server), O::Server);
        assert_eq!(O::from_side(Side::Peer, Role::Server), O::Client);
        assert_eq!(O::from_side(Side::Local, Role::Unknown), O::Unknown);
    }
}
