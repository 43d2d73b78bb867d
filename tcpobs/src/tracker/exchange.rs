//! Exchanges: pairing request and response bursts into justniffer's per-exchange timings.
//!
//! The kernel sends a burst when the direction flips, so bursts alternate: request, response,
//! request, ... (requests are what a client sends and what a server receives). An exchange is
//! complete when its response burst arrives, but its class (`start`/`continue` versus
//! `last`/`unique`) and its `idle_after` are only known when the next request starts or the
//! connection closes. So each connection holds at most one exchange in progress, and an
//! exchange is emitted one step late. A connection whose role is unknown yields no exchanges.
//!
//! For the connection's timeline, an exchange finished by the next request is kept in the
//! connection's timeline spans (allocated then, bounded); the last one, finished by the close, goes
//! straight into the connection record. A connection with one exchange allocates nothing.

use std::num::NonZeroU64;

use tcpobs_common::{Burst, direction};

use super::Conn;
use crate::model::{CloseOriginator, ExchangeClass, ExchangeRecord, ExchangeSpan, Record, Role};

/// One direction of an exchange: first byte, last byte, size. (`first_ns` is never 0, the
/// kernel clock starting at boot; `NonZeroU64` makes `Option<Span>` cost no tag.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    first_ns: NonZeroU64,
    last_ns: u64,
    bytes: u64,
}

impl Span {
    /// From a kernel burst. The kernel updates a burst without a lock, so a socket used by two
    /// threads at once (one sending, one receiving) can tear it; times are never trusted to be
    /// ordered.
    fn of(burst: &Burst) -> Self {
        Self {
            first_ns: NonZeroU64::new(burst.first_ns.min(burst.last_ns)).unwrap_or(NonZeroU64::MIN),
            last_ns: burst.last_ns.max(burst.first_ns),
            bytes: burst.bytes,
        }
    }

    fn first(&self) -> u64 {
        self.first_ns.get()
    }

    fn extend(&mut self, other: Span) {
        self.last_ns = self.last_ns.max(other.last_ns);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// The exchange in progress: a request and maybe its response (or a response alone, for
/// protocols where the server speaks first). Empty when there is none (rather than an
/// `Option`, which would cost the live table 8 bytes per connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Pending {
    request: Option<Span>,
    response: Option<Span>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }

    fn opened_by(is_request: bool, span: Span) -> Self {
        if is_request {
            Self {
                request: Some(span),
                response: None,
            }
        } else {
            Self {
                request: None,
                response: Some(span),
            }
        }
    }

    fn first_ns(&self) -> u64 {
        self.request
            .or(self.response)
            .map_or(0, |span| span.first())
    }

    fn last_ns(&self) -> u64 {
        self.response
            .or(self.request)
            .map_or(0, |span| span.last_ns)
    }
}

/// How an exchange ended: the next request started, or the connection closed/was flushed.
pub(super) enum ExchangeEnd {
    /// A new request began at this time: the exchange was not the last.
    NextRequest(u64),
    /// The connection closed: `idle_end` is the first FIN/RST, `session_end` the close.
    Closed {
        idle_end: Option<u64>,
        session_end: u64,
        originator: CloseOriginator,
    },
    /// tcpobs is stopping with the connection still open.
    Flushed { now: u64 },
}

impl Conn {
    fn is_request(&self, dir: u8) -> Option<bool> {
        match self.role {
            Role::Client => Some(dir == direction::OUT),
            Role::Server => Some(dir == direction::IN),
            Role::Unknown => None,
        }
    }

    /// Applies one burst; may complete the previous exchange.
    pub(super) fn on_burst(&mut self, burst: &Burst, out: &mut Vec<Record>) {
        let Some(is_request) = self.is_request(burst.dir) else {
            return;
        };
        let span = Span::of(burst);
        if self.pending.is_empty() {
            self.pending = Pending::opened_by(is_request, span);
            return;
        }
        match &mut self.pending {
            // A request after a complete exchange: the previous one was not the last.
            pending if is_request && pending.response.is_some() => {
                if let Some(done) =
                    self.finish_exchange(ExchangeEnd::NextRequest(span.first()), out)
                {
                    let start_ns = self.start_ns;
                    self.spans_mut().push_exchange(start_ns, &done);
                }
                self.pending = Pending::opened_by(true, span);
            }
            // Two bursts in the same direction can only follow a lost event: merge them.
            Pending {
                request: Some(request),
                ..
            } if is_request => request.extend(span),
            Pending {
                response: Some(response),
                ..
            } if !is_request => response.extend(span),
            pending if is_request => pending.request = Some(span),
            pending => pending.response = Some(span),
        }
    }

    /// Emits the exchange in progress, if any, classified by how it ended; returns its span
    /// for the connection's timeline.
    pub(super) fn finish_exchange(
        &mut self,
        end: ExchangeEnd,
        out: &mut Vec<Record>,
    ) -> Option<ExchangeSpan> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return None;
        }
        self.exchanges += 1;
        let seq = self.exchanges;
        let (class, idle_end, session_end, close_originator) = match end {
            ExchangeEnd::NextRequest(next) => (
                if seq == 1 {
                    ExchangeClass::Start
                } else {
                    ExchangeClass::Continue
                },
                Some(next),
                pending.last_ns(),
                None,
            ),
            ExchangeEnd::Closed {
                idle_end,
                session_end,
                originator,
            } => (
                if seq == 1 {
                    ExchangeClass::Unique
                } else {
                    ExchangeClass::Last
                },
                idle_end,
                session_end,
                Some(originator),
            ),
            // Still open: as far as anyone knows, more exchanges follow.
            ExchangeEnd::Flushed { now } => (
                if seq == 1 {
                    ExchangeClass::Start
                } else {
                    ExchangeClass::Continue
                },
                None,
                now,
                None,
            ),
        };
        let first_exchange = seq == 1 && self.partial.is_none();
        let established = self.established_ns().filter(|_| first_exchange);
        let response_begin_ns = pending
            .request
            .zip(pending.response)
            .map(|(request, response)| response.first().saturating_sub(request.last_ns));
        let response_end_ns = pending
            .response
            .map(|response| response.last_ns.saturating_sub(response.first()));
        let idle_after_ns = idle_end.map(|end| end.saturating_sub(pending.last_ns()));
        self.max_response_begin_ns = self
            .max_response_begin_ns
            .max(response_begin_ns.and_then(NonZeroU64::new));
        self.max_idle_ns = self
            .max_idle_ns
            .max(idle_after_ns.and_then(NonZeroU64::new));
        out.push(Record::Exchange(ExchangeRecord {
            conn_id: self.id,
            role: self.role,
            addrs: self.addrs,
            process: self.process(),
            seq,
            class,
            start_ns: pending.first_ns(),
            connect_ns: established.map(|established| established.saturating_sub(self.start_ns)),
            idle_before_ns: established
                .map(|established| pending.first_ns().saturating_sub(established)),
            request_ns: pending
                .request
                .map(|request| request.last_ns.saturating_sub(request.first())),
            response_begin_ns,
            response_end_ns,
            response_ns: response_begin_ns
                .zip(response_end_ns)
                .map(|(begin, end)| begin + end),
            idle_after_ns,
            session_ns: session_end.saturating_sub(self.start_ns),
            request_bytes: pending.request.map_or(0, |span| span.bytes),
            response_bytes: pending.response.map_or(0, |span| span.bytes),
            close_originator,
        }));
        Some(ExchangeSpan {
            seq,
            start_ns: pending.first_ns(),
            duration_ns: pending.last_ns().saturating_sub(pending.first_ns()),
        })
    }
}
