//! Request/response traffic for the tests: a server that answers every 4-byte request with 2
//! bytes and clients that make a given number of exchanges (for the daemon), and captured
//! scenarios (one exchange with a chosen closer, three exchanges with known pauses).

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use tcpobs::model::ConnectionRecord;

use crate::{Capture, listen, read_n, write_all};

/// A server that answers every 4-byte request with 2 bytes, on every connection, until the
/// client closes.
pub fn serve(listener: TcpListener, connections: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut handlers = Vec::new();
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            handlers.push(thread::spawn(move || {
                let mut request = [0; 4];
                while stream.read_exact(&mut request).is_ok() {
                    write_all(&mut stream, b"ok");
                }
            }));
        }
        for handler in handlers {
            handler.join().unwrap();
        }
    })
}

/// One client connection with `exchanges` request/response exchanges; the client closes.
pub fn client(addr: std::net::SocketAddr, exchanges: usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    for _ in 0..exchanges {
        write_all(&mut stream, b"ping");
        assert_eq!(read_n(&mut stream, 2), b"ok");
    }
}

/// One request ("hello") and response ("world!"); then `client_closes` picks who closes first.
pub fn one_exchange(addr: &str, client_closes: bool) -> (Vec<ConnectionRecord>, Capture) {
    let (listener, addr) = listen(addr);
    let capture = Capture::start(&[addr.port()]);
    thread::scope(|scope| {
        scope.spawn(|| {
            let (mut stream, _) = listener.accept().unwrap();
            assert_eq!(read_n(&mut stream, 5), b"hello");
            write_all(&mut stream, b"world!");
            if client_closes {
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).unwrap();
            }
        });
        let mut client = TcpStream::connect(addr).unwrap();
        write_all(&mut client, b"hello");
        assert_eq!(read_n(&mut client, 6), b"world!");
        if !client_closes {
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).unwrap();
        }
    });
    let connections = capture.wait_connections(2);
    (connections, capture)
}

/// Three exchanges with known pauses and server think times; the request is two writes.
pub fn paced_exchanges(
    capture_options: tcpobs::kernel::loader::LoadOptions,
    listener: TcpListener,
) -> (Vec<ConnectionRecord>, Vec<tcpobs::model::Record>, Capture) {
    let addr = listener.local_addr().unwrap();
    let capture = Capture::start_with(capture_options);
    let pauses = [500, 300];
    let think = [0, 100, 0];
    thread::scope(|scope| {
        scope.spawn(|| {
            let (mut stream, _) = listener.accept().unwrap();
            for delay in think {
                assert_eq!(read_n(&mut stream, 8), b"GET /abc");
                thread::sleep(Duration::from_millis(delay));
                write_all(&mut stream, b"200 OK");
            }
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
        });
        let mut client = TcpStream::connect(addr).unwrap();
        for round in 0..3 {
            write_all(&mut client, b"GET ");
            thread::sleep(Duration::from_millis(50));
            write_all(&mut client, b"/abc");
            assert_eq!(read_n(&mut client, 6), b"200 OK");
            if let Some(pause) = pauses.get(round) {
                thread::sleep(Duration::from_millis(*pause));
            }
        }
        thread::sleep(Duration::from_millis(200));
    });
    let connections = capture.wait_connections(2);
    let records = capture.records();
    (connections, records, capture)
}
