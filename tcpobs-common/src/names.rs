//! Names of maps, globals and programs, used by both sides so they cannot drift apart.

/// Ring buffer of events (`RingBuf`).
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-socket records (`LruHashMap<u64, SockRecord>`), keyed by `struct sock` address.
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Drop counters (`PerCpuArray<u64>`, indexes in [`crate::stat`]).
pub const STATS_MAP: &str = "STATS";
/// Ports for the port filter (`HashMap<u16, u8>`), host byte order.
pub const PORT_FILTER_MAP: &str = "PORT_FILTER";
/// IPv4 networks for the CIDR filter (`LpmTrie<[u8; 4], u8>`), network byte order.
pub const CIDR4_FILTER_MAP: &str = "CIDR4_FILTER";
/// IPv6 networks for the CIDR filter (`LpmTrie<[u8; 16], u8>`), network byte order.
pub const CIDR6_FILTER_MAP: &str = "CIDR6_FILTER";
/// Process ids (tgid) for the pid filter (`HashMap<u32, u8>`).
pub const PID_FILTER_MAP: &str = "PID_FILTER";
/// cgroup v2 ids for the cgroup filter (`HashMap<u64, u8>`).
pub const CGROUP_FILTER_MAP: &str = "CGROUP_FILTER";
/// Listening ports and who listens (`HashMap<ListenKey, Listener>`), for filtering accepted
/// sockets.
pub const LISTENERS_MAP: &str = "LISTENERS";
/// Which filters apply (`Array<FilterConfig>`, one entry).
pub const FILTER_MAP: &str = "FILTER";
/// Layout facts ([`crate::Offsets`]), a read-only global.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Hook families, as in the design's strategy table.
pub mod family {
    pub const STATE: &str = "state";
    pub const DATA: &str = "data";
    pub const CLOSE: &str = "close";
    pub const RESETS: &str = "resets";
    pub const RETRANSMITS: &str = "retransmits";
}

/// One kernel tracepoint and the two programs that can attach to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Hook family ([`family`]).
    pub family: &'static str,
    /// Tracepoint category (tracefs directory), e.g. `sock`.
    pub category: &'static str,
    /// Tracepoint name, e.g. `inet_sock_set_state`.
    pub name: &'static str,
    /// First kernel version that has the tracepoint.
    pub since: &'static str,
    /// The `tp_btf` program.
    pub btf_program: &'static str,
    /// The classic tracepoint program.
    pub tracepoint_program: &'static str,
}

/// Every hook tcpobs attaches, in attach order: the state family goes last so that by the time
/// connections start being tracked, the hooks that update them are in place.
pub const HOOKS: [Hook; 7] = [
    Hook {
        family: family::DATA,
        category: "sock",
        name: "sock_send_length",
        since: "6.3",
        btf_program: "send_len_btf",
        tracepoint_program: "send_len_tp",
    },
    Hook {
        family: family::DATA,
        category: "sock",
        name: "sock_recv_length",
        since: "6.3",
        btf_program: "recv_len_btf",
        tracepoint_program: "recv_len_tp",
    },
    Hook {
        family: family::RESETS,
        category: "tcp",
        name: "tcp_send_reset",
        since: "4.15",
        btf_program: "send_reset_btf",
        tracepoint_program: "send_reset_tp",
    },
    Hook {
        family: family::RESETS,
        category: "tcp",
        name: "tcp_receive_reset",
        since: "4.15",
        btf_program: "recv_reset_btf",
        tracepoint_program: "recv_reset_tp",
    },
    Hook {
        family: family::RETRANSMITS,
        category: "tcp",
        name: "tcp_retransmit_skb",
        since: "4.15",
        btf_program: "retransmit_btf",
        tracepoint_program: "retransmit_tp",
    },
    Hook {
        family: family::CLOSE,
        category: "tcp",
        name: "tcp_destroy_sock",
        since: "4.15",
        btf_program: "destroy_btf",
        tracepoint_program: "destroy_tp",
    },
    Hook {
        family: family::STATE,
        category: "sock",
        name: "inet_sock_set_state",
        since: "4.16",
        btf_program: "set_state_btf",
        tracepoint_program: "set_state_tp",
    },
];
