//! Exchanges: justniffer's per-exchange timings, from the kernel's bursts.
//!
//! The kernel pairs each request with its response and ends an exchange when the next request
//! begins (`tcpobs_common`'s exchange rules): that is when its class (`start`/`continue`) and
//! its idle gap are known. It folds the exchange into its histograms and into the connection's
//! summary in the socket's record (count, longest time to first byte and idle gap, the first
//! exchanges' timeline spans), and sends it as an event only while an output or a metric
//! label wants every exchange ([`Conn::on_exchange_event`]). The exchange still in progress
//! when the connection closes is its last (`last`/`unique`, idle gap up to the first FIN or
//! reset): the close record carries it, with the summary of the others
//! ([`Conn::take_exchanges`]). A connection whose role is unknown has no exchanges.

use std::num::NonZeroU64;

use tcpobs_common::{Burst, BurstEvent, SockRecord, direction, exchanges::span_of};

use super::{Conn, conn::STALL_UNKNOWN};
use crate::model::{CloseOriginator, ExchangeClass, ExchangeRecord, ExchangeSpan, Record, Role};

/// One direction of an exchange: first byte, last byte, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    first_ns: u64,
    last_ns: u64,
    bytes: u64,
}

impl Span {
    /// From a kernel burst (times ordered, as the kernel folds them).
    fn of(burst: &Burst) -> Option<Self> {
        if burst.dir == direction::NONE {
            return None;
        }
        let (first_ns, last_ns) = span_of(burst);
        Some(Self {
            first_ns,
            last_ns,
            bytes: burst.bytes,
        })
    }
}

/// An exchange: a request and its response, or a response alone (a server that speaks first),
/// or a request alone (no response before the close).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Pending {
    request: Option<Span>,
    response: Option<Span>,
}

impl Pending {
    /// The exchange in progress in a kernel record: its held request and the burst in
    /// progress, whichever way that one goes. Empty for a socket of unknown role.
    pub(super) fn in_progress(rec: &SockRecord, role: Role) -> Self {
        let requests = match role {
            Role::Client => direction::OUT,
            Role::Server => direction::IN,
            Role::Unknown => return Self::default(),
        };
        let mut pending = Self::default();
        for burst in [&rec.held, &rec.burst] {
            let Some(span) = Span::of(burst) else {
                continue;
            };
            let side = if burst.dir == requests {
                &mut pending.request
            } else {
                &mut pending.response
            };
            *side = Some(side.map_or(span, |earlier| Span {
                last_ns: earlier.last_ns.max(span.last_ns),
                bytes: earlier.bytes.saturating_add(span.bytes),
                ..earlier
            }));
        }
        pending
    }

    /// The exchange an event carries.
    fn of_event(event: &BurstEvent) -> Self {
        Self {
            request: Span::of(&event.request),
            response: Span::of(&event.response),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }

    fn first_ns(&self) -> u64 {
        self.request
            .or(self.response)
            .map_or(0, |span| span.first_ns)
    }

    fn last_ns(&self) -> u64 {
        self.response
            .or(self.request)
            .map_or(0, |span| span.last_ns)
    }
}

/// The last data a kernel record knows of (ns): the end of the burst in progress, or of the
/// request it holds; 0 if neither.
pub(super) fn last_data_ns(rec: &SockRecord) -> u64 {
    [&rec.held, &rec.burst]
        .into_iter()
        .filter(|burst| burst.dir != direction::NONE)
        .map(|burst| span_of(burst).1)
        .max()
        .unwrap_or(0)
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
    /// The record of exchange number `seq`, ended by `end`, and its span for the timeline.
    fn exchange_record(
        &self,
        pending: &Pending,
        seq: u32,
        end: ExchangeEnd,
        folded: bool,
    ) -> (ExchangeRecord, ExchangeSpan) {
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
            .map(|(request, response)| response.first_ns.saturating_sub(request.last_ns));
        let response_end_ns = pending
            .response
            .map(|response| response.last_ns.saturating_sub(response.first_ns));
        let record = ExchangeRecord {
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
                .map(|request| request.last_ns.saturating_sub(request.first_ns)),
            response_begin_ns,
            response_end_ns,
            response_ns: response_begin_ns
                .zip(response_end_ns)
                .map(|(begin, end)| begin + end),
            idle_after_ns: idle_end.map(|end| end.saturating_sub(pending.last_ns())),
            session_ns: session_end.saturating_sub(self.start_ns),
            request_bytes: pending.request.map_or(0, |span| span.bytes),
            response_bytes: pending.response.map_or(0, |span| span.bytes),
            close_originator,
            folded,
        };
        let span = ExchangeSpan {
            seq,
            start_ns: pending.first_ns(),
            duration_ns: pending.last_ns().saturating_sub(pending.first_ns()),
        };
        (record, span)
    }

    /// An exchange the kernel ended and sent (`folded`: it is in the kernel's histograms too).
    pub(super) fn on_exchange_event(
        &mut self,
        event: &BurstEvent,
        folded: bool,
        out: &mut Vec<Record>,
    ) {
        let pending = Pending::of_event(event);
        for span in [pending.request, pending.response].into_iter().flatten() {
            self.last_activity_ns = self.last_activity_ns.max(span.last_ns);
        }
        if pending.is_empty() || self.role == Role::Unknown {
            return;
        }
        self.saw_data = true;
        self.stall_check = STALL_UNKNOWN;
        let (request, response) = match self.role {
            Role::Client => (&mut self.bytes_sent, &mut self.bytes_received),
            _ => (&mut self.bytes_received, &mut self.bytes_sent),
        };
        *request = request.saturating_add(pending.request.map_or(0, |span| span.bytes));
        *response = response.saturating_add(pending.response.map_or(0, |span| span.bytes));
        self.exchanges = self.exchanges.max(event.seq);
        let (record, _) = self.exchange_record(
            &pending,
            event.seq,
            ExchangeEnd::NextRequest(event.hdr.ts_ns),
            folded,
        );
        out.push(Record::Exchange(record));
    }

    /// Takes the kernel's summary of the exchanges it ended, and records the one still in
    /// progress in `rec` (the connection's last, or the one in progress at shutdown), ended
    /// by `end`. Returns the maxima (time to first byte, idle gap) over all of them and the
    /// last one's span for the timeline.
    pub(super) fn take_exchanges(
        &mut self,
        rec: &SockRecord,
        end: ExchangeEnd,
        out: &mut Vec<Record>,
    ) -> (Option<u64>, Option<u64>, Option<ExchangeSpan>) {
        let summary = &rec.exchanges;
        self.exchanges = summary.count;
        if summary.count > 0 {
            self.spans_mut().set_exchanges(summary);
        }
        let mut max_response_begin = NonZeroU64::new(summary.max_response_begin_ns);
        let mut max_idle = NonZeroU64::new(summary.max_idle_ns);
        let pending = Pending::in_progress(rec, self.role);
        let mut last = None;
        if !pending.is_empty() {
            let seq = summary.count + 1;
            self.exchanges = seq;
            let (record, span) = self.exchange_record(&pending, seq, end, false);
            max_response_begin =
                max_response_begin.max(record.response_begin_ns.and_then(NonZeroU64::new));
            max_idle = max_idle.max(record.idle_after_ns.and_then(NonZeroU64::new));
            out.push(Record::Exchange(record));
            last = Some(span);
        }
        (
            max_response_begin.map(NonZeroU64::get),
            max_idle.map(NonZeroU64::get),
            last,
        )
    }
}
