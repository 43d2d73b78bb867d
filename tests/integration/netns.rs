//! Loss and silence, in network namespaces the test makes: retransmissions, an established
//! connection that times out, a SYN nobody answers, an unreachable host, and a server's child
//! socket reset before its handshake completed.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use tcpobs::model::{CloseKind, CloseOriginator, ConnectFailure, ConnectionRecord, Role};
use tcpobs_tests::{
    Capture, closed_port, connections,
    netns::{NetnsPair, in_netns, nft, sysctl, tcp_counters},
};

fn client_socket(configure: impl FnOnce(&Socket)) -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    configure(&socket);
    socket
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: i32) {
    // SAFETY: a valid fd, and a pointer to an int with its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

fn client_of(connections: &[ConnectionRecord]) -> ConnectionRecord {
    connections
        .iter()
        .find(|c| c.role == Role::Client)
        .cloned()
        .unwrap_or_else(|| panic!("no client connection: {connections:#?}"))
}

/// The peer vanishes mid-connection: the client retransmits, then the kernel gives up
/// (TCP_USER_TIMEOUT): close kind and originator `timeout`, retransmits counted.
#[test]
fn established_connection_times_out_after_retransmits() {
    let pair = NetnsPair::create();
    let port = closed_port();
    let server_addr: SocketAddr = format!("{}:{port}", pair.addr_b()).parse().unwrap();
    let listener = in_netns(&pair.b, move || TcpListener::bind(server_addr).unwrap())
        .join()
        .unwrap();
    let capture = Capture::start(&[port]);
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0; 4];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(b"pong").unwrap();
        stream
    });
    let client = in_netns(&pair.a, move || {
        let socket = client_socket(|s| {
            s.set_tcp_user_timeout(Some(Duration::from_millis(1500)))
                .unwrap()
        });
        socket.connect(&server_addr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream.write_all(b"ping").unwrap();
        let mut response = [0; 4];
        stream.read_exact(&mut response).unwrap();
        stream
    })
    .join()
    .unwrap();
    let _server_end = server.join().unwrap();
    pair.cut();
    let mut client = client;
    client.write_all(b"lost in transit").unwrap();
    let mut buf = [0; 16];
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let connections = capture.wait_for("the client connection to close", |records| {
        let closed: Vec<_> = tcpobs_tests::connections(records)
            .into_iter()
            .filter(|c| c.role == Role::Client && c.close.is_some())
            .collect();
        (!closed.is_empty()).then_some(closed)
    });
    let record = client_of(&connections);
    let close = record.close.as_ref().unwrap();
    assert_eq!(close.kind, CloseKind::Timeout, "{record:#?}");
    assert_eq!(close.originator, CloseOriginator::Timeout);
    assert_eq!(close.errno, 110);
    assert!(record.retransmits >= 1, "{record:#?}");
    assert_eq!(
        record.exchanges, 2,
        "ping/pong, then the unanswered request"
    );
    drop(client);
}

/// A SYN into silence, with one retry: connect timeout, and the SYN retransmit is counted.
#[test]
fn unanswered_syn_is_a_connect_timeout() {
    let pair = NetnsPair::create();
    let port = closed_port();
    let target: SocketAddr = format!("{}:{port}", pair.silent_host(true))
        .parse()
        .unwrap();
    let capture = Capture::start(&[port]);
    let err = in_netns(&pair.a, move || {
        // One SYN retransmission: the connect gives up after about 3 s.
        let socket = client_socket(|s| set_int_option(s, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 1));
        socket.connect(&target.into()).unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let record = client_of(&capture.wait_connections(1));
    let families = capture.families();
    assert_eq!(
        record.connect_failure,
        Some(ConnectFailure::Timeout),
        "{record:#?}\n{families:#?}"
    );
    assert!(record.retransmits >= 1, "{record:#?}");
    // The kernel counts a retransmitted SYN too (a retransmit that fails to leave, as when the
    // peer's route is gone, it does not count, unlike the tracepoint).
    let tcp = record.tcp.unwrap_or_else(|| panic!("{record:#?}"));
    assert!(tcp.total_retrans >= 1, "{tcp:?}");
    assert_eq!(record.addrs.remote(), target);
    let close = record.close.unwrap();
    assert_eq!(close.final_state, 2, "left from SYN_SENT");
    assert_eq!(close.errno, 110);
}

/// Nobody answers ARP: the kernel reports the host unreachable.
#[test]
fn unresolvable_neighbor_is_unreachable() {
    let pair = NetnsPair::create();
    let port = closed_port();
    let target: SocketAddr = format!("{}:{port}", pair.silent_host(false))
        .parse()
        .unwrap();
    let capture = Capture::start(&[port]);
    let err = in_netns(&pair.a, move || {
        let socket = client_socket(|_| {});
        socket
            .connect_timeout(&target.into(), Duration::from_secs(15))
            .unwrap_err()
    })
    .join()
    .unwrap();
    // The kernel reports EHOSTUNREACH. Once (5.10 under emulation, in CI) the poll reported
    // POLLHUP or POLLERR with `SO_ERROR` empty, socket2's "no error set after POLLHUP": the
    // connect failed, without saying why, and what this test is about is tcpobs's verdict
    // below, which must still say unreachable (its message then shows the `sk_err` tcpobs read
    // at the close). A timeout, a connection or another errno still fails here.
    let pollhup_without_error =
        err.kind() == ErrorKind::Other && err.to_string() == "no error set after POLLHUP";
    assert!(
        err.raw_os_error() == Some(libc::EHOSTUNREACH) || pollhup_without_error,
        "{err:?}"
    );
    let record = client_of(&capture.wait_connections(1));
    // Where the error comes from (the errors family, or the SYN's drop) if it goes wrong.
    let families = capture.families();
    assert_eq!(
        record.connect_failure,
        Some(ConnectFailure::Unreachable),
        "the application saw {err:?}\n{record:#?}\n{families:#?}"
    );
}

/// A server's child socket that is closed before its handshake completes, never accepted, is
/// not a connection: no server record. Staged with Fast Open, where the server's kernel makes
/// the child from the SYN (data and all) and the client's side answers its SYN-ACK with a
/// reset; the child is freed with its listener. The same rule keeps out the child that loses a
/// race of two CPUs completing one handshake (closed on the spot, its segment going to the
/// winner), which cannot be staged. The client's failed connect is reported.
#[test]
fn a_server_child_reset_before_its_handshake_is_not_a_connection() {
    let pair = NetnsPair::create();
    let port = closed_port();
    // Fast Open without cookies: a as a client (1 | 4), b on every listener (2 | 0x200 | 0x400).
    sysctl(&pair.a, "net.ipv4.tcp_fastopen", "5");
    sysctl(&pair.b, "net.ipv4.tcp_fastopen", "1538");
    nft(
        &pair.a,
        &format!(
            "table inet tcpobs_reset {{\n chain input {{\n type filter hook input priority 0;\n \
             tcp sport {port} tcp flags & syn == syn reject with tcp reset\n }}\n}}\n"
        ),
    );
    let server_addr: SocketAddr = format!("{}:{port}", pair.addr_b()).parse().unwrap();
    let listener = in_netns(&pair.b, move || TcpListener::bind(server_addr).unwrap())
        .join()
        .unwrap();
    let capture = Capture::start(&[port]);
    let before = tcp_counters(&pair.b);
    let client = in_netns(&pair.a, move || {
        let socket = client_socket(|s| s.set_nonblocking(true).unwrap());
        // Non-blocking, without a cookie: the data leaves in the SYN at once.
        let sent = socket.send_to_with_flags(b"hello", &server_addr.into(), libc::MSG_FASTOPEN);
        assert_eq!(sent.as_ref().ok(), Some(&5), "{sent:?}");
        socket
    })
    .join()
    .unwrap();
    // b made a Fast Open child and saw it reset in SYN_RECV (an attempt that failed).
    let counter = |name: &str, counters: &std::collections::HashMap<String, u64>| {
        counters.get(name).copied().unwrap_or(0)
    };
    for _ in 0..200 {
        if counter("Tcp.AttemptFails", &tcp_counters(&pair.b))
            > counter("Tcp.AttemptFails", &before)
        {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    let after = tcp_counters(&pair.b);
    assert!(
        counter("TcpExt.TCPFastOpenPassive", &after)
            > counter("TcpExt.TCPFastOpenPassive", &before),
        "no Fast Open child: {after:?}"
    );
    assert!(
        counter("Tcp.AttemptFails", &after) > counter("Tcp.AttemptFails", &before),
        "the child was not reset: {after:?}"
    );
    // Closed in SYN_SENT: the client's connect fails. The listener frees the child it queued.
    drop(client);
    drop(listener);
    let client = capture.wait_for("the client's failed connect", |records| {
        connections(records)
            .into_iter()
            .find(|c| c.role == Role::Client)
    });
    assert_eq!(client.addrs.remote(), server_addr, "{client:#?}");
    assert!(client.connect_failure.is_some(), "{client:#?}");
    let (records, _) = capture.stop();
    let all = connections(&records);
    assert!(
        all.iter().all(|c| c.role != Role::Server),
        "a server connection for a child never established: {all:#?}"
    );
    assert_eq!(all.len(), 1, "{all:#?}");
}
