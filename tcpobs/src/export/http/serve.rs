//! Serving the API: the listeners (TCP, with TLS when the web config has it, or a Unix
//! socket), and each connection bounded in time and in number, so that a client that opens
//! sockets and sends nothing cannot starve `/healthz`:
//! - a connection must send complete request headers within [`HEADER_TIMEOUT`] of opening or
//!   of its previous response (this is also the keep-alive idle timeout), and a TLS client must
//!   finish its handshake within [`HANDSHAKE_TIMEOUT`];
//! - at most `max_connections` per listener: when full, a new connection closes the oldest
//!   connection that has no request in progress (idle, or still sending its headers), and is
//!   refused only when every one is busy. Each is counted in `tcpobs_http_connections_dropped_total`.
//! - Plain HTTP sent to a TLS listener gets a 400 that says so, as Go's servers answer.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt, io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UnixListener},
    sync::{Notify, watch},
    time::timeout,
};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::web::Web;
use crate::sync::lock;

/// Time for a connection to send complete request headers, from its start or its previous
/// response: the header-read and keep-alive idle timeout.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a TLS client to send its first byte and complete the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which API a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Api {
    /// `--listen`: metrics and health.
    Metrics,
    /// `--admin-listen`: everything, settings and the live table included.
    Admin,
}

impl Api {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Admin => "admin",
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    /// A Unix socket client, as the kernel says (`SO_PEERCRED`).
    Unix {
        uid: Option<u32>,
        pid: Option<i32>,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix { uid, pid } => {
                write!(f, "unix socket")?;
                if let Some(uid) = uid {
                    write!(f, " uid {uid}")?;
                }
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                Ok(())
            }
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Bound {
    Tcp(TcpListener),
    /// The socket file is removed when the server stops.
    Unix(UnixListener, PathBuf),
}

/// Binds a Unix socket that only the daemon's user can use (mode 0600), creating its
/// directory if missing. A socket file nobody answers on (a previous run killed) is replaced;
/// one that answers is another tcpobs: `AddrInUse`.
pub(crate) fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a process answers on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    listener: &'static str,
}

/// Why tcpobs closed an API connection.
#[derive(Clone, Copy, Debug)]
enum Dropped {
    /// Idle, closed to make room for a new one.
    Evicted,
    /// No room: every connection had a request in progress.
    Refused,
    /// No complete request headers (or TLS handshake) in time.
    Timeout,
    /// A failed TLS handshake, plain HTTP to a TLS listener included.
    Tls,
}

impl Dropped {
    const ALL: [Self; 4] = [Self::Evicted, Self::Refused, Self::Timeout, Self::Tls];

    fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
        }
    }
}

/// The API's own metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpMetrics {
    dropped: Family<DropLabels, Counter>,
    open: Family<OpenLabels, Gauge>,
}

impl HttpMetrics {
    /// Registers the families; every listener and reason exists from the first scrape.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for api in [Api::Metrics, Api::Admin] {
            let _ = metrics.open.get_or_create(&OpenLabels {
                listener: api.as_str(),
            });
            for reason in Dropped::ALL {
                let _ = metrics.dropped.get_or_create(&DropLabels {
                    listener: api.as_str(),
                    reason: reason.as_str(),
                });
            }
        }
        registry.register(
            "tcpobs_http_connections_dropped",
            "HTTP API connections closed by tcpobs: evicted (idle, to make room), refused (no \
             room), timeout (no request headers or TLS handshake in time), tls (failed \
             handshake, plain HTTP to a TLS listener included)",
            metrics.dropped.clone(),
        );
        registry.register(
            "tcpobs_http_connections",
            "HTTP API connections open now",
            metrics.open.clone(),
        );
        metrics
    }

    fn dropped(&self, api: Api, reason: Dropped) {
        self.dropped
            .get_or_create(&DropLabels {
                listener: api.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// The open connections of one listener, oldest first.
#[derive(Debug)]
struct Slots {
    max: usize,
    open: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    /// Requests in progress.
    busy: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

/// A connection's place; gives it back when dropped.
struct Admitted {
    id: u64,
    slot: Slot,
    slots: Arc<Slots>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.slots.open).1.remove(&self.id);
    }
}

impl Slots {
    /// A place for a new connection, closing the oldest idle one if full. `None`: full of busy
    /// connections. The bool says whether one was evicted.
    fn admit(self: &Arc<Self>) -> Option<(Admitted, bool)> {
        let mut open = lock(&self.open);
        let mut evicted = false;
        if open.1.len() >= self.max {
            let idle = open
                .1
                .iter()
                .find(|(_, slot)| slot.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(slot) = open.1.remove(&idle) {
                slot.evict.notify_one();
                evicted = true;
            }
        }
        open.0 += 1;
        let id = open.0;
        let slot = Slot::default();
        open.1.insert(id, slot.clone());
        Some((
            Admitted {
                id,
                slot,
                slots: Arc::clone(self),
            },
            evicted,
        ))
    }
}

/// Counts a request in progress on a connection while alive.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(busy))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most one warning a minute for a repeated condition, with how often it happened.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl Throttle {
    /// Counts one; returns how many since the last warning when it is time for another.
    pub(crate) fn hit(&self) -> Option<u64> {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = lock(&self.last);
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return None;
        }
        *last = Some(Instant::now());
        self.count.store(0, Ordering::Relaxed);
        Some(count)
    }
}

/// One listener and what its connections need.
pub(crate) struct Server {
    pub api: Api,
    pub bound: Bound,
    pub router: Router,
    /// The web config (TLS and basic auth) this listener follows; `None`: plain, no auth.
    pub web: Option<Arc<Web>>,
    pub max_connections: usize,
    pub metrics: HttpMetrics,
}

struct Shared {
    api: Api,
    router: Router,
    web: Option<Arc<Web>>,
    metrics: HttpMetrics,
    stop: watch::Receiver<bool>,
    full: Throttle,
}

impl Server {
    /// Accepts and serves connections until `stop` turns true, then lets requests in progress
    /// finish (for up to two seconds).
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Slots {
            max: self.max_connections.max(1),
            open: Mutex::default(),
        });
        let shared = Arc::new(Shared {
            api: self.api,
            router: self.router,
            web: self.web,
            metrics: self.metrics,
            stop: stop.clone(),
            full: Throttle::default(),
        });
        let errors = Throttle::default();
        loop {
            let accepted = tokio::select! {
                () = stopped(&mut stop) => break,
                accepted = accept(&self.bound) => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if let Some(count) = errors.hit() {
                        warn!(
                            api = shared.api.as_str(),
                            count, "HTTP API cannot accept: {err}"
                        );
                    }
                    // EMFILE and the like: give closing connections a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some((admitted, evicted)) = slots.admit() else {
                shared.metrics.dropped(shared.api, Dropped::Refused);
                if let Some(count) = shared.full.hit() {
                    warn!(
                        api = shared.api.as_str(),
                        count,
                        max = slots.max,
                        "HTTP API full of requests in progress: connections refused"
                    );
                }
                continue;
            };
            if evicted {
                shared.metrics.dropped(shared.api, Dropped::Evicted);
                if let Some(count) = shared.full.hit() {
                    warn!(
                        api = shared.api.as_str(),
                        count,
                        max = slots.max,
                        "HTTP API connection limit reached: idle connections closed to make room"
                    );
                }
            }
            tokio::spawn(connection(Arc::clone(&shared), stream, peer, admitted));
        }
        if let Bound::Unix(_, path) = &self.bound {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

enum Stream {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(bound: &Bound) -> io::Result<(Stream, Peer)> {
    match bound {
        Bound::Tcp(listener) => {
            let (stream, addr) = listener.accept().await?;
            Ok((Stream::Tcp(stream), Peer::Tcp(addr)))
        }
        Bound::Unix(listener, _) => {
            let (stream, _) = listener.accept().await?;
            let credentials = stream.peer_cred().ok();
            let peer = Peer::Unix {
                uid: credentials.map(|c| c.uid()),
                pid: credentials.and_then(|c| c.pid()),
            };
            Ok((Stream::Unix(stream), peer))
        }
    }
}

/// What Go's servers answer to plain HTTP on a TLS port.
const PLAIN_HTTP_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; \
    charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

async fn connection(shared: Arc<Shared>, stream: Stream, peer: Peer, admitted: Admitted) {
    let evict = Arc::clone(&admitted.slot.evict);
    let open = shared
        .metrics
        .open
        .get_or_create(&OpenLabels {
            listener: shared.api.as_str(),
        })
        .clone();
    open.inc();
    let who = peer.clone();
    let served = async {
        match stream {
            Stream::Unix(stream) => http(&shared, stream, peer, &admitted.slot).await,
            Stream::Tcp(stream) => {
                let acceptor = shared.web.as_ref().and_then(|web| web.acceptor());
                match acceptor {
                    None => http(&shared, stream, peer, &admitted.slot).await,
                    Some(acceptor) => tls(&shared, acceptor, stream, peer, &admitted.slot).await,
                }
            }
        }
    };
    tokio::select! {
        () = served => {}
        () = evict.notified() => debug!(peer = %who, "idle API connection closed to make room"),
    }
    open.dec();
    drop(admitted);
}

async fn tls(
    shared: &Shared,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stream: TcpStream,
    peer: Peer,
    slot: &Slot,
) {
    let mut first = [0; 1];
    match timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        // A TLS record starts with its type, 22 for a handshake.
        Ok(Ok(1)) if first[0] == 22 => {}
        Ok(Ok(1)) => {
            shared.metrics.dropped(shared.api, Dropped::Tls);
            debug!(%peer, "plain HTTP to the TLS listener: 400");
            let _ = timeout(HANDSHAKE_TIMEOUT, stream.write_all(PLAIN_HTTP_TO_TLS)).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            shared.metrics.dropped(shared.api, Dropped::Timeout);
            return;
        }
    }
    match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => http(shared, stream, peer, slot).await,
        Ok(Err(err)) => {
            shared.metrics.dropped(shared.api, Dropped::Tls);
            debug!(%peer, "TLS handshake failed: {err}");
        }
        Err(_) => shared.metrics.dropped(shared.api, Dropped::Timeout),
    }
}

async fn http<S>(shared: &Shared, io: S, peer: Peer, slot: &Slot)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = shared.router.clone();
    let busy = Arc::clone(&slot.busy);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let entered = Busy::enter(&busy);
        request.extensions_mut().insert(peer.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(entered);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut stop = shared.stop.clone();
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(err) = served {
                if err.is_timeout() {
                    shared.metrics.dropped(shared.api, Dropped::Timeout);
                }
                debug!("API connection: {err}");
            }
        }
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = timeout(Duration::from_secs(2), connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            open: Mutex::default(),
        })
    }

    #[test]
    fn a_full_listener_closes_its_oldest_idle_connection() {
        let slots = slots(2);
        let (oldest, evicted) = slots.admit().unwrap();
        assert!(!evicted);
        let (busy, _) = slots.admit().unwrap();
        let _request = Busy::enter(&busy.slot.busy);
        // Full: the oldest is idle, so it goes.
        let (newest, evicted) = slots.admit().unwrap();
        assert!(evicted);
        assert!(!lock(&slots.open).1.contains_key(&oldest.id));
        assert_eq!(lock(&slots.open).1.len(), 2);
        // Its task hears it (the permit waits for it).
        let evict = Arc::clone(&oldest.slot.evict);
        let notified = evict.notified();
        tokio::pin!(notified);
        assert!(notified.as_mut().enable(), "the evicted connection is told");
        drop(oldest);
        assert_eq!(
            lock(&slots.open).1.len(),
            2,
            "dropping it later changes nothing"
        );
        // Full again with the busy one and a new idle one: the idle one goes, not the busy.
        let (_, evicted) = slots.admit().unwrap();
        assert!(evicted);
        assert!(!lock(&slots.open).1.contains_key(&newest.id));
        assert!(lock(&slots.open).1.contains_key(&busy.id));
    }

    #[test]
    fn a_listener_full_of_busy_connections_refuses() {
        let slots = slots(1);
        let (busy, _) = slots.admit().unwrap();
        let request = Busy::enter(&busy.slot.busy);
        assert!(slots.admit().is_none());
        drop(request);
        assert!(slots.admit().is_some(), "idle again, so it can be evicted");
    }

    #[test]
    fn throttled_warnings_count_what_they_skip() {
        let throttle = Throttle::default();
        assert_eq!(throttle.hit(), Some(1));
        assert_eq!(throttle.hit(), None);
        assert_eq!(throttle.hit(), None);
        *lock(&throttle.last) = Some(Instant::now() - Duration::from_secs(61));
        assert_eq!(throttle.hit(), Some(3));
    }
}
