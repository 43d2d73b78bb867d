//! Request/response traffic for the daemon tests: a server that answers every 4-byte request
//! with 2 bytes, and clients that make a given number of exchanges.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    thread,
};

use crate::{read_n, write_all};

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
