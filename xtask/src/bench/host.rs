//! What tcpobs costs the rest of the host: operations it does not trace (a Unix socket message,
//! a UDP datagram, a system call) and a name resolution (which the dns phase times, through
//! uprobes), each in a loop on one thread, with no tracer, with the default daemon and with
//! `--probe-strategy accept=off`. The data tracepoints fire for every socket, and on the
//! tracepoint strategy the accept family's system call tracepoint puts every system call on the
//! kernel's slower path.

use std::{
    io::{Read as _, Write as _},
    net::{ToSocketAddrs as _, UdpSocket},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    Mode,
    report::{Report, Row},
    tracer::Tracer,
    under,
};

/// The daemon's settings compared, each against a run with no tracer just before it: the
/// row's suffix and the arguments.
const ARMS: [(&str, &[&str]); 2] = [
    ("", &[]),
    (
        ", --probe-strategy accept=off",
        &["--probe-strategy", "accept=off"],
    ),
];

/// Each arm in pairs (no tracer, then the daemon), the arms' order swapped from one round to
/// the next so that neither always runs on a machine the other has just left.
pub(super) fn run(binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let duration = mode.bulk / 2;
    let each = || -> Result<Vec<f64>> { Load::ALL.iter().map(|load| load.run(duration)).collect() };
    let mut pairs = vec![vec![Vec::new(); Load::ALL.len()]; ARMS.len()];
    for round in 0..mode.pairs {
        for step in 0..ARMS.len() {
            let arm = if round % 2 == 0 {
                step
            } else {
                ARMS.len() - 1 - step
            };
            let base = each()?;
            let traced = under(binary, Tracer::Tcpobs, ARMS[arm].1, each)?;
            for (index, pair) in pairs[arm].iter_mut().enumerate() {
                pair.push((base[index], traced[index]));
            }
        }
    }
    for ((suffix, _), pairs) in ARMS.iter().zip(&pairs) {
        for (load, pairs) in Load::ALL.iter().zip(pairs) {
            report.push(Row::ratio(
                &format!("{}{suffix}", load.name()),
                "operations/s (shown: time each)",
                pairs,
                &[],
                None,
                |v| format!("{:.0} ns each", 1e9 / v),
            ));
        }
    }
    Ok(())
}

/// What each load does once, on one thread.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// A 1-byte write on one end of a Unix stream socket pair, and the read on the other.
    UnixMessage,
    /// A 1-byte datagram sent over loopback and received.
    UdpDatagram,
    /// `getppid()`: a system call with no socket at all.
    SystemCall,
    /// `getaddrinfo("localhost")` (the C library's, answered from `/etc/hosts`): the dns
    /// phase's uprobes fire on its entry and return.
    NameResolution,
}

impl Load {
    const ALL: [Self; 4] = [
        Self::UnixMessage,
        Self::UdpDatagram,
        Self::SystemCall,
        Self::NameResolution,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::UnixMessage => "a Unix socket message, 1 byte written and read (not traced)",
            Self::UdpDatagram => "a UDP datagram on loopback, sent and received (not traced)",
            Self::SystemCall => "a system call, getppid() (not traced)",
            Self::NameResolution => {
                "a name resolution, getaddrinfo(\"localhost\") (timed by the dns phase)"
            }
        }
    }

    /// Does it for `duration`, in batches. Returns how many a second.
    fn run(self, duration: Duration) -> Result<f64> {
        match self {
            Self::UnixMessage => {
                let (mut sender, mut receiver) = UnixStream::pair()?;
                let mut byte = [0u8; 1];
                per_second(duration, || {
                    sender.write_all(&byte)?;
                    receiver.read_exact(&mut byte)
                })
            }
            Self::UdpDatagram => {
                let receiver = UdpSocket::bind("127.0.0.1:0")?;
                // A datagram lost on loopback fails the run instead of hanging it.
                receiver.set_read_timeout(Some(Duration::from_secs(1)))?;
                let sender = UdpSocket::bind("127.0.0.1:0")?;
                sender.connect(receiver.local_addr()?)?;
                let mut byte = [0u8; 1];
                per_second(duration, || {
                    sender.send(&byte)?;
                    receiver.recv(&mut byte).map(drop)
                })
            }
            Self::SystemCall => per_second(duration, || {
                std::hint::black_box(std::os::unix::process::parent_id());
                Ok(())
            }),
            // The standard library resolves through the C library's `getaddrinfo`.
            Self::NameResolution => {
                per_second(duration, || ("localhost", 80).to_socket_addrs().map(drop))
            }
        }
    }
}

/// How many times a second `op` runs, over `duration`.
fn per_second(duration: Duration, mut op: impl FnMut() -> std::io::Result<()>) -> Result<f64> {
    const BATCH: u64 = 1_000;
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration {
        for _ in 0..BATCH {
            op()?;
        }
        done += BATCH;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
