//! How a live connection can be stuck (hang detection), with the likely cause and action for
//! each, and sets of them. The JSON (`anomaly` events' `phase`, connections' `stuck`) and the
//! metrics' `phase` label print [`Stuck::as_str`].

/// How a live connection can be stuck (hang detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stuck {
    /// `SYN_SENT` for too long: the SYN gets no answer.
    SynSent,
    /// `ESTABLISHED` and nothing sent or received yet.
    NoData,
    /// `ESTABLISHED`, idle far beyond the exchange rhythm (a zombie).
    Idle,
    /// `CLOSE_WAIT` for too long: the peer closed and the application did not.
    CloseWait,
    /// `FIN_WAIT2` for too long: this side closed and the peer never finished.
    FinWait2,
    /// Data to send and a zero window from the peer for too long: the peer application stopped
    /// reading (its probes are answered: it is alive).
    StalledReceiver,
    /// Unacknowledged data, the retransmission timer backing off, nothing acknowledged for too
    /// long: the peer or the path is gone.
    Blackhole,
    /// A listening socket whose accept queue stayed full for too long: the application stopped
    /// accepting (reported for listeners, not connections).
    AcceptQueueFull,
}

impl Stuck {
    pub const ALL: [Self; 8] = [
        Self::SynSent,
        Self::NoData,
        Self::Idle,
        Self::CloseWait,
        Self::FinWait2,
        Self::StalledReceiver,
        Self::Blackhole,
        Self::AcceptQueueFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::NoData => "no_data",
            Self::Idle => "idle",
            Self::CloseWait => "close_wait",
            Self::FinWait2 => "fin_wait2",
            Self::StalledReceiver => "stalled_receiver",
            Self::Blackhole => "blackhole",
            Self::AcceptQueueFull => "accept_queue_full",
        }
    }

    /// Likely cause and action, from the seed's troubleshooting matrix.
    pub fn hint(self) -> &'static str {
        match self {
            Self::SynSent => {
                "the SYN gets no answer: the peer host is down or a firewall drops it; check the route to the peer and that it listens"
            }
            Self::NoData => {
                "connected but nothing was sent: a pool warming connections ahead of use, or both sides waiting for the other to speak; check the client's pool and the protocol's greeting"
            }
            Self::Idle => {
                "zombie connection: idle far beyond the exchange rhythm; load balancers, NAT gateways and firewalls drop idle flows silently; send keep-alive probes or PINGs below the intermediary's idle timeout"
            }
            Self::CloseWait => {
                "CLOSE_WAIT leak: the peer closed and the application never called close(); fix the code path that drops the socket"
            }
            Self::FinWait2 => {
                "half-closed: this side closed and the peer never closed its end; check the peer application and intermediaries that may drop its FIN"
            }
            Self::StalledReceiver => {
                "stalled receiver: the peer advertises a zero window and answers the probes, so it is alive but its application stopped reading (blocked, overloaded or deadlocked); look at the process on the other end, not at the network"
            }
            Self::Blackhole => {
                "black hole: sent data is not acknowledged and the retransmission timer keeps backing off; the peer host or the path is gone (host down, route withdrawn, a firewall or NAT dropping the flow); check the peer's reachability and the packet drops on the path; without TCP_USER_TIMEOUT the kernel gives up only after tcp_retries2 (about 15 minutes)"
            }
            Self::AcceptQueueFull => {
                "listener not accepting: its accept queue stayed full, so the kernel drops new connections and SYNs; the application stopped calling accept() (hung, blocked or overloaded); check the listening process, raise its accept rate or the listen() backlog"
            }
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Stuck`] values: how a connection has been stuck so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StuckSet(u8);

impl StuckSet {
    pub fn contains(self, stuck: Stuck) -> bool {
        self.0 & stuck.bit() != 0
    }

    pub fn insert(&mut self, stuck: Stuck) {
        self.0 |= stuck.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Stuck> {
        Stuck::ALL
            .into_iter()
            .filter(move |stuck| self.contains(*stuck))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_read_as_one_sentence() {
        for stuck in Stuck::ALL {
            let hint = stuck.hint();
            assert!(
                !hint.contains("  ") && !hint.contains('\n'),
                "{stuck:?}: {hint}"
            );
        }
    }
}
