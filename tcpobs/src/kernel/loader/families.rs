//! The attach table: every hook family, the strategies it can attach with, and for each the
//! kernel symbols or tracepoints and the names of the programs (in `tcpobs-ebpf`) that attach
//! there; and the libcall families, uprobes on user-space libraries.
//!
//! Only the daemon reads it (the kernel crate names its programs by their function names). A
//! test below checks every program, map and global name the daemon asks for against the built
//! object, so a renamed program fails `cargo test`, not a start-up.

/// Hook families, as in the design's strategy table.
pub mod family {
    pub const STATE: &str = "state";
    pub const CONNECT: &str = "connect";
    pub const DATA: &str = "data";
    pub const CLOSE: &str = "close";
    pub const RESETS: &str = "resets";
    pub const RETRANSMITS: &str = "retransmits";
    /// The error that ends a connection, when the kernel reports it.
    pub const ERRORS: &str = "errors";
    /// When the application accepted a connection (accept wait, the owner of accepted sockets).
    pub const ACCEPT: &str = "accept";
    /// Packets the kernel dropped, with the reason, charged to their connection.
    pub const DROPS: &str = "drops";
    /// Zero-window probes sent.
    pub const PROBES: &str = "probes";
    /// Name resolution: uprobes on the C library's `getaddrinfo`.
    pub const DNS: &str = "dns";
    /// TLS handshakes: uprobes on OpenSSL's libssl.
    pub const TLS: &str = "tls";
}

/// Attach strategies, in the order `auto` tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// fentry/fexit: BPF trampolines (BTF, Linux 5.5).
    Fentry,
    /// Stable tracepoints: `tp_btf` where it loads, else the classic tracepoint.
    Tracepoint,
    /// kprobes and kretprobes (`CONFIG_KPROBES`).
    Kprobe,
    /// uprobes and uretprobes on user-space libraries: the only way of the libcall families
    /// ([`LIBCALL_FAMILIES`]), never chosen for the kernel families.
    Uprobe,
}

impl Strategy {
    /// The strategies of the kernel families, in `auto` order.
    pub const ALL: [Self; 3] = [Self::Fentry, Self::Tracepoint, Self::Kprobe];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Tracepoint => "tracepoint",
            Self::Kprobe => "kprobe",
            Self::Uprobe => "uprobe",
        }
    }
}

/// One program and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A stable tracepoint: the `tp_btf` program if it loads, else the classic one.
    Tracepoint {
        /// Tracepoint category (tracefs directory), e.g. `sock`.
        category: &'static str,
        /// Tracepoint name, e.g. `inet_sock_set_state`.
        name: &'static str,
        /// First kernel version that has the tracepoint.
        since: &'static str,
        btf_program: &'static str,
        /// `None` where the classic record lacks what the program needs.
        tracepoint_program: Option<&'static str>,
    },
    /// A stable tracepoint whose `tp_btf` program depends on the tracepoint's arguments, which
    /// changed between kernels: the program for the argument count this kernel has (from BTF),
    /// else the classic one.
    TracepointArgs {
        category: &'static str,
        name: &'static str,
        since: &'static str,
        /// (argument count, program).
        btf_programs: &'static [(usize, &'static str)],
        tracepoint_program: &'static str,
    },
    /// A classic tracepoint only (system call tracepoints are not raw tracepoints).
    Classic {
        category: &'static str,
        name: &'static str,
        since: &'static str,
        program: &'static str,
    },
    /// fentry on a kernel function.
    FEntry {
        function: &'static str,
        program: &'static str,
    },
    /// fexit on a kernel function; the program is chosen by the function's parameter count
    /// (the return value follows the parameters), from the kernel's BTF.
    FExit {
        function: &'static str,
        programs: &'static [(usize, &'static str)],
    },
    KProbe {
        function: &'static str,
        program: &'static str,
    },
    KRetProbe {
        function: &'static str,
        program: &'static str,
    },
}

impl Attach {
    /// The kernel program type, for logs and metrics.
    pub const fn program_type(&self) -> &'static str {
        match self {
            Self::Tracepoint { .. } | Self::TracepointArgs { .. } | Self::Classic { .. } => {
                "tracepoint"
            }
            Self::FEntry { .. } => "fentry",
            Self::FExit { .. } => "fexit",
            Self::KProbe { .. } => "kprobe",
            Self::KRetProbe { .. } => "kretprobe",
        }
    }
}

/// A family's programs under one strategy: all of them attach, or the strategy is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Way {
    pub strategy: Strategy,
    pub attach: &'static [Attach],
}

/// A hook family and its strategies, in `auto` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub ways: &'static [Way],
    /// The daemon runs without it (saying so) when none of its ways attaches.
    pub optional: bool,
}

const fn tracepoint(
    category: &'static str,
    name: &'static str,
    since: &'static str,
    btf_program: &'static str,
    tracepoint_program: &'static str,
) -> Attach {
    Attach::Tracepoint {
        category,
        name,
        since,
        btf_program,
        tracepoint_program: Some(tracepoint_program),
    }
}

/// Every family, in attach order: the state family goes last so that by the time connections
/// start being tracked, the hooks that update them are in place; the connect family goes
/// just before it, so that the state program knows whether to start clients itself.
pub const FAMILIES: [Family; 10] = [
    Family {
        name: family::DATA,
        optional: false,
        ways: &[
            Way {
                strategy: Strategy::Fentry,
                attach: &[
                    Attach::FExit {
                        function: "tcp_sendmsg",
                        programs: &[(3, "send_fexit")],
                    },
                    Attach::FExit {
                        function: "tcp_recvmsg",
                        // Linux 5.19 dropped the `nonblock` parameter, Linux 7 `addr_len`.
                        programs: &[
                            (4, "recv_fexit_no_addr_len"),
                            (5, "recv_fexit"),
                            (6, "recv_fexit_nonblock"),
                        ],
                    },
                ],
            },
            Way {
                strategy: Strategy::Tracepoint,
                attach: &[
                    tracepoint(
                        "sock",
                        "sock_send_length",
                        "6.3",
                        "send_len_btf",
                        "send_len_tp",
                    ),
                    tracepoint(
                        "sock",
                        "sock_recv_length",
                        "6.3",
                        "recv_len_btf",
                        "recv_len_tp",
                    ),
                ],
            },
            Way {
                strategy: Strategy::Kprobe,
                attach: &[
                    Attach::KProbe {
                        function: "tcp_sendmsg",
                        program: "send_kprobe",
                    },
                    Attach::KRetProbe {
                        function: "tcp_sendmsg",
                        program: "send_kretprobe",
                    },
                    Attach::KProbe {
                        function: "tcp_recvmsg",
                        program: "recv_kprobe",
                    },
                    Attach::KRetProbe {
                        function: "tcp_recvmsg",
                        program: "recv_kretprobe",
                    },
                ],
            },
        ],
    },
    Family {
        name: family::RESETS,
        optional: false,
        ways: &[Way {
            strategy: Strategy::Tracepoint,
            attach: &[
                tracepoint(
                    "tcp",
                    "tcp_send_reset",
                    "4.15",
                    "send_reset_btf",
                    "send_reset_tp",
                ),
                tracepoint(
                    "tcp",
                    "tcp_receive_reset",
                    "4.15",
                    "recv_reset_btf",
                    "recv_reset_tp",
                ),
            ],
        }],
    },
    Family {
        name: family::RETRANSMITS,
        optional: false,
        ways: &[Way {
            strategy: Strategy::Tracepoint,
            attach: &[Attach::TracepointArgs {
                category: "tcp",
                name: "tcp_retransmit_skb",
                since: "4.15",
                // Linux 6.15 added `err`, and fires on failed attempts too.
                btf_programs: &[(2, "retransmit_btf"), (3, "retransmit_btf_err")],
                tracepoint_program: "retransmit_tp",
            }],
        }],
    },
    Family {
        name: family::DROPS,
        optional: true,
        ways: &[Way {
            strategy: Strategy::Tracepoint,
            attach: &[Attach::TracepointArgs {
                category: "skb",
                name: "kfree_skb",
                // The drop reason; Linux 6.11 added the receiving socket.
                since: "5.17",
                btf_programs: &[(3, "kfree_skb_btf"), (4, "kfree_skb_btf_rx")],
                tracepoint_program: "kfree_skb_tp",
            }],
        }],
    },
    Family {
        name: family::ACCEPT,
        optional: true,
        ways: &[
            Way {
                strategy: Strategy::Fentry,
                attach: &[Attach::FExit {
                    function: "inet_csk_accept",
                    // Linux 6.10 folded `flags, err, kern` into `struct proto_accept_arg *`.
                    programs: &[(2, "accept_fexit"), (4, "accept_fexit_flags")],
                }],
            },
            Way {
                strategy: Strategy::Tracepoint,
                attach: &[
                    Attach::Classic {
                        category: "syscalls",
                        name: "sys_exit_accept4",
                        since: "2.6.37 with CONFIG_FTRACE_SYSCALLS",
                        program: "accept4_exit_tp",
                    },
                    Attach::Classic {
                        category: "syscalls",
                        name: "sys_exit_accept",
                        since: "2.6.37 with CONFIG_FTRACE_SYSCALLS",
                        program: "accept_exit_tp",
                    },
                ],
            },
            Way {
                strategy: Strategy::Kprobe,
                attach: &[Attach::KRetProbe {
                    function: "inet_csk_accept",
                    program: "accept_kretprobe",
                }],
            },
        ],
    },
    Family {
        name: family::PROBES,
        optional: true,
        ways: &[
            Way {
                strategy: Strategy::Fentry,
                attach: &[Attach::FEntry {
                    function: "tcp_send_probe0",
                    program: "probe0_fentry",
                }],
            },
            Way {
                strategy: Strategy::Kprobe,
                attach: &[Attach::KProbe {
                    function: "tcp_send_probe0",
                    program: "probe0_kprobe",
                }],
            },
        ],
    },
    Family {
        name: family::CLOSE,
        optional: false,
        ways: &[
            Way {
                strategy: Strategy::Fentry,
                attach: &[
                    Attach::FEntry {
                        function: "tcp_close",
                        program: "close_fentry",
                    },
                    Attach::FEntry {
                        function: "tcp_v4_destroy_sock",
                        program: "destroy_fentry",
                    },
                ],
            },
            Way {
                strategy: Strategy::Tracepoint,
                attach: &[tracepoint(
                    "tcp",
                    "tcp_destroy_sock",
                    "4.15",
                    "destroy_btf",
                    "destroy_tp",
                )],
            },
            Way {
                strategy: Strategy::Kprobe,
                attach: &[
                    Attach::KProbe {
                        function: "tcp_close",
                        program: "close_kprobe",
                    },
                    Attach::KProbe {
                        function: "tcp_v4_destroy_sock",
                        program: "destroy_kprobe",
                    },
                ],
            },
        ],
    },
    Family {
        name: family::ERRORS,
        optional: true,
        ways: &[
            Way {
                strategy: Strategy::Fentry,
                attach: &[Attach::FEntry {
                    function: "sock_def_error_report",
                    program: "error_report_fentry",
                }],
            },
            Way {
                strategy: Strategy::Tracepoint,
                attach: &[Attach::Tracepoint {
                    category: "sock",
                    name: "inet_sk_error_report",
                    since: "5.14",
                    btf_program: "error_report_btf",
                    // The classic record has no socket address.
                    tracepoint_program: None,
                }],
            },
            Way {
                strategy: Strategy::Kprobe,
                attach: &[Attach::KProbe {
                    function: "sock_def_error_report",
                    program: "error_report_kprobe",
                }],
            },
        ],
    },
    Family {
        name: family::CONNECT,
        optional: false,
        ways: &[
            Way {
                strategy: Strategy::Fentry,
                attach: &[Attach::FEntry {
                    function: "tcp_connect",
                    program: "connect_fentry",
                }],
            },
            // The state program's `CLOSE -> SYN_SENT`: nothing of its own to attach.
            Way {
                strategy: Strategy::Tracepoint,
                attach: &[],
            },
            Way {
                strategy: Strategy::Kprobe,
                attach: &[Attach::KProbe {
                    function: "tcp_connect",
                    program: "connect_kprobe",
                }],
            },
        ],
    },
    Family {
        name: family::STATE,
        optional: false,
        ways: &[
            Way {
                strategy: Strategy::Tracepoint,
                attach: &[tracepoint(
                    "sock",
                    "inet_sock_set_state",
                    "4.16",
                    "set_state_btf",
                    "set_state_tp",
                )],
            },
            // The two functions that fire the tracepoint: `inet_sk_state_store` (every
            // `tcp_set_state`, and `listen()`) and `inet_sk_set_state` (new accepted sockets).
            Way {
                strategy: Strategy::Kprobe,
                attach: &[
                    Attach::KProbe {
                        function: "inet_sk_state_store",
                        program: "state_store_kprobe",
                    },
                    Attach::KProbe {
                        function: "inet_sk_set_state",
                        program: "set_state_kprobe",
                    },
                ],
            },
        ],
    },
];

/// The sampler: a raw tracepoint program the daemon runs with `BPF_PROG_TEST_RUN` to read live
/// sockets by address (never attached).
pub const SAMPLER_PROGRAM: &str = "sample_socks";
/// The flush of deferred opens: a raw tracepoint program the daemon runs on a CPU with
/// `BPF_PROG_TEST_RUN` (never attached).
pub const FLUSH_OPENS_PROGRAM: &str = "flush_opens";
/// The iterator (`iter/task_file`) that finds the listening sockets opened before tcpobs.
pub const LISTENERS_ITERATOR: &str = "find_listeners";
/// The iterator (`iter/task_file`) that seeds the connections opened before tcpobs.
pub const SEED_ITERATOR: &str = "seed_connections";

/// A user-space library the libcall families probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Library {
    /// The C library: glibc's `libc.so.6`, or musl's `ld-musl-<arch>.so.1`.
    Libc,
    /// OpenSSL 3's `libssl.so.3`.
    Libssl,
}

/// One uprobe (function entry) or uretprobe (function return) on a library symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UProbeSpec {
    pub symbol: &'static str,
    pub program: &'static str,
    /// A uretprobe.
    pub ret: bool,
}

/// A libcall family: its library and probes. It attaches to every copy of the library found
/// (on the host and in containers), or to none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LibcallFamily {
    pub name: &'static str,
    pub library: Library,
    pub probes: &'static [UProbeSpec],
}

const fn uprobe(symbol: &'static str, program: &'static str) -> UProbeSpec {
    UProbeSpec {
        symbol,
        program,
        ret: false,
    }
}

const fn uretprobe(symbol: &'static str, program: &'static str) -> UProbeSpec {
    UProbeSpec {
        symbol,
        program,
        ret: true,
    }
}

/// The libcall families (turned on with `--phases`).
pub const LIBCALL_FAMILIES: [LibcallFamily; 2] = [
    LibcallFamily {
        name: family::DNS,
        library: Library::Libc,
        probes: &[
            uprobe("getaddrinfo", "getaddrinfo_entry"),
            uretprobe("getaddrinfo", "getaddrinfo_return"),
        ],
    },
    LibcallFamily {
        name: family::TLS,
        library: Library::Libssl,
        probes: &[
            uprobe("SSL_do_handshake", "ssl_do_handshake_entry"),
            uretprobe("SSL_do_handshake", "ssl_handshake_return"),
            uprobe("SSL_connect", "ssl_connect_entry"),
            uretprobe("SSL_connect", "ssl_handshake_return"),
            uprobe("SSL_accept", "ssl_accept_entry"),
            uretprobe("SSL_accept", "ssl_handshake_return"),
            uprobe("SSL_free", "ssl_free_entry"),
        ],
    },
];

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aya_obj::{Object, ProgramSection};
    use tcpobs_common::{Offsets, names};

    use super::*;

    /// Every program the attach table names, with the kind of program it must be.
    fn programs() -> Vec<(&'static str, &'static str)> {
        let mut programs = Vec::new();
        for attach in FAMILIES
            .iter()
            .flat_map(|family| family.ways)
            .flat_map(|way| way.attach)
        {
            match *attach {
                Attach::Tracepoint {
                    btf_program,
                    tracepoint_program,
                    ..
                } => {
                    programs.push((btf_program, "tp_btf"));
                    programs.extend(tracepoint_program.map(|program| (program, "tracepoint")));
                }
                Attach::TracepointArgs {
                    btf_programs,
                    tracepoint_program,
                    ..
                } => {
                    programs.extend(btf_programs.iter().map(|&(_, program)| (program, "tp_btf")));
                    programs.push((tracepoint_program, "tracepoint"));
                }
                Attach::Classic { program, .. } => programs.push((program, "tracepoint")),
                Attach::FEntry { program, .. } => programs.push((program, "fentry")),
                Attach::FExit {
                    programs: choices, ..
                } => programs.extend(choices.iter().map(|&(_, program)| (program, "fexit"))),
                Attach::KProbe { program, .. } => programs.push((program, "kprobe")),
                Attach::KRetProbe { program, .. } => programs.push((program, "kretprobe")),
            }
        }
        programs.push((SAMPLER_PROGRAM, "raw_tp"));
        programs.push((FLUSH_OPENS_PROGRAM, "raw_tp"));
        programs.push((LISTENERS_ITERATOR, "iter"));
        programs.push((SEED_ITERATOR, "iter"));
        for probe in LIBCALL_FAMILIES.iter().flat_map(|family| family.probes) {
            programs.push((
                probe.program,
                if probe.ret { "uretprobe" } else { "uprobe" },
            ));
        }
        programs
    }

    fn kind(section: &ProgramSection) -> &'static str {
        match section {
            ProgramSection::BtfTracePoint => "tp_btf",
            ProgramSection::TracePoint => "tracepoint",
            ProgramSection::FEntry { .. } => "fentry",
            ProgramSection::FExit { .. } => "fexit",
            ProgramSection::KProbe => "kprobe",
            ProgramSection::KRetProbe => "kretprobe",
            ProgramSection::UProbe { .. } => "uprobe",
            ProgramSection::URetProbe { .. } => "uretprobe",
            ProgramSection::RawTracePoint => "raw_tp",
            ProgramSection::Iter { .. } => "iter",
            _ => "another kind",
        }
    }

    /// The names the daemon asks the object for (programs here, maps and globals in
    /// `tcpobs_common::names`) all exist in the object build.rs built, as the right kind of
    /// program: a renamed program or map fails here rather than at start-up as root.
    #[test]
    fn every_name_the_daemon_asks_for_is_in_the_object() {
        let object = Object::parse(super::super::OBJECT).expect("the built object parses");
        let mut missing = Vec::new();
        for (name, expected) in programs() {
            match object.programs.get(name) {
                None => missing.push(format!("program {name} ({expected})")),
                Some(program) if kind(&program.section) != expected => missing.push(format!(
                    "program {name} as {expected} (it is {})",
                    kind(&program.section)
                )),
                Some(_) => {}
            }
        }
        let maps = [
            names::EVENTS_MAP,
            names::SOCKETS_MAP,
            names::SPILLED_MAP,
            names::STATS_MAP,
            names::STOPPING_MAP,
            names::READER_IDLE_MAP,
            names::PORT_FILTER_MAP,
            names::CIDR4_FILTER_MAP,
            names::CIDR6_FILTER_MAP,
            names::PID_FILTER_MAP,
            names::CGROUP_FILTER_MAP,
            names::LISTENERS_MAP,
            names::FILTER_MAP,
            names::CONNECT_HOOKED_MAP,
            names::DATA_CALLS_MAP,
            names::DNS_CALLS_MAP,
            names::TLS_THREADS_MAP,
            names::TLS_PENDING_MAP,
            names::TLS_ABANDONED_MAP,
            names::LISTEN_SOCKS_MAP,
            names::LISTEN_PORTS_MAP,
            names::SOCK_SAMPLES_MAP,
            names::LISTEN_SAMPLES_MAP,
            names::DROP_INTEREST_MAP,
            names::DROP_COUNTS_MAP,
            names::TUPLES_MAP,
            names::FOLDS_MAP,
            names::EXCHANGE_EVENTS_MAP,
        ];
        for name in maps {
            if !object.maps.contains_key(name) {
                missing.push(format!("map {name}"));
            }
        }
        // What the loader's `override_global` does: the globals must exist, with their types'
        // sizes.
        let mut object = object;
        let offsets = [0u8; size_of::<Offsets>()];
        let fold = [0u8; size_of::<tcpobs_common::FoldConfig>()];
        for (name, bytes) in [
            (names::OFFSETS_GLOBAL, &offsets[..]),
            (names::FOLD_CONFIG_GLOBAL, &fold[..]),
        ] {
            let globals = HashMap::from([(name, (bytes, true))]);
            if let Err(err) = object.patch_map_data(globals) {
                missing.push(format!("global {name} of {} bytes: {err}", bytes.len()));
            }
        }
        assert!(
            missing.is_empty(),
            "the kernel object lacks what the daemon asks for: {}",
            missing.join(", ")
        );
    }
}
