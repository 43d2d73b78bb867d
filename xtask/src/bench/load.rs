//! Rust load generators on loopback: connection churn as fast as the machine allows, a bulk
//! stream, and many idle connections.

use std::{
    io::{BufRead as _, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Destination addresses: connections are spread over several loopback addresses so that
/// ephemeral ports never run out.
const SPREAD: u8 = 8;

fn destination(port: u16, n: u64) -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::new(127, 0, 0, 1 + (n % u64::from(SPREAD)) as u8),
        port,
    ))
}

/// Opens and closes connections for `duration` with `clients` threads; the server closes
/// first. Returns connections completed.
pub fn churn(duration: Duration, clients: usize) -> Result<u64> {
    let listener = TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let server = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(_) => thread::sleep(Duration::from_micros(50)),
                }
            }
        })
    };
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut n = worker as u64;
                let mut buf = [0u8; 1];
                while Instant::now() < deadline {
                    n += 1;
                    if let Ok(mut stream) = TcpStream::connect(destination(port, n)) {
                        let _ = stream.read(&mut buf);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    Ok(done.load(Ordering::Relaxed))
}

/// Streams over one loopback connection for `duration` in 128 KiB writes. Returns bytes/s.
pub fn bulk(duration: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = thread::spawn(move || -> Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    let chunk = vec![0x5au8; 128 * 1024];
    let started = Instant::now();
    while started.elapsed() < duration {
        stream.write_all(&chunk)?;
    }
    drop(stream);
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

/// Idle connections held open by helper processes (one process may hold only as many
/// sockets as its open-file limit allows, and that limit cannot always be raised), until
/// dropped.
pub struct Idle {
    holders: Vec<Child>,
}

impl Drop for Idle {
    fn drop(&mut self) {
        for holder in &mut self.holders {
            // Closing its stdin tells the holder to exit.
            drop(holder.stdin.take());
        }
        for holder in &mut self.holders {
            let _ = holder.wait();
        }
    }
}

/// Opens `count` connections spread over several loopback addresses, in as many holder
/// processes (`cargo xtask bench-hold`) as the open-file limit needs.
pub fn idle(count: usize) -> Result<Idle> {
    let limit = fd_limit()?;
    // Both ends of each connection, plus room for the listener and the runtime.
    let per_holder = usize::try_from(limit.saturating_sub(256) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    // The running binary itself, not its path: cargo replaces the file when xtask is rebuilt
    // during a bench, and the kernel keeps the running one reachable here.
    let exe = "/proc/self/exe";
    let mut idle = Idle {
        holders: Vec::new(),
    };
    let mut opened = 0;
    while opened < count {
        let batch = per_holder.min(count - opened);
        let mut holder = Command::new(exe)
            .args(["bench-hold", &batch.to_string(), &opened.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a connection holder")?;
        let stdout = holder.stdout.take().context("holder stdout")?;
        idle.holders.push(holder);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            anyhow::bail!("a connection holder failed after {opened} of {count} connections");
        }
        opened += batch;
    }
    Ok(idle)
}

/// The holder process: opens `count` connections (numbered from `first`, for the spread over
/// addresses), says `ready` on stdout, and keeps them until stdin closes.
pub fn hold(count: usize, first: u64) -> Result<()> {
    let listener = TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    let acceptor = thread::spawn(move || -> Result<Vec<TcpStream>> {
        let mut servers = Vec::with_capacity(count);
        while servers.len() < count {
            servers.push(listener.accept()?.0);
        }
        Ok(servers)
    });
    let mut clients = Vec::with_capacity(count);
    for n in first..first + count as u64 {
        clients.push(
            TcpStream::connect(destination(port, n)).with_context(|| format!("connection {n}"))?,
        );
    }
    let _servers = acceptor
        .join()
        .map_err(|_| anyhow::anyhow!("acceptor panicked"))??;
    println!("ready");
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    drop(clients);
    Ok(())
}

/// The open-file limit, the soft one raised to the hard one first.
fn fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        anyhow::bail!(
            "cannot read the open file limit: {}",
            std::io::Error::last_os_error()
        );
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads a valid rlimit; the soft limit may always go up to the hard one.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    Ok(limit.rlim_cur)
}
