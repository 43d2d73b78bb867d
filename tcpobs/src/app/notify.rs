//! systemd's readiness protocol (`sd_notify(3)`), spoken directly: when systemd starts a
//! `Type=notify` service it sets `NOTIFY_SOCKET` to a unix datagram socket, and the service
//! sends newline-separated `KEY=value` assignments to it. tcpobs sends `READY=1` once every
//! kernel program is attached (so `systemctl start` returns when connections are being
//! traced, and units ordered after tcpobs start then) and `STOPPING=1` when it begins to shut
//! down. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
};

use tracing::{debug, warn};

/// Where systemd listens for notifications.
#[derive(Debug)]
pub(super) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket. `None` when unset;
    /// an address that cannot be used is logged and ignored.
    pub(super) fn from_env() -> Option<Self> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        let value = value.to_string_lossy();
        match Self::new(&value) {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                warn!(NOTIFY_SOCKET = %value, "cannot notify systemd: {err}");
                None
            }
        }
    }

    /// A notifier for the socket `address` (a path, or `@name` for an abstract socket).
    pub(super) fn new(address: &str) -> io::Result<Self> {
        let addr = match address.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None if address.starts_with('/') => SocketAddr::from_pathname(address)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a unix socket path or @abstract name",
                ));
            }
        };
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends `state`, e.g. `READY=1`. Failures are logged: a service manager that stopped
    /// listening is no reason to stop tracing.
    pub(super) fn notify(&self, state: &str) {
        match self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            Ok(_) => debug!(state, "notified systemd"),
            Err(err) => warn!(state, "cannot notify systemd: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let path = std::env::temp_dir().join(format!("tcpobs-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        notifier.notify("READY=1\nSTATUS=tracing");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=tracing");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("tcpobs-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .notify("STOPPING=1");
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn rejects_other_addresses() {
        for address in ["relative/path", "vsock:2:1234", ""] {
            assert!(Notifier::new(address).is_err(), "{address}");
        }
        // Nobody listening: logged, not fatal.
        Notifier::new("/nonexistent/notify.sock")
            .unwrap()
            .notify("READY=1");
    }
}
