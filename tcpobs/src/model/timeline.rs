//! A connection's timeline (the JSON's `phases`): its resolution, connect, TLS handshake,
//! each exchange (the first ones and the last) and close, in time order. What a connection
//! keeps for it beyond its TCP life is in its [`TimelineSpans`], allocated only when there is
//! something to keep; the [`Timeline`] itself is built on the stack when the record is
//! written ([`ConnectionRecord::timeline`]).

use tcpobs_common::{ExchangeSummary, TIMELINE_SPANS, TimelineSpan};

use super::{ConnectionRecord, DnsLink, TlsLink};

/// One exchange on a connection's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeSpan {
    pub seq: u32,
    /// First byte of the exchange (ns).
    pub start_ns: u64,
    /// First byte to last byte (ns).
    pub duration_ns: u64,
}

/// Exchanges a connection's timeline shows at most: the first ones (kept by the kernel) and
/// the last.
pub const TIMELINE_EXCHANGES: usize = TIMELINE_SPANS + 1;

/// What a connection keeps for its timeline beyond its TCP life: the resolution and handshake
/// tied to it, and the exchanges before the last (the kernel's summary, taken at close; the
/// last is known then too). Allocated only for connections that have one of these, and
/// bounded: 88 bytes, plus 8 per exchange kept (at most 15), about 250 bytes at most with the
/// allocator's overhead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineSpans {
    pub dns: Option<DnsLink>,
    pub tls: Option<TlsLink>,
    /// The first exchanges, `seq` 1, 2, ...
    exchanges: Vec<TimelineSpan>,
    /// Exchanges before the last that the timeline leaves out.
    omitted: u32,
}

impl TimelineSpans {
    /// Takes the exchanges before the last from the kernel's summary.
    pub fn set_exchanges(&mut self, summary: &ExchangeSummary) {
        let kept = (summary.kept as usize).min(TIMELINE_SPANS);
        self.exchanges.clear();
        self.exchanges.extend_from_slice(&summary.spans[..kept]);
        self.omitted = summary.count.saturating_sub(kept as u32);
    }

    /// Keeps a completed exchange (not the connection's last) for the timeline, as the kernel
    /// does (for tests that build records by hand).
    #[cfg(test)]
    pub fn push_exchange(&mut self, conn_start_ns: u64, span: &ExchangeSpan) {
        let kept = self.exchanges.len();
        let packed = (kept < TIMELINE_SPANS && span.seq as usize == kept + 1)
            .then(|| TimelineSpan::pack(conn_start_ns, span.start_ns, span.duration_ns))
            .flatten();
        match packed {
            Some(packed) => self.exchanges.push(packed),
            None => self.omitted += 1,
        }
    }

    /// The exchanges kept, in order.
    pub fn exchanges(&self, conn_start_ns: u64) -> impl Iterator<Item = ExchangeSpan> + '_ {
        self.exchanges.iter().zip(1..).map(move |(packed, seq)| {
            let (start_ns, duration_ns) = packed.unpack(conn_start_ns);
            ExchangeSpan {
                seq,
                start_ns,
                duration_ns,
            }
        })
    }

    /// Exchanges left out of the timeline.
    pub fn omitted(&self) -> u32 {
        self.omitted
    }
}

/// One entry of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    /// `dns`, `connect`, `tls`, `exchange`, `close`.
    pub name: &'static str,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The exchange number, for exchanges.
    pub seq: Option<u32>,
}

const TIMELINE_LEN: usize = TIMELINE_EXCHANGES + 4;

/// A connection's timeline in time order, on the stack (writing a record allocates nothing).
pub struct Timeline {
    entries: [TimelineEntry; TIMELINE_LEN],
    len: usize,
}

impl Timeline {
    fn push(&mut self, name: &'static str, start_ns: u64, duration_ns: u64, seq: Option<u32>) {
        if self.len < TIMELINE_LEN {
            self.entries[self.len] = TimelineEntry {
                name,
                start_ns,
                duration_ns,
                seq,
            };
            self.len += 1;
        }
    }

    pub fn entries(&self) -> &[TimelineEntry] {
        &self.entries[..self.len]
    }
}

impl ConnectionRecord {
    /// The resolution tied to this connection.
    pub fn dns(&self) -> Option<&DnsLink> {
        self.spans.as_ref()?.dns.as_ref()
    }

    /// The TLS handshake on this connection.
    pub fn tls(&self) -> Option<&TlsLink> {
        self.spans.as_ref()?.tls.as_ref()
    }

    /// Exchanges left out of the timeline (it shows the first ones and the last).
    pub fn timeline_omitted(&self) -> u32 {
        self.spans.as_ref().map_or(0, |spans| spans.omitted())
    }

    /// dns, connect, tls, each exchange (the first ones and the last), close, ordered by start.
    /// A failed connect lasts until the failure; the close runs from the first FIN or reset
    /// to `CLOSE`.
    pub fn timeline(&self) -> Timeline {
        let empty = TimelineEntry {
            name: "",
            start_ns: 0,
            duration_ns: 0,
            seq: None,
        };
        let mut timeline = Timeline {
            entries: [empty; TIMELINE_LEN],
            len: 0,
        };
        if let Some(dns) = self.dns() {
            timeline.push("dns", dns.start_ns, dns.duration_ns, None);
        }
        match (self.connect_ns, self.connect_failure) {
            (Some(connect), _) => timeline.push("connect", self.start_ns, connect, None),
            (None, Some(_)) => timeline.push("connect", self.start_ns, self.lifetime_ns, None),
            (None, None) => {}
        }
        if let Some(tls) = self.tls() {
            timeline.push("tls", tls.start_ns, tls.duration_ns, None);
        }
        if let Some(spans) = &self.spans {
            for span in spans.exchanges(self.start_ns) {
                timeline.push("exchange", span.start_ns, span.duration_ns, Some(span.seq));
            }
        }
        if let Some(last) = &self.last_exchange {
            timeline.push("exchange", last.start_ns, last.duration_ns, Some(last.seq));
        }
        if let Some(close) = &self.close {
            let teardown = close.teardown_ns.unwrap_or(0);
            timeline.push(
                "close",
                close.at_ns.saturating_sub(teardown),
                teardown,
                None,
            );
        }
        // Stable: equal starts keep the order above (a connect and its DNS-less start).
        timeline.entries[..timeline.len].sort_by_key(|entry| entry.start_ns);
        timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocated per connection with something to keep: growing it is a decision (see
    /// `TimelineSpans`).
    #[test]
    fn timeline_data_stays_small() {
        assert!(
            size_of::<TimelineSpans>() <= 88,
            "{}",
            size_of::<TimelineSpans>()
        );
        assert_eq!(size_of::<TimelineSpan>(), 8);
    }

    #[test]
    fn the_timeline_keeps_the_first_exchanges() {
        let mut kept = TimelineSpans::default();
        for seq in 1..=40 {
            let span = ExchangeSpan {
                seq,
                start_ns: 1_000 + u64::from(seq) * 10_000,
                duration_ns: 5_000,
            };
            kept.push_exchange(1_000, &span);
        }
        let seqs: Vec<u32> = kept.exchanges(1_000).map(|span| span.seq).collect();
        assert_eq!(seqs, (1..TIMELINE_EXCHANGES as u32).collect::<Vec<_>>());
        assert_eq!(kept.omitted(), 40 - (TIMELINE_EXCHANGES as u32 - 1));
    }
}
