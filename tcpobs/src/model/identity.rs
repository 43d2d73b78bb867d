//! Who a connection is: its local and remote addresses, and the process that owns the socket.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tcpobs_common::{Endpoints, Task};

use super::Role;

/// The local and remote ends of a socket. Kept as addresses and ports rather than two
/// `SocketAddr`s (whose IPv6 flow and scope fields tcpobs never uses): the live table holds
/// one per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addrs {
    local_ip: IpAddr,
    remote_ip: IpAddr,
    local_port: u16,
    remote_port: u16,
}

impl Addrs {
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            local_ip: local.ip(),
            remote_ip: remote.ip(),
            local_port: local.port(),
            remote_port: remote.port(),
        }
    }

    /// IPv4-mapped IPv6 addresses are shown as IPv4.
    pub fn from_kernel(endpoints: &Endpoints) -> Self {
        let ip = |bytes: &[u8; 16]| -> IpAddr {
            if endpoints.family == 10 {
                Ipv6Addr::from(*bytes).to_canonical()
            } else {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            }
        };
        Self {
            local_ip: ip(&endpoints.laddr),
            remote_ip: ip(&endpoints.raddr),
            local_port: endpoints.lport,
            remote_port: endpoints.rport,
        }
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.local_port)
    }

    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_ip, self.remote_port)
    }

    /// (client end, server end) for a socket of this role; local first when unknown.
    pub fn client_server(&self, role: Role) -> (SocketAddr, SocketAddr) {
        match role {
            Role::Server => (self.remote(), self.local()),
            Role::Client | Role::Unknown => (self.local(), self.remote()),
        }
    }
}

/// A process name (`comm`), at most 15 bytes, NUL-padded as the kernel keeps it, inline:
/// records are copied a lot and a heap string each would cost an allocation per connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    /// From the kernel's NUL-padded `comm`; bytes that are not UTF-8 become `?`.
    pub fn from_kernel(raw: &[u8; 16]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len() - 1);
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&raw[..len]);
        if std::str::from_utf8(&bytes[..len]).is_err() {
            for byte in &mut bytes[..len] {
                if !byte.is_ascii() {
                    *byte = b'?';
                }
            }
        }
        Self(bytes)
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The process a socket belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup v2 id (0 if unknown), which names the container on a container host.
    pub cgroup: u64,
}

impl Process {
    pub fn from_kernel(task: &Task) -> Option<Self> {
        if task.pid == 0 {
            return None;
        }
        Some(Self {
            pid: task.pid,
            comm: Comm::from_kernel(&task.comm),
            cgroup: task.cgroup,
        })
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pid, self.comm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_decode_and_unmap_ipv4_in_ipv6() {
        let mut endpoints = Endpoints {
            lport: 8080,
            rport: 41000,
            family: 2,
            ..Default::default()
        };
        endpoints.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        endpoints.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let addrs = Addrs::from_kernel(&endpoints);
        assert_eq!(addrs.local(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(addrs.remote(), "10.1.2.3:41000".parse().unwrap());
        assert_eq!(
            addrs.client_server(Role::Server),
            (addrs.remote(), addrs.local())
        );

        endpoints.family = 10;
        endpoints.laddr = "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets();
        endpoints.raddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let addrs = Addrs::from_kernel(&endpoints);
        assert_eq!(addrs.local(), "192.0.2.1:8080".parse().unwrap());
        assert_eq!(addrs.remote(), "[2001:db8::1]:41000".parse().unwrap());
    }

    #[test]
    fn process_needs_a_pid_and_trims_comm() {
        assert_eq!(Process::from_kernel(&Task::default()), None);
        let task = Task {
            pid: 7,
            tid: 8,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            cgroup: 1234,
        };
        let process = Process::from_kernel(&task).unwrap();
        assert_eq!(process.to_string(), "7/nginx");
        assert_eq!(process.comm, "nginx");
        assert_eq!(process.cgroup, 1234);
        let odd = Comm::from_kernel(b"a\xffb\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(odd.as_str(), "a?b");
    }
}
