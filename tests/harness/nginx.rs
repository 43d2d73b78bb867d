//! A real nginx, started by the test from its own configuration on a free loopback port.

use std::{
    fs,
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// The body nginx returns for every request (`/`, and `/close-delimited` without a
/// `Content-Length`).
pub const BODY: &str = "hello from nginx\n";

pub struct Nginx {
    pub port: u16,
    dir: PathBuf,
    child: Child,
    /// The `stub_status` URL, if started with one.
    status: Option<String>,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Nginx {
    /// Starts nginx on `port` (IPv4 and IPv6 loopback) with the given keep-alive timeout, and
    /// waits until it accepts connections. Start it *before* the capture: the readiness probe
    /// is a connection too.
    pub fn start(port: u16, keepalive_timeout: &str) -> Self {
        Self::start_on(
            "127.0.0.1",
            &format!("listen 127.0.0.1:{port};\n        listen [::1]:{port};"),
            port,
            keepalive_timeout,
            "",
        )
    }

    /// Starts nginx on `ip:port` only, with its connection counters (`stub_status`) served on
    /// `ip:status_port` ([`Nginx::handled`]): trace `port` alone, and reading the counters is
    /// not part of what is traced.
    pub fn start_with_status(ip: Ipv4Addr, port: u16, status_port: u16) -> Self {
        let status = format!(
            "server {{\n        listen {ip}:{status_port};\n        \
             location = /status {{ stub_status; }}\n    }}"
        );
        let mut nginx = Self::start_on(
            &ip.to_string(),
            &format!("listen {ip}:{port};"),
            port,
            "0",
            &status,
        );
        nginx.status = Some(format!("http://{ip}:{status_port}/status"));
        nginx
    }

    /// The connections nginx has handled so far (`stub_status`), this reading's own included.
    pub fn handled(&self) -> u64 {
        let url = self
            .status
            .as_deref()
            .expect("started with start_with_status");
        let status = curl(&[url]);
        // "Active connections: 1\nserver accepts handled requests\n 7 7 7\n..."
        let counters = status
            .lines()
            .skip_while(|line| !line.starts_with("server accepts"))
            .nth(1)
            .unwrap_or_else(|| panic!("no counters in {status:?}"));
        counters.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn start_on(ip: &str, listen: &str, port: u16, keepalive_timeout: &str, servers: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcpobs-nginx-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 128; }}
http {{
    access_log off;
    keepalive_timeout {keepalive_timeout};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        {listen}
        location / {{ return 200 '{body}'; }}
        # No Content-Length (the sub filter drops it): an HTTP/1.0 response then ends when
        # the server closes, so the server is always first to close.
        location /close-delimited {{
            default_type text/html;
            sub_filter 'nginx' 'nginx';
            return 200 '{body}';
        }}
    }}
    {servers}
}}
",
            dir = dir.display(),
            body = BODY.replace('\n', "\\n"),
        );
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx not installed: run `cargo xtask setup`");
        let nginx = Self {
            port,
            dir,
            child,
            status: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start; see {}",
                nginx.dir.join("error.log").display()
            );
            thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop, then reap.
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs curl with `args`, asserting success; returns its stdout.
pub fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl not installed: run `cargo xtask setup`");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Sends one HTTP/1.1 GET with the given `Connection` header (none if `None`) and reads the
/// whole response (headers and `Content-Length` body). Returns the response head.
pub fn http_get(stream: &mut TcpStream, connection: Option<&str>) -> String {
    use std::io::{Read as _, Write as _};
    let header = connection.map_or(String::new(), |value| format!("Connection: {value}\r\n"));
    let request = format!("GET / HTTP/1.1\r\nHost: localhost\r\n{header}\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .expect("nginx sends Content-Length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(body, BODY.as_bytes());
    head
}
