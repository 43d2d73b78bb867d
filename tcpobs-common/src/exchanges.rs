//! Bursts and exchanges: how the kernel folds send and receive calls into the record's bursts,
//! when an exchange ends, and what it keeps of each ([`crate::ExchangeSummary`]).
//!
//! The rules live here, not in the kernel crate, so that the kernel's data hooks and the
//! daemon's tracker tests (which play the kernel's part) run the same code, and so that the
//! rules have host unit tests (below):
//!
//! - a call in the direction of the burst in progress extends it;
//! - a call in the other direction completes it ([`DataSink::burst_done`]) and starts a new one;
//! - on a socket whose role is known (client: requests are what it sends; server: what it
//!   receives), a completed request is held while its response is under way, and when a
//!   request begins after a response, the exchange (the held request, if any, and the
//!   response) is over ([`DataSink::exchange_done`], which folds it with
//!   [`SockRecord::fold_exchange`]); a socket of unknown role has no exchanges;
//! - every call adds to the connection's byte totals.
//!
//! So an exchange ends when the next request begins, as the daemon's exchange records say
//! (`start`/`continue`, with the idle gap up to that request); the exchange still in progress
//! at the close is the connection's last, in the close record's `held` and `burst`.
//!
//! [`SockRecord::fold_exchange`] computes the exchange's timings exactly as the daemon's
//! exchange records have them, reports each one for the histograms, and keeps what the
//! connection record needs: the count, the longest time to first byte and idle gap, and the
//! first exchanges' timeline spans.

use crate::{
    Burst, FLAG_PARTIAL, SockRecord, TIMELINE_SPANS, TimelineSpan, direction, folds::hist, role,
};

/// What the data hooks do when a burst completes and when an exchange ends.
pub trait DataSink {
    /// `rec.burst` just completed (its bytes are counted now).
    fn burst_done(&mut self, rec: &SockRecord);

    /// The exchange in progress ended: the next request began at `next_ns`. Its request is
    /// `rec.held` ([`direction::NONE`] if it had none), its response `rec.burst`.
    fn exchange_done(&mut self, rec: &mut SockRecord, next_ns: u64);
}

/// A burst's first and last times, ordered: the kernel updates a burst without a lock, so a
/// socket used by two threads at once (one sending, one receiving) can tear it. The first time
/// is never 0 (the kernel clock starts at boot).
#[inline(always)]
pub fn span_of(burst: &Burst) -> (u64, u64) {
    let (first, last) = (burst.first_ns, burst.last_ns);
    let (low, high) = if first <= last {
        (first, last)
    } else {
        (last, first)
    };
    (if low == 0 { 1 } else { low }, high)
}

const MICROS: u32 = 1 << 31;

impl TimelineSpan {
    /// An exchange that started at `start_ns` and lasted `duration_ns`, on a connection that
    /// started at `conn_start_ns`; `None` past 71 minutes after the connection's start.
    #[inline(always)]
    pub fn pack(conn_start_ns: u64, start_ns: u64, duration_ns: u64) -> Option<Self> {
        let start_us = start_ns.saturating_sub(conn_start_ns) / 1_000;
        if start_us > u64::from(u32::MAX) {
            return None;
        }
        let duration = if duration_ns < u64::from(MICROS) {
            duration_ns as u32
        } else {
            let micros = duration_ns / 1_000;
            MICROS
                | if micros > u64::from(!MICROS) {
                    !MICROS
                } else {
                    micros as u32
                }
        };
        Some(Self {
            start_us: start_us as u32,
            duration,
        })
    }

    /// (start, duration) in ns.
    pub fn unpack(self, conn_start_ns: u64) -> (u64, u64) {
        let duration_ns = if self.duration & MICROS == 0 {
            u64::from(self.duration)
        } else {
            u64::from(self.duration & !MICROS) * 1_000
        };
        (
            conn_start_ns + u64::from(self.start_us) * 1_000,
            duration_ns,
        )
    }
}

impl SockRecord {
    /// The direction of requests on this socket, [`direction::NONE`] if its role is unknown.
    #[inline(always)]
    pub fn request_dir(&self) -> u8 {
        match self.role {
            role::CLIENT => direction::OUT,
            role::SERVER => direction::IN,
            _ => direction::NONE,
        }
    }

    /// One successful send ([`direction::OUT`]) or receive ([`direction::IN`]) of `bytes`,
    /// completed at `now_ns`.
    ///
    /// Field by field, in place: in the kernel, a `Burst` struct literal would zero its `_pad`
    /// through a call to a byte-at-a-time `memset` subprogram (the padding is zero already, from
    /// the record's creation).
    #[inline(always)]
    pub fn add_data(&mut self, now_ns: u64, bytes: u64, dir: u8, sink: &mut impl DataSink) {
        if self.burst.dir == dir {
            self.burst.last_ns = now_ns;
            self.burst.bytes += bytes;
            self.burst.calls += 1;
        } else {
            let done = self.burst.dir;
            if done != direction::NONE {
                sink.burst_done(self);
                let requests = self.request_dir();
                if requests != direction::NONE {
                    if done == requests {
                        self.held = self.burst;
                    } else {
                        sink.exchange_done(self, now_ns);
                        self.held.dir = direction::NONE;
                    }
                }
            }
            self.burst.first_ns = now_ns;
            self.burst.last_ns = now_ns;
            self.burst.bytes = bytes;
            self.burst.calls = 1;
            self.burst.dir = dir;
        }
        if dir == direction::OUT {
            self.bytes_sent += bytes;
        } else {
            self.bytes_recv += bytes;
        }
    }

    /// Keeps the exchange that the next request (at `next_ns`) ended in the summary, and
    /// reports each of its timings to `observe` (a [`hist`] index and the value in ns), as the
    /// daemon's exchange record would have them. Returns its number on the connection.
    #[inline(always)]
    pub fn fold_exchange(&mut self, next_ns: u64, mut observe: impl FnMut(usize, u64)) -> u32 {
        let summary = &mut self.exchanges;
        let seq = summary.count + 1;
        let (response_first, response_last) = span_of(&self.burst);
        let response_end = response_last - response_first;
        let first_ns = if self.held.dir == direction::NONE {
            response_first
        } else {
            let (request_first, request_last) = span_of(&self.held);
            let response_begin = response_first.saturating_sub(request_last);
            observe(hist::REQUEST, request_last - request_first);
            observe(hist::FIRST_BYTE, response_begin);
            observe(hist::RESPONSE, response_begin + response_end);
            if response_begin > summary.max_response_begin_ns {
                summary.max_response_begin_ns = response_begin;
            }
            request_first
        };
        observe(hist::TRANSFER, response_end);
        if seq == 1 && self.flags & FLAG_PARTIAL == 0 && self.established_ns != 0 {
            observe(
                hist::IDLE_BEFORE,
                first_ns.saturating_sub(self.established_ns),
            );
        }
        let idle_after = next_ns.saturating_sub(response_last);
        observe(hist::IDLE_AFTER, idle_after);
        if idle_after > summary.max_idle_ns {
            summary.max_idle_ns = idle_after;
        }
        observe(hist::SESSION, response_last.saturating_sub(self.start_ns));
        let kept = summary.kept as usize;
        if kept < TIMELINE_SPANS
            && seq as usize == kept + 1
            && let Some(span) = TimelineSpan::pack(
                self.start_ns,
                first_ns,
                response_last.saturating_sub(first_ns),
            )
        {
            summary.spans[kept] = span;
            summary.kept += 1;
        }
        summary.count = seq;
        seq
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{vec, vec::Vec};

    use super::*;

    const OUT: u8 = direction::OUT;
    const IN: u8 = direction::IN;

    /// Records what the sink is told: (held, completed burst) per exchange, and the bursts.
    #[derive(Default)]
    struct Seen {
        bursts: Vec<Burst>,
        exchanges: Vec<(Burst, Burst, u64)>,
    }

    impl DataSink for Seen {
        fn burst_done(&mut self, rec: &SockRecord) {
            self.bursts.push(rec.burst);
        }

        fn exchange_done(&mut self, rec: &mut SockRecord, next_ns: u64) {
            self.exchanges.push((rec.held, rec.burst, next_ns));
        }
    }

    fn feed(rec: &mut SockRecord, calls: &[(u64, u64, u8)]) -> Seen {
        let mut seen = Seen::default();
        for &(now, bytes, dir) in calls {
            rec.add_data(now, bytes, dir, &mut seen);
        }
        seen
    }

    fn burst(first_ns: u64, last_ns: u64, bytes: u64, calls: u32, dir: u8) -> Burst {
        Burst {
            first_ns,
            last_ns,
            bytes,
            calls,
            dir,
            _pad: [0; 3],
        }
    }

    fn client() -> SockRecord {
        SockRecord {
            role: role::CLIENT,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_call_starts_a_burst() {
        let mut rec = client();
        let seen = feed(&mut rec, &[(10, 100, OUT)]);
        assert!(seen.bursts.is_empty(), "one call completes nothing");
        assert_eq!(
            rec.burst,
            burst(10, 10, 100, 1, OUT),
            "the burst in progress"
        );
        assert_eq!(rec.held.dir, direction::NONE, "nothing held yet");
    }

    #[test]
    fn the_same_direction_extends_the_burst() {
        let mut rec = client();
        let seen = feed(&mut rec, &[(10, 100, OUT), (20, 50, OUT), (35, 1, OUT)]);
        assert!(seen.bursts.is_empty(), "no flip, nothing completed");
        assert_eq!(
            rec.burst,
            burst(10, 35, 151, 3, OUT),
            "first call's start, last call's end, bytes and calls summed"
        );
    }

    #[test]
    fn a_completed_request_is_held() {
        let mut rec = client();
        let seen = feed(&mut rec, &[(10, 100, OUT), (20, 50, OUT), (40, 7, IN)]);
        assert_eq!(seen.bursts, [burst(10, 20, 150, 2, OUT)]);
        assert!(seen.exchanges.is_empty(), "the response is under way");
        assert_eq!(rec.held, burst(10, 20, 150, 2, OUT), "the request is held");
        assert_eq!(rec.burst, burst(40, 40, 7, 1, IN));
    }

    #[test]
    fn the_next_request_ends_the_exchange() {
        let mut rec = client();
        let seen = feed(
            &mut rec,
            &[(10, 100, OUT), (40, 7, IN), (45, 3, IN), (90, 20, OUT)],
        );
        assert_eq!(
            seen.exchanges,
            [(burst(10, 10, 100, 1, OUT), burst(40, 45, 10, 2, IN), 90)],
            "request and response, ended at the next request's first call"
        );
        assert_eq!(rec.held.dir, direction::NONE, "nothing held after it");
        assert_eq!(rec.burst, burst(90, 90, 20, 1, OUT), "the next request");
    }

    #[test]
    fn a_server_requests_are_what_it_receives() {
        let mut rec = SockRecord {
            role: role::SERVER,
            ..Default::default()
        };
        let seen = feed(
            &mut rec,
            &[(10, 80, IN), (12, 500, OUT), (30, 80, IN), (31, 9, OUT)],
        );
        assert_eq!(
            seen.exchanges,
            [(burst(10, 10, 80, 1, IN), burst(12, 12, 500, 1, OUT), 30)]
        );
        assert_eq!(rec.held, burst(30, 30, 80, 1, IN));
    }

    /// A server that speaks first: its greeting is an exchange without a request, ended by the
    /// first request.
    #[test]
    fn a_response_first_is_an_exchange_without_request() {
        let mut rec = client();
        let seen = feed(&mut rec, &[(10, 40, IN), (20, 10, OUT), (30, 40, IN)]);
        assert_eq!(seen.exchanges.len(), 1);
        let (held, response, next) = seen.exchanges[0];
        assert_eq!(held.dir, direction::NONE);
        assert_eq!((response, next), (burst(10, 10, 40, 1, IN), 20));
        assert_eq!(rec.held, burst(20, 20, 10, 1, OUT));
    }

    #[test]
    fn an_unknown_role_has_bursts_but_no_exchanges() {
        let mut rec = SockRecord::default();
        let seen = feed(
            &mut rec,
            &[(10, 1, OUT), (20, 2, IN), (30, 3, OUT), (40, 4, IN)],
        );
        assert_eq!(seen.bursts.len(), 3);
        assert!(seen.exchanges.is_empty());
        assert_eq!(rec.held.dir, direction::NONE);
    }

    #[test]
    fn every_call_adds_to_the_totals() {
        let mut rec = client();
        feed(
            &mut rec,
            &[(10, 100, OUT), (20, 7, IN), (30, 3, IN), (40, 1, OUT)],
        );
        assert_eq!(rec.bytes_sent, 101, "bytes sent");
        assert_eq!(rec.bytes_recv, 10, "bytes received");
    }

    #[test]
    fn a_new_burst_is_written_field_by_field() {
        let mut rec = client();
        rec.burst._pad = [1, 2, 3];
        feed(&mut rec, &[(10, 100, OUT)]);
        assert_eq!(
            rec.burst._pad,
            [1, 2, 3],
            "padding left alone: a struct literal would bring a memset call into the kernel code"
        );
    }

    /// A sink that folds, as the kernel does.
    #[derive(Default)]
    struct Folding {
        observed: Vec<(usize, u64)>,
        seqs: Vec<u32>,
    }

    impl DataSink for Folding {
        fn burst_done(&mut self, _: &SockRecord) {}

        fn exchange_done(&mut self, rec: &mut SockRecord, next_ns: u64) {
            let observed = &mut self.observed;
            let seq = rec.fold_exchange(next_ns, |hist, value| observed.push((hist, value)));
            self.seqs.push(seq);
        }
    }

    #[test]
    fn folding_reports_the_timings_and_keeps_the_summary() {
        let mut rec = SockRecord {
            role: role::CLIENT,
            start_ns: 1_000,
            established_ns: 2_000,
            ..Default::default()
        };
        let mut sink = Folding::default();
        for (now, bytes, dir) in [
            (3_000, 10, OUT),
            (3_500, 10, OUT),
            (9_000, 40, IN),
            (9_400, 40, IN),
            (20_000, 10, OUT),
            (21_000, 40, IN),
            (50_000, 10, OUT),
        ] {
            rec.add_data(now, bytes, dir, &mut sink);
        }
        assert_eq!(sink.seqs, [1, 2]);
        let first: Vec<(usize, u64)> = sink.observed[..7].to_vec();
        assert_eq!(
            first,
            vec![
                (hist::REQUEST, 500),
                (hist::FIRST_BYTE, 5_500),
                (hist::RESPONSE, 5_900),
                (hist::TRANSFER, 400),
                (hist::IDLE_BEFORE, 1_000),
                (hist::IDLE_AFTER, 10_600),
                (hist::SESSION, 8_400),
            ]
        );
        assert_eq!(
            sink.observed[7..],
            [
                (hist::REQUEST, 0),
                (hist::FIRST_BYTE, 1_000),
                (hist::RESPONSE, 1_000),
                (hist::TRANSFER, 0),
                (hist::IDLE_AFTER, 29_000),
                (hist::SESSION, 20_000),
            ],
            "idle before only for the first exchange"
        );
        let summary = rec.exchanges;
        assert_eq!((summary.count, summary.kept), (2, 2));
        assert_eq!(summary.max_response_begin_ns, 5_500);
        assert_eq!(summary.max_idle_ns, 29_000);
        assert_eq!(summary.spans[0].unpack(1_000), (3_000, 6_400));
        assert_eq!(summary.spans[1].unpack(1_000), (20_000, 1_000));
    }

    #[test]
    fn the_timeline_keeps_the_first_exchanges() {
        let mut rec = client();
        rec.start_ns = 1_000;
        let mut sink = Folding::default();
        for index in 0..40u64 {
            let at = 10_000 + index * 10_000;
            rec.add_data(at, 1, OUT, &mut sink);
            rec.add_data(at + 5_000, 1, IN, &mut sink);
        }
        let summary = rec.exchanges;
        assert_eq!(summary.count, 39, "the 40th is in progress");
        assert_eq!(summary.kept as usize, TIMELINE_SPANS);
        let starts: Vec<u64> = summary.spans.iter().map(|s| s.unpack(1_000).0).collect();
        let expected: Vec<u64> = (0..TIMELINE_SPANS as u64)
            .map(|index| 10_000 + index * 10_000)
            .collect();
        assert_eq!(starts, expected);
    }

    #[test]
    fn spans_keep_microsecond_starts_and_long_durations() {
        let start = 5_000_000_000;
        for (offset, duration) in [(0, 0), (1_234_567, 999), (60_000_000_000, 3_000_000_000)] {
            let back = TimelineSpan::pack(start, start + offset, duration)
                .unwrap()
                .unpack(start);
            assert_eq!(back.0, start + offset / 1_000 * 1_000);
            let expected = if duration < 1 << 31 {
                duration
            } else {
                duration / 1_000 * 1_000
            };
            assert_eq!(back.1, expected);
        }
        // More than 71 minutes after the connection's start: left out.
        assert_eq!(
            TimelineSpan::pack(start, start + 5_000_000_000_000, 1),
            None
        );
    }
}
