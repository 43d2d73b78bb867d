//! Burst coalescing: how the kernel folds send and receive calls into the record's bursts, and
//! when it sends a pair of them ([`crate::BurstEvent`]).
//!
//! The rules live here, not in the kernel crate, so that the kernel's data hooks and the
//! daemon's tracker tests (which play the kernel's part) run the same code, and so that the
//! rules have host unit tests (below):
//!
//! - a call in the direction of the burst in progress extends it;
//! - a call in the other direction completes it: the first completed burst is held, and the
//!   next completion sends the held burst and the completed one as a pair (one event per
//!   request/response exchange), after which nothing is held;
//! - every call adds to the connection's byte totals.
//!
//! A connection whose last burst is not part of a pair sends it with its close (the record
//! carries `held` and `burst`).

use crate::{SockRecord, direction};

impl SockRecord {
    /// One successful send ([`direction::OUT`]) or receive ([`direction::IN`]) of `bytes`,
    /// completed at `now_ns`. `emit_pair` is called with the record when the direction flipped a
    /// second time since the last pair: `held` and `burst` are the two bursts to send, before
    /// the record moves on to the new burst.
    ///
    /// Field by field, in place: in the kernel, a `Burst` struct literal would zero its `_pad`
    /// through a call to a byte-at-a-time `memset` subprogram (the padding is zero already, from
    /// the record's creation).
    #[inline(always)]
    pub fn add_data(&mut self, now_ns: u64, bytes: u64, dir: u8, emit_pair: impl FnOnce(&Self)) {
        if self.burst.dir == dir {
            self.burst.last_ns = now_ns;
            self.burst.bytes += bytes;
            self.burst.calls += 1;
        } else {
            if self.burst.dir != direction::NONE {
                if self.held.dir == direction::NONE {
                    self.held = self.burst;
                } else {
                    emit_pair(self);
                    self.held.dir = direction::NONE;
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
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{vec, vec::Vec};

    use super::*;
    use crate::Burst;

    const OUT: u8 = direction::OUT;
    const IN: u8 = direction::IN;

    /// The pairs sent, as (first, second) bursts.
    fn feed(rec: &mut SockRecord, calls: &[(u64, u64, u8)]) -> Vec<(Burst, Burst)> {
        let mut pairs = Vec::new();
        for &(now, bytes, dir) in calls {
            rec.add_data(now, bytes, dir, |rec| pairs.push((rec.held, rec.burst)));
        }
        pairs
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

    #[test]
    fn the_first_call_starts_a_burst() {
        let mut rec = SockRecord::default();
        let pairs = feed(&mut rec, &[(10, 100, OUT)]);
        assert_eq!(pairs, vec![], "one call sends nothing");
        assert_eq!(
            rec.burst,
            burst(10, 10, 100, 1, OUT),
            "the burst in progress"
        );
        assert_eq!(rec.held.dir, direction::NONE, "nothing held yet");
    }

    #[test]
    fn the_same_direction_extends_the_burst() {
        let mut rec = SockRecord::default();
        let pairs = feed(&mut rec, &[(10, 100, OUT), (20, 50, OUT), (35, 1, OUT)]);
        assert_eq!(pairs, vec![], "no flip, nothing sent");
        assert_eq!(
            rec.burst,
            burst(10, 35, 151, 3, OUT),
            "first call's start, last call's end, bytes and calls summed"
        );
        assert_eq!(rec.held.dir, direction::NONE, "nothing held");
    }

    #[test]
    fn the_first_flip_holds_the_completed_burst() {
        let mut rec = SockRecord::default();
        let pairs = feed(&mut rec, &[(10, 100, OUT), (20, 50, OUT), (40, 7, IN)]);
        assert_eq!(pairs, vec![], "one completed burst is held, not sent");
        assert_eq!(rec.held, burst(10, 20, 150, 2, OUT), "the request is held");
        assert_eq!(
            rec.burst,
            burst(40, 40, 7, 1, IN),
            "the response is in progress"
        );
    }

    #[test]
    fn the_second_flip_sends_the_pair() {
        let mut rec = SockRecord::default();
        let pairs = feed(
            &mut rec,
            &[(10, 100, OUT), (40, 7, IN), (45, 3, IN), (90, 20, OUT)],
        );
        assert_eq!(
            pairs,
            vec![(burst(10, 10, 100, 1, OUT), burst(40, 45, 10, 2, IN))],
            "request and response go out together, as completed"
        );
        assert_eq!(rec.held.dir, direction::NONE, "nothing held after a pair");
        assert_eq!(rec.burst, burst(90, 90, 20, 1, OUT), "the next request");
    }

    #[test]
    fn pairs_do_not_overlap() {
        let mut rec = SockRecord::default();
        let calls = [
            (10, 1, OUT),
            (20, 2, IN),
            (30, 3, OUT),
            (40, 4, IN),
            (50, 5, OUT),
        ];
        let pairs = feed(&mut rec, &calls);
        assert_eq!(
            pairs,
            vec![
                (burst(10, 10, 1, 1, OUT), burst(20, 20, 2, 1, IN)),
                (burst(30, 30, 3, 1, OUT), burst(40, 40, 4, 1, IN)),
            ],
            "bursts 1+2 and 3+4, one event per exchange"
        );
        assert_eq!(rec.held.dir, direction::NONE, "burst 5 is in progress");
        assert_eq!(rec.burst, burst(50, 50, 5, 1, OUT));
    }

    #[test]
    fn a_server_pairs_what_it_received_with_what_it_sent() {
        let mut rec = SockRecord::default();
        let pairs = feed(&mut rec, &[(10, 80, IN), (12, 500, OUT), (30, 80, IN)]);
        assert_eq!(
            pairs,
            vec![(burst(10, 10, 80, 1, IN), burst(12, 12, 500, 1, OUT))],
            "the directions are whatever the socket saw first"
        );
    }

    #[test]
    fn every_call_adds_to_the_totals() {
        let mut rec = SockRecord::default();
        feed(
            &mut rec,
            &[(10, 100, OUT), (20, 7, IN), (30, 3, IN), (40, 1, OUT)],
        );
        assert_eq!(rec.bytes_sent, 101, "bytes sent");
        assert_eq!(rec.bytes_recv, 10, "bytes received");
    }

    #[test]
    fn a_new_burst_is_written_field_by_field() {
        let mut rec = SockRecord::default();
        rec.burst._pad = [1, 2, 3];
        feed(&mut rec, &[(10, 100, OUT)]);
        assert_eq!(
            rec.burst._pad,
            [1, 2, 3],
            "padding left alone: a struct literal would bring a memset call into the kernel code"
        );
    }
}
