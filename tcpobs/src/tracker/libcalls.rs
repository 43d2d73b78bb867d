//! Name resolutions and TLS handshakes, tied to connections.
//!
//! - **DNS.** Every `getaddrinfo` call becomes a [`DnsRecord`] (calls for numeric addresses
//!   and service-only lookups are not name resolutions and are dropped). Successful answers
//!   are kept in a small cache per process ([`DnsCache`]): a client connection opened by the
//!   same process within [`DNS_WINDOW_NS`] after a resolution ended, to an address of its
//!   answer, gets that resolution (the latest that matches) on its timeline (`dns`). The
//!   cache is bounded (processes and answers per process); what it drops before expiry is
//!   counted.
//! - **TLS.** The kernel reports every return of a handshake call, with the connection the
//!   handshake's thread moved data on. A return of 1 completes the handshake. Anything else
//!   is a failure *or* a non-blocking handshake that will be called again, so the outcome
//!   stays open until a later call completes it, the `SSL` is freed (failure), or the
//!   connection closes (failure). Each handshake yields one [`TlsRecord`] once decided.
//!   A handshake can end after its connection closed (a server finishing `SSL_accept` while
//!   the client has already reset the connection): its record is still tied to the
//!   connection through [`RecentCloses`], though the connection's own record, already
//!   written, has no `tls` entry.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use tcpobs_common::{
    DnsEvent, TlsEvent,
    libcalls::{DNS_HOST_LEN, dns_flag, tls_step},
};

use super::{Conn, Tracker};
use crate::model::{
    Addrs, DnsLink, DnsRecord, Process, Record, Resolved, Role, TimelineSpans, TlsLink, TlsRecord,
};

/// How long after a resolution ends a connection to one of its addresses is tied to it.
pub(crate) const DNS_WINDOW_NS: u64 = 10_000_000_000;
/// Processes the cache holds resolutions for.
const CACHE_PROCESSES: usize = 1024;
/// Resolutions kept per process (the latest).
const CACHE_PER_PROCESS: usize = 8;
/// Entries stay this long past the window, for events still in the ring buffer.
const CACHE_SLACK_NS: u64 = 5_000_000_000;

#[derive(Clone, Debug)]
struct Resolution {
    host: Arc<str>,
    start_ns: u64,
    end_ns: u64,
    addrs: Resolved,
}

/// Closed connections remembered for late handshake results.
const RECENT_CLOSES: usize = 1024;

/// What a late handshake result needs of a connection that has closed.
#[derive(Clone, Copy, Debug)]
struct Closed {
    sock: u64,
    start_ns: u64,
    id: u64,
    role: Role,
    addrs: Addrs,
    /// A handshake on it has been reported (before or at its close, or since).
    tls_reported: bool,
}

/// The last [`RECENT_CLOSES`] connections to close, so that a handshake whose last call
/// returns after its connection closed is still tied to it.
#[derive(Debug, Default)]
pub(super) struct RecentCloses(VecDeque<Closed>);

impl RecentCloses {
    pub(super) fn remember(&mut self, sock: u64, conn: &Conn) {
        if self.0.len() >= RECENT_CLOSES {
            self.0.pop_front();
        }
        self.0.push_back(Closed {
            sock,
            start_ns: conn.start_ns,
            id: conn.id,
            role: conn.role,
            addrs: conn.addrs,
            tls_reported: conn.spans.as_ref().is_some_and(|spans| spans.tls.is_some()),
        });
    }

    /// Whether this generation on `sock` is among the recent closes.
    pub(super) fn contains(&self, sock: u64, start_ns: u64) -> bool {
        self.0
            .iter()
            .rev()
            .any(|closed| closed.sock == sock && closed.start_ns == start_ns)
    }

    fn find(&mut self, sock: u64, start_ns: u64) -> Option<&mut Closed> {
        self.0
            .iter_mut()
            .rev()
            .find(|closed| closed.sock == sock && closed.start_ns == start_ns)
    }
}

/// Recent successful resolutions, per process.
#[derive(Debug, Default)]
pub(crate) struct DnsCache {
    by_process: HashMap<u32, VecDeque<Resolution>>,
    /// Resolutions dropped before their window ended (the cache was full).
    evicted: u64,
}

impl DnsCache {
    fn insert(&mut self, pid: u32, resolution: Resolution) {
        if !self.by_process.contains_key(&pid) && self.by_process.len() >= CACHE_PROCESSES {
            self.expire(resolution.end_ns);
            if self.by_process.len() >= CACHE_PROCESSES {
                self.evict_oldest_process();
            }
        }
        let entries = self.by_process.entry(pid).or_default();
        let horizon = resolution.end_ns.saturating_sub(DNS_WINDOW_NS);
        entries.retain(|entry| entry.end_ns >= horizon);
        if entries.len() >= CACHE_PER_PROCESS {
            entries.pop_front();
            self.evicted += 1;
        }
        entries.push_back(resolution);
    }

    /// Drops the process whose latest resolution is the oldest, counting what it held.
    fn evict_oldest_process(&mut self) {
        let oldest = self
            .by_process
            .iter()
            .min_by_key(|(_, entries)| entries.back().map_or(0, |entry| entry.end_ns))
            .map(|(&pid, _)| pid);
        if let Some(entries) = oldest.and_then(|pid| self.by_process.remove(&pid)) {
            self.evicted += entries.len() as u64;
        }
    }

    /// Forgets resolutions whose window has passed.
    pub(crate) fn expire(&mut self, now_ns: u64) {
        let horizon = now_ns.saturating_sub(DNS_WINDOW_NS + CACHE_SLACK_NS);
        self.by_process.retain(|_, entries| {
            entries.retain(|entry| entry.end_ns >= horizon);
            !entries.is_empty()
        });
    }

    /// The latest resolution by `pid` that ended at most [`DNS_WINDOW_NS`] before `at_ns`
    /// and answered `ip`.
    fn lookup(&self, pid: u32, ip: IpAddr, at_ns: u64) -> Option<&Resolution> {
        self.by_process.get(&pid)?.iter().rev().find(|entry| {
            entry.end_ns <= at_ns
                && at_ns - entry.end_ns <= DNS_WINDOW_NS
                && entry.addrs.contains(ip)
        })
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Resolutions held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_process.values().map(VecDeque::len).sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_process.is_empty()
    }
}

/// A `DnsEvent` as a record, unless it is not a name resolution (no host, or a numeric one).
pub(crate) fn dns_record(event: &DnsEvent) -> Option<DnsRecord> {
    if event.flags & dns_flag::NO_HOST != 0 {
        return None;
    }
    let process = Process::from_kernel(&event.task)?;
    let len = usize::from(event.host_len).min(DNS_HOST_LEN);
    let host = String::from_utf8_lossy(&event.host[..len]);
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(DnsRecord {
        process,
        host: Arc::from(host),
        host_truncated: event.flags & dns_flag::HOST_TRUNCATED != 0,
        start_ns: event.call_ns,
        duration_ns: event.hdr.ts_ns.saturating_sub(event.call_ns),
        code: event.result,
        addrs: Resolved::from_kernel(event),
    })
}

impl Conn {
    /// The connection's timeline spans, allocated on first use.
    pub(super) fn spans_mut(&mut self) -> &mut TimelineSpans {
        self.spans.get_or_insert_with(Box::default)
    }

    /// Ties the latest matching resolution to a client connection seen from its start.
    pub(super) fn link_dns(&mut self, cache: &DnsCache) {
        if self.role != Role::Client
            || self.partial.is_some()
            || self.pid == 0
            || self.spans.as_ref().is_some_and(|spans| spans.dns.is_some())
        {
            return;
        }
        if let Some(found) = cache.lookup(self.pid, self.addrs.remote().ip(), self.start_ns) {
            self.spans_mut().dns = Some(DnsLink {
                host: Arc::clone(&found.host),
                start_ns: found.start_ns,
                duration_ns: found.end_ns.saturating_sub(found.start_ns),
            });
        }
    }

    fn tls_record(&self, link: &TlsLink, process: Option<Process>, ok: bool) -> TlsRecord {
        TlsRecord {
            conn_id: Some(self.id),
            role: self.role,
            addrs: Some(self.addrs),
            process: process.or_else(|| self.process()),
            start_ns: link.start_ns,
            duration_ns: link.duration_ns,
            ok,
            calls: link.calls,
            after_close: false,
        }
    }

    /// At close: a handshake the last call had not completed failed.
    pub(super) fn settle_tls(&mut self, out: &mut Vec<Record>) {
        let Some(link) = self.spans.as_mut().and_then(|spans| spans.tls.as_mut()) else {
            return;
        };
        if link.ok.is_none() {
            link.ok = Some(false);
            let link = *link;
            out.push(Record::Tls(self.tls_record(&link, None, false)));
        }
    }
}

impl Tracker {
    pub(super) fn on_dns(&mut self, event: &DnsEvent, out: &mut Vec<Record>) {
        let Some(record) = dns_record(event) else {
            return;
        };
        if record.code == 0 && !record.addrs.is_empty() {
            self.dns.insert(
                record.process.pid,
                Resolution {
                    host: Arc::clone(&record.host),
                    start_ns: record.start_ns,
                    end_ns: event.hdr.ts_ns,
                    addrs: record.addrs,
                },
            );
        }
        out.push(Record::Dns(record));
    }

    pub(super) fn on_tls(&mut self, event: &TlsEvent, out: &mut Vec<Record>) {
        let freed = event.step == tls_step::FREED;
        let completed = !freed && event.ret == 1;
        let link = TlsLink {
            start_ns: event.handshake_ns,
            duration_ns: event.hdr.ts_ns.saturating_sub(event.handshake_ns),
            ok: if completed {
                Some(true)
            } else if freed {
                Some(false)
            } else {
                None
            },
            calls: event.calls,
        };
        let process = Process::from_kernel(&event.task);
        let sock = event.hdr.sock;
        let conn = (sock != 0)
            .then(|| self.conns.get_mut(sock))
            .flatten()
            .filter(|conn| conn.start_ns == event.hdr.start_ns);
        let Some(conn) = conn else {
            if sock != 0
                && let Some(closed) = self.recent_closes.find(sock, event.hdr.start_ns)
            {
                // News after the close. A handshake the close saw was settled then; one it
                // did not see is decided now: it cannot go on without its connection.
                if !closed.tls_reported {
                    closed.tls_reported = true;
                    out.push(Record::Tls(TlsRecord {
                        conn_id: Some(closed.id),
                        role: closed.role,
                        addrs: Some(closed.addrs),
                        process,
                        start_ns: link.start_ns,
                        duration_ns: link.duration_ns,
                        ok: completed,
                        calls: link.calls,
                        after_close: true,
                    }));
                }
                return;
            }
            // No connection known: report final outcomes only.
            if completed || (freed && sock == 0) {
                out.push(Record::Tls(TlsRecord {
                    conn_id: None,
                    role: Role::Unknown,
                    addrs: None,
                    process,
                    start_ns: link.start_ns,
                    duration_ns: link.duration_ns,
                    ok: completed,
                    calls: link.calls,
                    after_close: false,
                }));
            }
            return;
        };
        let spans = conn.spans_mut();
        if spans
            .tls
            .is_some_and(|tls| tls.ok.is_some() && tls.start_ns != link.start_ns)
        {
            // A second handshake on a connection whose first is settled: the timeline keeps
            // the first; the second is still measured.
            if let Some(ok) = link.ok {
                out.push(Record::Tls(conn.tls_record(&link, process, ok)));
            }
            return;
        }
        spans.tls = Some(link);
        if let Some(ok) = link.ok {
            out.push(Record::Tls(conn.tls_record(&link, process, ok)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolution(host: &str, end_ns: u64, ip: &str) -> Resolution {
        let mut addrs = Resolved::default();
        addrs.push(ip.parse().unwrap());
        Resolution {
            host: Arc::from(host),
            start_ns: end_ns.saturating_sub(1_000),
            end_ns,
            addrs,
        }
    }

    #[test]
    fn lookups_match_process_address_and_window() {
        let mut cache = DnsCache::default();
        cache.insert(7, resolution("a.test", 1_000_000, "192.0.2.1"));
        cache.insert(7, resolution("b.test", 2_000_000, "192.0.2.1"));
        let ip = "192.0.2.1".parse().unwrap();
        let found = |cache: &DnsCache, pid, at| {
            cache
                .lookup(pid, ip, at)
                .map(|resolution| resolution.host.to_string())
        };
        assert_eq!(
            found(&cache, 7, 3_000_000).as_deref(),
            Some("b.test"),
            "the latest wins"
        );
        assert_eq!(
            found(&cache, 7, 1_500_000).as_deref(),
            Some("a.test"),
            "ended before"
        );
        assert_eq!(found(&cache, 7, 500_000), None, "nothing ended yet");
        assert_eq!(found(&cache, 8, 3_000_000), None, "another process");
        assert_eq!(
            cache
                .lookup(7, "192.0.2.2".parse().unwrap(), 3_000_000)
                .map(|r| &*r.host),
            None,
            "another address"
        );
        assert_eq!(
            found(&cache, 7, 2_000_000 + DNS_WINDOW_NS + 1),
            None,
            "too late"
        );
        cache.expire(2_000_000 + DNS_WINDOW_NS + CACHE_SLACK_NS + 1);
        assert!(cache.is_empty());
        assert_eq!(cache.evicted(), 0, "expiry is not eviction");
    }

    #[test]
    fn the_cache_is_bounded_and_counts_evictions() {
        let mut cache = DnsCache::default();
        for n in 0..CACHE_PER_PROCESS as u64 + 3 {
            cache.insert(1, resolution("a.test", 1_000 + n, "192.0.2.1"));
        }
        assert_eq!(cache.len(), CACHE_PER_PROCESS);
        assert_eq!(cache.evicted(), 3);
        for pid in 2..=CACHE_PROCESSES as u32 + 1 {
            cache.insert(
                pid,
                resolution("b.test", 10_000 + u64::from(pid), "192.0.2.1"),
            );
        }
        assert_eq!(cache.by_process.len(), CACHE_PROCESSES);
        assert!(
            !cache.by_process.contains_key(&1),
            "the stalest process goes first"
        );
        assert_eq!(cache.evicted(), 3 + CACHE_PER_PROCESS as u64);
    }

    #[test]
    fn numeric_and_hostless_calls_are_not_resolutions() {
        let mut event = DnsEvent::default();
        event.task.pid = 5;
        for (host, kept) in [
            (&b"example.test"[..], true),
            (b"127.0.0.1", false),
            (b"::1", false),
            (b"", false),
        ] {
            event.host[..host.len()].copy_from_slice(host);
            event.host_len = host.len() as u16;
            assert_eq!(dns_record(&event).is_some(), kept, "{host:?}");
        }
        event.flags = dns_flag::NO_HOST;
        assert!(dns_record(&event).is_none());
    }
}
