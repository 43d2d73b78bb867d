//! Real resolvers and TLS peers for the phase tests: name lookups inside a mount (and network)
//! namespace whose `/etc/hosts`, `/etc/resolv.conf` and `/etc/nsswitch.conf` the test writes,
//! a test PKI made with `openssl`, `openssl s_server`, and Python `ssl` clients.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use tcpobs::model::{ConnectionRecord, DnsRecord, Record, Role, TlsRecord};

use crate::{PATIENCE, connections};

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A directory of its own under the temporary directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcpobs-{what}-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The system's Python, linked against the system's C library and OpenSSL (not a private
/// build elsewhere on the PATH).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A finished process: its pid (the one its events carry), output and wall-clock time.
pub struct Ran {
    pub pid: u32,
    pub output: Output,
    pub elapsed: Duration,
}

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
}

/// Runs `command` to the end.
pub fn run(mut command: Command) -> Ran {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    Ran {
        pid,
        output,
        elapsed: started.elapsed(),
    }
}

/// Runs `program` in a new mount namespace (and a new network namespace with only loopback
/// up, if `own_network`) where each `(file under /etc, contents)` is bind-mounted over the
/// real one. `unshare` execs the shell, which execs `program`: one pid throughout.
pub fn in_namespace(
    scratch: &Scratch,
    etc: &[(&str, &str)],
    own_network: bool,
    program: &[&str],
) -> Ran {
    let mut script = String::from("set -e; ");
    if own_network {
        script.push_str("ip link set lo up; ");
    }
    for (name, contents) in etc {
        let file = scratch.write(&format!("etc-{name}"), contents);
        script.push_str(&format!(
            "mount --bind '{}' '/etc/{name}'; ",
            file.display()
        ));
    }
    script.push_str("exec \"$@\"");
    let mut command = Command::new("unshare");
    command.arg("--mount");
    if own_network {
        command.arg("--net");
    }
    command.args(["sh", "-c", &script, "sh"]).args(program);
    run(command)
}

/// Resolves `host` with `getaddrinfo` and connects to the first address on `port` (Python's
/// `socket.create_connection`), then says `ok` and closes.
pub const CONNECT_BY_NAME: &str = "
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(b'hello')
print('ok')
";

/// A name the TLS tests resolve through a hosts file of their own.
pub const TLS_HOST: &str = "phases-tls.example";

/// curl fetches `https://TLS_HOST:port/` (trusting `pki`'s CA) in a mount namespace whose
/// hosts file resolves [`TLS_HOST`] to 127.0.0.1: its own resolver code around `getaddrinfo`,
/// a non-blocking socket, `SSL_connect`. Its stdout is the HTTP status.
pub fn curl_tls_host(scratch: &Scratch, pki: &Pki, port: u16) -> Ran {
    let url = format!("https://{TLS_HOST}:{port}/");
    let ca = pki.ca.display().to_string();
    in_namespace(
        scratch,
        &[
            ("hosts", &format!("127.0.0.1 {TLS_HOST}\n")),
            ("nsswitch.conf", "hosts: files\n"),
        ],
        false,
        &[
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            &url,
        ],
    )
}

/// A certificate authority, a server certificate it signed (for `localhost`, [`TLS_HOST`] and
/// 127.0.0.1), and an unrelated authority, made with the `openssl` command.
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    pub fn new(scratch: &Scratch) -> Self {
        let dir = &scratch.0;
        for name in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN=tcpobs test {name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        scratch.write(
            "server.ext",
            &format!(
                "subjectAltName=DNS:localhost,DNS:{TLS_HOST},IP:127.0.0.1\n\
                 basicConstraints=CA:FALSE\n"
            ),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        Self {
            ca: scratch.path("ca.pem"),
            other_ca: scratch.path("other-ca.pem"),
            cert: scratch.path("server.pem"),
            key: scratch.path("server.key"),
        }
    }
}

/// `openssl s_server` on 127.0.0.1:`port` for `accepts` connections (`-www`: answers HTTP
/// GETs with a status page). Its stdin stays open (at end of input it closes the
/// connection). Killed on drop.
pub struct TlsServer {
    child: Child,
    _stdin: Option<std::process::ChildStdin>,
}

impl TlsServer {
    pub fn start(pki: &Pki, port: u16, accepts: u32, www: bool) -> Self {
        let mut command = Command::new("openssl");
        command
            .arg("s_server")
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&pki.cert)
            .arg("-key")
            .arg(&pki.key)
            .args(["-naccept", &accepts.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if www {
            command.arg("-www");
        }
        let mut child = command.spawn().expect("openssl s_server");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (ready, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "ACCEPT" {
                    let _ = ready.send(());
                }
            }
        });
        listening
            .recv_timeout(PATIENCE)
            .expect("openssl s_server did not start listening");
        Self {
            child,
            _stdin: stdin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python `ssl` client: connects to 127.0.0.1:`port`, handshakes (`SSL_do_handshake`)
/// trusting `ca` for `localhost`, sends a line, closes. Prints `ok`, or `failed <error>`.
pub fn python_tls_client(port: u16, ca: &Path) -> Ran {
    run(python_tls_command(port, ca))
}

/// The command [`python_tls_client`] runs.
///
/// The client connects with a 10 s timeout, which makes Python drive the socket
/// non-blocking: each handshake call returns as soon as it would wait. Add the argument
/// `blocking` for a client that waits inside the handshake call instead. The client ends
/// the session with a close_notify and waits for the server's: by then the server's own
/// handshake call has returned, so each end's handshake lands on its connection's record
/// (a client that just closes can reset the connection while the server is still in
/// `SSL_accept`).
pub fn python_tls_command(port: u16, ca: &Path) -> Command {
    const CLIENT: &str = "
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
timeout = None if sys.argv[3:] == ['blocking'] else 10
sock = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=timeout)
try:
    with context.wrap_socket(sock, server_hostname='localhost') as tls:
        tls.sendall(b'hello\\n')
        tls.unwrap()
    print('ok')
except ssl.SSLError as err:
    sock.close()
    print('failed', type(err).__name__)
";
    let mut command = Command::new(python());
    command.args(["-c", CLIENT, &port.to_string()]).arg(ca);
    command
}

/// A C program that resolves its first argument with `getaddrinfo` and prints the result;
/// with a second argument, only once a line arrives on its standard input.
const GETADDRINFO_C: &str = r#"
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    struct addrinfo hints, *res;
    char line[16];
    if (argc > 2 && !fgets(line, sizeof line, stdin))
        return 2;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argc > 1 ? argv[1] : "localhost", NULL, &hints, &res);
    printf("%d\n", rc);
    return rc != 0;
}
"#;

/// That program built with `musl-gcc` (Debian package musl-tools): dynamically linked
/// against musl's shared C library, `/lib/ld-musl-<arch>.so.1`.
pub fn musl_resolver(scratch: &Scratch) -> PathBuf {
    let source = scratch.write("getaddrinfo.c", GETADDRINFO_C);
    let binary = scratch.path("getaddrinfo-musl");
    let output = Command::new("musl-gcc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("musl-gcc (Debian package musl-tools)");
    assert!(
        output.status.success(),
        "musl-gcc: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// 127.0.0.1.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The resolutions of process `pid`.
pub fn dns_records(records: &[Record], pid: u32) -> Vec<DnsRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Dns(dns) if dns.process.pid == pid => Some(dns.clone()),
            _ => None,
        })
        .collect()
}

/// The handshakes of process `pid`.
pub fn tls_records(records: &[Record], pid: u32) -> Vec<TlsRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Tls(tls) if tls.process.is_some_and(|p| p.pid == pid) => Some(tls.clone()),
            _ => None,
        })
        .collect()
}

/// The closed, established client connection of `pid` to 127.0.0.1:`port`.
pub fn client_of(records: &[Record], pid: u32, port: u16) -> Option<ConnectionRecord> {
    connections(records).into_iter().find(|c| {
        c.role == Role::Client
            && c.close.is_some()
            && c.connect_failure.is_none()
            && c.process.is_some_and(|p| p.pid == pid)
            && c.addrs.remote() == (LOOPBACK, port).into()
    })
}

/// The names on a connection's timeline, in order.
pub fn timeline_names(connection: &ConnectionRecord) -> Vec<&'static str> {
    connection
        .timeline()
        .entries()
        .iter()
        .map(|entry| entry.name)
        .collect()
}

/// Accepts one connection and reads it to the end, in the background.
pub fn accept_one(listener: TcpListener) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        stream.read_to_end(&mut data).unwrap();
        data
    })
}
