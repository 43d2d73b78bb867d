//! Container and pod metadata end to end: processes run inside cgroups the test creates (a
//! plain one, and one laid out as the kubelet and containerd name a pod's container), connect
//! on loopback, and their connections carry that cgroup, the container id, and the pod's
//! namespace and name from a pod log directory the test lays out; the same values label the
//! metrics with `--label pod --label namespace`, under which the kernel folds a pod's
//! exchanges.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
};

use serde_json::Value;
use tcpobs_tests::{daemon::Daemon, listen, read_n, write_all};

const CONTAINER_ID: &str = "5f1d0c2b3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
const POD_UID: &str = "0b7d3c1e-9f2a-4c6b-8d5e-1a2b3c4d5e6f";

/// Cgroups and a pod log directory made for one test, removed afterwards.
struct Layout {
    cgroup_root: PathBuf,
    /// The test's own cgroup, below the root.
    base: String,
    pod_logs: PathBuf,
}

impl Layout {
    fn new() -> Self {
        let cgroup_root = tcpobs::metadata::default_cgroup_root().to_path_buf();
        assert!(
            cgroup_root.join("cgroup.procs").exists(),
            "cgroup v2 is not mounted at {}",
            cgroup_root.display()
        );
        let base = format!("/tcpobs-test-{}", std::process::id());
        let pod_logs = std::env::temp_dir().join(format!("tcpobs-pod-logs-{}", std::process::id()));
        let layout = Self {
            cgroup_root,
            base,
            pod_logs,
        };
        layout.remove();
        fs::create_dir_all(&layout.pod_logs).unwrap();
        layout
    }

    /// Creates a cgroup below the test's own; returns its path below the root.
    fn cgroup(&self, path: &str) -> String {
        let path = format!("{}/{path}", self.base);
        fs::create_dir_all(self.dir(&path)).unwrap();
        path
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.cgroup_root.join(path.trim_start_matches('/'))
    }

    /// Moves a process into a cgroup.
    fn enter(&self, path: &str, pid: u32) {
        fs::write(self.dir(path).join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|err| panic!("moving {pid} to {path}: {err}"));
    }

    /// Removes cgroups bottom-up (they must be empty).
    fn remove_cgroup(&self, path: &str) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.dir(path)];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.filter_map(Result::ok) {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }

    fn remove(&self) {
        self.remove_cgroup(&self.base);
        let _ = fs::remove_dir_all(&self.pod_logs);
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A shell that moves itself into `cgroup`, connects to `port`, sends `ping`, reads two
/// bytes, and then holds the connection until its standard input closes.
fn connect_from(layout: &Layout, cgroup: &str, port: u16) -> Child {
    let procs = layout.dir(cgroup).join("cgroup.procs");
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec 3<>/dev/tcp/127.0.0.1/{port} && printf ping >&3 \
             && head -c 2 <&3 >/dev/null && read -r _",
            procs.display()
        ))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Accepts one connection and answers its `ping`.
fn answer(listener: &TcpListener) -> TcpStream {
    let (mut stream, _) = listener.accept().unwrap();
    assert_eq!(read_n(&mut stream, 4), b"ping");
    write_all(&mut stream, b"ok");
    stream
}

/// Lets the shell exit (closing its connection) and waits for it.
fn release(mut child: Child, server: TcpStream) {
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    drop(server);
}

fn own_cgroup() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap()
        .to_owned()
}

/// The connection event of the client end whose process is `pid`.
fn client_event(events: &[Value], pid: u32) -> Option<Value> {
    events
        .iter()
        .find(|e| e["type"] == "connection" && e["role"] == "client" && e["pid"] == pid)
        .cloned()
}

#[test]
fn connections_carry_the_cgroup_container_and_pod_of_their_process() {
    let layout = Layout::new();
    let plain = layout.cgroup("plain");
    let pod = layout.cgroup(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CONTAINER_ID}.scope",
        POD_UID.replace('-', "_")
    ));
    fs::create_dir_all(layout.pod_logs.join(format!("shop_checkout-0_{POD_UID}"))).unwrap();

    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let daemon = Daemon::start(&[
        "--port",
        &port,
        "--cgroup-root",
        layout.cgroup_root.to_str().unwrap(),
        "--pod-log-root",
        layout.pod_logs.to_str().unwrap(),
    ]);

    let in_pod = connect_from(&layout, &pod, addr.port());
    let pod_pid = in_pod.id();
    let pod_server = answer(&listener);
    let in_plain = connect_from(&layout, &plain, addr.port());
    let plain_pid = in_plain.id();
    let plain_server = answer(&listener);

    // Both shells' connections live in the daemon's table (their opens may be deferred for a
    // moment), then a marker connection, opened and closed after both: once its events are
    // written, the daemon has handled both shells' connections being announced, which is when
    // their metadata is looked up.
    daemon.wait_live(addr.port(), 4);
    let marker = TcpStream::connect(addr).unwrap();
    let marker_port = marker.local_addr().unwrap().port();
    drop(marker);
    drop(listener.accept().unwrap());
    daemon.wait_events("the marker connection", |events| {
        events
            .iter()
            .filter(|e| {
                e["type"] == "connection"
                    && (e["local_port"] == marker_port || e["remote_port"] == marker_port)
            })
            .count()
            == 2
    });

    // The pod's container goes away before its connection closes, as a short-lived container
    // does: its process leaves the cgroup and the cgroup is removed. The metadata looked up
    // while the connection was young still applies.
    layout.enter("/", pod_pid);
    layout.remove_cgroup(&format!("{}/kubepods.slice", layout.base));
    assert!(!layout.dir(&pod).exists(), "the pod's cgroup is removed");
    release(in_pod, pod_server);
    release(in_plain, plain_server);

    let events = daemon.wait_events("both shells' connections, both ends", |events| {
        client_event(events, pod_pid).is_some()
            && client_event(events, plain_pid).is_some()
            && events
                .iter()
                .filter(|e| e["type"] == "connection" && e["role"] == "server")
                .count()
                >= 3
    });
    let from_pod = client_event(&events, pod_pid).unwrap();
    assert_eq!(from_pod["cgroup"], pod.as_str(), "{from_pod}");
    assert_eq!(from_pod["container_id"], CONTAINER_ID, "{from_pod}");
    assert_eq!(from_pod["pod_uid"], POD_UID, "{from_pod}");
    assert_eq!(from_pod["namespace"], "shop", "{from_pod}");
    assert_eq!(from_pod["pod"], "checkout-0", "{from_pod}");

    let from_plain = client_event(&events, plain_pid).unwrap();
    assert_eq!(from_plain["cgroup"], plain.as_str(), "{from_plain}");
    for key in ["container_id", "pod_uid", "namespace", "pod"] {
        assert!(from_plain[key].is_null(), "{key}: {from_plain}");
    }

    // The accepted ends belong to this test process, in its own cgroup.
    let own = own_cgroup();
    let servers: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "connection" && e["role"] == "server")
        .collect();
    assert_eq!(servers.len(), 3, "{events:#?}");
    for server in servers {
        assert_eq!(server["pid"], std::process::id(), "{server}");
        assert_eq!(server["cgroup"], own.as_str(), "{server}");
        assert!(server["pod"].is_null(), "{server}");
    }

    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// A pod's cgroup (namespace `shop`, pod `checkout-0`) and log directory, a listener, and a
/// daemon tracing its port with `--label pod --label namespace`.
fn labeled_pod() -> (Layout, String, TcpListener, SocketAddr, Daemon) {
    let layout = Layout::new();
    let pod = layout.cgroup(&format!("kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"));
    fs::create_dir_all(layout.pod_logs.join(format!("shop_checkout-0_{POD_UID}"))).unwrap();
    let (listener, addr) = listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let daemon = Daemon::start(&[
        "--port",
        &port,
        "--cgroup-root",
        layout.cgroup_root.to_str().unwrap(),
        "--pod-log-root",
        layout.pod_logs.to_str().unwrap(),
        "--label",
        "pod",
        "--label",
        "namespace",
    ]);
    (layout, pod, listener, addr, daemon)
}

/// `--label pod --label namespace`: a pod's connections count under its pod, the others under
/// no pod (the empty value).
#[test]
fn pod_and_namespace_label_the_metrics() {
    let (layout, pod, listener, addr, daemon) = labeled_pod();
    let in_pod = connect_from(&layout, &pod, addr.port());
    let pod_pid = in_pod.id();
    let server = answer(&listener);
    release(in_pod, server);
    daemon.wait_events("the pod's connection", |events| {
        client_event(events, pod_pid).is_some()
    });
    assert_eq!(
        daemon.metric(
            "tcpobs_connections_opened_total{role=\"client\",pod=\"checkout-0\",namespace=\"shop\"}"
        ),
        1.0
    );
    // The accepted end is this test process's, outside any pod.
    assert_eq!(
        daemon.metric("tcpobs_connections_opened_total{role=\"server\",pod=\"\",namespace=\"\"}"),
        1.0
    );
    assert_eq!(
        daemon.metric(
            "tcpobs_exchanges_total{role=\"client\",class=\"unique\",pod=\"checkout-0\",namespace=\"shop\"}"
        ),
        1.0
    );
}

/// With only `pod`/`namespace` labels the kernel folds exchanges by label slot: once the daemon
/// has given the cgroups of a connection's ends a slot (it does when it learns of the
/// connection), their exchanges cost no event, and the labeled counts and histograms are exact
/// (those before the slot counted from their events, the others from the kernel's folds).
#[test]
fn a_pods_exchanges_are_folded_under_its_labels() {
    let (layout, pod, listener, addr, daemon) = labeled_pod();
    // A shell in the pod makes as many `ping`/`ok` exchanges as each line of its input says
    // (answering `done`), on one connection, and closes it when its input ends.
    let procs = layout.dir(&pod).join("cgroup.procs");
    let mut shell = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec 3<>/dev/tcp/127.0.0.1/{} && while read -r n; do \
             for ((i = 0; i < n; i++)); do printf ping >&3 && read -r -N 2 -u 3 _; done; \
             echo done; done",
            procs.display(),
            addr.port()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4];
        while stream.read_exact(&mut request).is_ok() {
            assert_eq!(&request, b"ping");
            write_all(&mut stream, b"ok");
        }
    });
    let mut input = shell.stdin.take().unwrap();
    let mut output = BufReader::new(shell.stdout.take().unwrap());
    let mut exchange = |n: u32| {
        writeln!(input, "{n}").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line, "done\n");
    };
    exchange(5);
    daemon.wait_live(addr.port(), 2);
    // Both ends' cgroups (the pod's, and this test's for the accepted end) get a slot.
    daemon.wait_metric("tcpobs_label_slot_cgroups", |cgroups| cgroups >= 2.0);
    assert!(daemon.metric("tcpobs_label_slots") >= 2.0);
    let burst = "tcpobs_events_total{kind=\"burst\"}";
    let events = daemon.metric(burst);
    exchange(20);
    let labels = "pod=\"checkout-0\",namespace=\"shop\"";
    // The fifth exchange ended when the sixth request began, and so on: 24 ended by a request.
    let continued =
        format!("tcpobs_exchanges_total{{role=\"client\",class=\"continue\",{labels}}}");
    daemon.wait_metric(&continued, |count| count >= 23.0);
    assert_eq!(daemon.metric(burst), events, "folded, not sent");
    drop(input);
    assert!(shell.wait().unwrap().success());
    server.join().unwrap();
    let last = format!("tcpobs_exchanges_total{{role=\"client\",class=\"last\",{labels}}}");
    daemon.wait_metric(&last, |count| count >= 1.0);
    let count = |sample: String| daemon.metric(&sample);
    assert_eq!(
        count(format!(
            "tcpobs_exchanges_total{{role=\"client\",class=\"start\",{labels}}}"
        )),
        1.0
    );
    assert_eq!(count(continued.clone()), 23.0);
    assert_eq!(count(last), 1.0);
    // Every exchange has a response time, under the pod's labels on the client's side and no
    // pod's on the server's.
    assert_eq!(
        count(format!(
            "tcpobs_response_duration_seconds_count{{role=\"client\",{labels}}}"
        )),
        25.0
    );
    assert_eq!(
        count(
            "tcpobs_response_duration_seconds_count{role=\"server\",pod=\"\",namespace=\"\"}"
                .to_owned()
        ),
        25.0
    );
}
