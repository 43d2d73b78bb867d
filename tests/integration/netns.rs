//! Loss and silence, in network namespaces the test makes: retransmissions, an established
//! connection that times out, a SYN nobody answers, and an unreachable host.

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
    Capture, closed_port,
    netns::{NetnsPair, in_netns},
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
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");
    let record = client_of(&capture.wait_connections(1));
    // Where the error comes from (the errors family, or the SYN's drop) if it goes wrong.
    let families = capture.families();
    assert_eq!(
        record.connect_failure,
        Some(ConnectFailure::Unreachable),
        "{record:#?}\n{families:#?}"
    );
}
