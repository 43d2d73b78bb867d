//! Names of maps and globals, used by both sides so they cannot drift apart.
//!
//! Program names, and which kernel symbol or tracepoint each attaches to, are the daemon's
//! attach table (its loader's `families.rs`); the daemon's tests check every name it asks for
//! against the built object.

/// Ring buffer of events (`RingBuf`).
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-socket records (`LruHashMap<u64, SockRecord>`), keyed by `struct sock` address.
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Headers of the close records the ring buffer could not take (`Queue<EventHeader>`, as many
/// entries as `SOCKETS`): each record waits in `SOCKETS` under its `start_ns` (a key no socket
/// address can take: those have the top bit set) until the daemon takes it.
pub const SPILLED_MAP: &str = "SPILLED";
/// Drop counters (`PerCpuArray<u64>`, indexes in [`crate::stat`]).
pub const STATS_MAP: &str = "STATS";
/// 1 once the daemon has stopped reading the ring buffer (`Array<u32>`, one entry): the
/// programs send nothing more and count nothing as lost.
pub const STOPPING_MAP: &str = "STOPPING";
/// 1 while the daemon waits for the next event with no drain timer running (`Array<u32>`, one
/// entry): the next program to send an event wakes the reader and sets it back to 0.
pub const READER_IDLE_MAP: &str = "READER_IDLE";
/// 1 while the daemon allows the programs to defer opens (`Array<u32>`, one entry): it can
/// run the `flush_opens` program ([`crate::PendingList`]).
pub const DEFER_OPENS_MAP: &str = "DEFER_OPENS";
/// The counters of each CPU's deferred opens (`PerCpuArray<PendingList>`, one entry).
pub const PENDING_LISTS_MAP: &str = "PENDING_LISTS";
/// Each CPU's deferred opens (`PerCpuArray<PendingOpens>`, one entry).
pub const PENDING_OPENS_MAP: &str = "PENDING_OPENS";
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
/// Whether exchanges are folded into histograms, and the bucket limits
/// ([`crate::FoldConfig`]), a read-only global.
pub const FOLD_CONFIG_GLOBAL: &str = "FOLD_CONFIG";
/// What the kernel folded: per-exchange histograms, exchanges by class and bytes, by role
/// (`PerCpuArray<Folds>`, one entry).
pub const FOLDS_MAP: &str = "FOLDS";
/// Label slots' folds: [`crate::folds::RoleFolds`] by [`crate::folds::labeled_index`]
/// (`PerCpuArray<RoleFolds>`, `2 * LABEL_SLOTS` entries).
pub const LABELED_FOLDS_MAP: &str = "LABELED_FOLDS";
/// Socket cgroups' label slots (`HashMap<u64, u32>`, cgroup id to slot, written by the daemon;
/// [`crate::folds::LABEL_SLOTS`]).
pub const LABEL_SLOTS_MAP: &str = "LABEL_SLOTS";
/// 1 while the daemon wants an event for every exchange; 0: only for the exchanges the kernel
/// did not fold (none when it folds them all, every one when it folds none) (`Array<u32>`, one
/// entry, written by the daemon when the event selection changes).
pub const EXCHANGE_EVENTS_MAP: &str = "EXCHANGE_EVENTS";

/// 1 when a `tcp_connect` program (fentry or kprobe) starts client records, so that the state
/// program leaves `CLOSE -> SYN_SENT` alone (`Array<u32>`, one entry).
pub const CONNECT_HOOKED_MAP: &str = "CONNECT_HOOKED";
/// Arguments of `tcp_sendmsg`/`tcp_recvmsg` calls in progress, by thread, for the kretprobes
/// (`LruHashMap<u64, DataCall>`).
pub const DATA_CALLS_MAP: &str = "DATA_CALLS";

/// `getaddrinfo` calls in progress, by thread (`LruHashMap<u64, DnsCall>`).
pub const DNS_CALLS_MAP: &str = "DNS_CALLS";
/// The TLS handshake call each thread is in (`HashMap<u64, TlsCall>`, by `pid_tgid`). Not LRU:
/// every entry is counted in the in-progress counter the data hooks read, and an eviction
/// would leave the counter high for good.
pub const TLS_THREADS_MAP: &str = "TLS_THREADS";
/// Handshakes that took more than one call so far (`LruHashMap<u64, TlsPending>`, by `SSL *`).
pub const TLS_PENDING_MAP: &str = "TLS_PENDING";
/// `TLS_THREADS` entries the daemon removed because their thread died mid-call
/// (`Array<u64>`, one entry, written by the daemon only).
pub const TLS_ABANDONED_MAP: &str = "TLS_ABANDONED";

/// Listening sockets by address, and who listens (`HashMap<u64, ListenSock>`), for the
/// listener health gauges.
pub const LISTEN_SOCKS_MAP: &str = "LISTEN_SOCKS";
/// Listening ports found at start-up by the `find_listeners` iterator, in every network
/// namespace (`HashMap<ListenKey, u8>`): the `seed_connections` iterator's test of a server end.
pub const LISTEN_PORTS_MAP: &str = "LISTEN_PORTS";
/// What the sampler read of connections (`Array<SockSample>`, one per argument slot).
pub const SOCK_SAMPLES_MAP: &str = "SOCK_SAMPLES";
/// What the sampler read of listening sockets (`Array<ListenSample>`, one per argument slot).
pub const LISTEN_SAMPLES_MAP: &str = "LISTEN_SAMPLES";
/// Which drop reasons the drops family looks at (`Array<u8>`, by `enum skb_drop_reason`).
pub const DROP_INTEREST_MAP: &str = "DROP_INTEREST";
/// Drops of traced connections by reason (`PerCpuArray<u64>`, by `enum skb_drop_reason`).
pub const DROP_COUNTS_MAP: &str = "DROP_COUNTS";
/// Addresses of connections that retransmitted, to their socket (`LruHashMap<Endpoints, u64>`),
/// for drops found by their headers alone.
pub const TUPLES_MAP: &str = "TUPLES";
