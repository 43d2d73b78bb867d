//! Two network namespaces joined by a veth pair, made by the test, so that it can lose
//! packets (take a link down) or talk to a silent host without touching the machine's own
//! network.

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

/// Namespaces `<base>a` (10.231.N.1) and `<base>b` (10.231.N.2), deleted on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub subnet: u8,
}

static PAIRS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetnsPair {
    /// Creates both namespaces and the link between them.
    pub fn create() -> Self {
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        let base = format!("tcpobs{}x{n}", std::process::id());
        let subnet = (std::process::id() as u8).wrapping_add(n as u8);
        let (a, b) = (format!("{base}a"), format!("{base}b"));
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        let pair = Self { a, b, subnet };
        ip(&[
            "link", "add", "va", "netns", &pair.a, "type", "veth", "peer", "name", "vb", "netns",
            &pair.b,
        ]);
        ip(&[
            "-n",
            &pair.a,
            "addr",
            "add",
            &format!("{}/24", pair.addr_a()),
            "dev",
            "va",
        ]);
        ip(&[
            "-n",
            &pair.b,
            "addr",
            "add",
            &format!("{}/24", pair.addr_b()),
            "dev",
            "vb",
        ]);
        for (ns, dev) in [(&pair.a, "va"), (&pair.b, "vb")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    pub fn addr_a(&self) -> String {
        format!("10.231.{}.1", self.subnet)
    }

    pub fn addr_b(&self) -> String {
        format!("10.231.{}.2", self.subnet)
    }

    /// An address on the link where nothing answers; `static_neighbor` makes frames to it
    /// leave without an ARP exchange (so a SYN goes out and is never answered).
    pub fn silent_host(&self, static_neighbor: bool) -> String {
        let addr = format!("10.231.{}.9", self.subnet);
        if static_neighbor {
            ip(&[
                "-n",
                &self.a,
                "neigh",
                "add",
                &addr,
                "lladdr",
                "02:00:00:00:00:09",
                "dev",
                "va",
            ]);
        }
        addr
    }

    /// Makes namespace b drop whatever a sends from now on, silently: b's address goes, so
    /// packets still arrive but are for no one (b does not forward, so it sends no ICMP
    /// either). a's sends keep succeeding and its retransmits are real ones; taking the link
    /// down instead makes them fail in a's own stack on some kernels (6.1), and the kernel
    /// does not count those.
    pub fn cut(&self) {
        ip(&[
            "-n",
            &self.b,
            "addr",
            "del",
            &format!("{}/24", self.addr_b()),
            "dev",
            "vb",
        ]);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates live
/// there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        // SAFETY: a valid namespace fd; setns only affects the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The namespace's TCP counters, as `Tcp.RetransSegs` (`/proc/net/snmp`) or
/// `TcpExt.ListenDrops` (`/proc/net/netstat`): the kernel's own totals, to compare with.
pub fn tcp_counters(ns: &str) -> HashMap<String, u64> {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/net/snmp",
            "/proc/net/netstat",
        ])
        .output()
        .expect("ip (iproute2)");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut counters = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (Some((group, names)), Some((same, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        if group != same
            || names
                .split_whitespace()
                .next()
                .is_some_and(|n| n.parse::<i64>().is_ok())
        {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse::<u64>() {
                counters.insert(format!("{group}.{name}"), value);
            }
        }
    }
    counters
}

/// The drops the kernel counted on the listening socket on `port` in namespace `ns` (its
/// `sk_drops`: the `d` of `ss -m`'s `skmem`), if there is one.
pub fn listener_drops(ns: &str, port: u16) -> Option<u64> {
    let filter = format!("sport = :{port}");
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-ltnmH", &filter])
        .output()
        .expect("ip netns exec ... ss (iproute2)");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let skmem = text.split("skmem:(").nth(1)?.split(')').next()?;
    skmem
        .split(',')
        .find_map(|field| field.strip_prefix('d')?.parse().ok())
}

/// Applies an nftables ruleset (`nft -f -`) in namespace `ns` (Debian package nftables).
pub fn nft(ns: &str, ruleset: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec ... nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "nft in {ns}: {}\n{ruleset}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sets a sysctl of namespace `ns` (`net.ipv4.tcp_fastopen`: per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])
        .output()
        .expect("ip netns exec ... sysctl (procps)");
    assert!(
        output.status.success(),
        "sysctl {key}={value} in {ns}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sets the MTU of namespace `ns`'s loopback (1500 makes TSO build buffers of several
/// segments, as on a real link).
pub fn set_loopback_mtu(ns: &str, mtu: u32) {
    ip(&["-n", ns, "link", "set", "lo", "mtu", &mtu.to_string()]);
}

static QUIET_PORTS: AtomicU32 = AtomicU32::new(0);

/// A port for a service inside a test namespace: below the ephemeral range (32768 and up), so
/// that no client of the machine's own traffic uses it as its local port and lands in the
/// test's port filter, and not listened on in the host's namespace.
pub fn quiet_port() -> u16 {
    loop {
        let n = QUIET_PORTS.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((std::process::id() * 131 + n * 7919) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
