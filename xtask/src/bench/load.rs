//! Rust load generators on loopback: connection churn as fast as the machine allows, a bulk
//! stream, and many idle connections.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
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

/// `count` idle connections, held open until dropped.
pub struct Idle {
    _clients: Vec<TcpStream>,
    _servers: Vec<TcpStream>,
}

/// Opens `count` connections spread over several loopback addresses.
pub fn idle(count: usize) -> Result<Idle> {
    raise_fd_limit(2 * count as u64 + 1024)?;
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
    for n in 0..count as u64 {
        clients.push(
            TcpStream::connect(destination(port, n))
                .with_context(|| format!("connection {n} of {count}"))?,
        );
    }
    let servers = acceptor
        .join()
        .map_err(|_| anyhow::anyhow!("acceptor panicked"))??;
    Ok(Idle {
        _clients: clients,
        _servers: servers,
    })
}

fn raise_fd_limit(wanted: u64) -> Result<()> {
    let limit = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        anyhow::bail!(
            "cannot raise the open file limit to {wanted}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
