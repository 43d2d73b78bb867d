//! Stalls: what a reading of a live connection's TCP state says (the sampler's
//! [`SockSample`]), for the hang detector's `stalled_receiver` and `blackhole` checks.

use std::{collections::HashMap, hash::BuildHasherDefault};

use tcpobs_common::SockSample;

use super::SockHasher;

/// What a reading of a live connection's TCP state says ([`classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StallView {
    /// Nothing in flight, nothing waiting to be sent.
    Idle,
    /// Data in flight or waiting, and nothing wrong with it (yet).
    Moving,
    /// Data waiting and a zero window from a peer that answers the probes; since the sender
    /// became limited by the peer's window, if the kernel says (ns).
    StalledReceiver { since_ns: Option<u64> },
    /// Data in flight, retransmitted (or probes unanswered), and no ACK since `since_ns`.
    Blackhole { since_ns: u64 },
    /// The kernel's record outlived its socket ([`SockSample::gone`]): the close hooks' run
    /// was skipped, and no close will come.
    Gone,
}

/// Readings of the stall suspects, by socket: (the reading's generation, what it says).
pub(crate) type StallViews = HashMap<u64, (u64, StallView), BuildHasherDefault<SockHasher>>;

const ICSK_TIME_PROBE0: u8 = 3;
const TCP_CHRONO_RWND_LIMITED: u8 = 2;

/// Unanswered zero-window probes that make a black hole, early in a stall. A live receiver
/// can leave probes unanswered: it answers one (an out-of-window pure ACK) with a duplicate ACK
/// at most once per 500 ms (`net.ipv4.tcp_invalid_ratelimit`'s default), and the probes come 1,
/// 3, 7, 15… RTOs after the stall began (2, 4, 8… apart; the RTO at least 200 ms). So the first
/// two can both fall within 500 ms of an earlier duplicate ACK; the third comes at least 1.2 s
/// after the first and is answered, but a reading taken as it leaves, before its answer is back,
/// sees 3. Measured on loopback: the second probe went unanswered (`TcpExtTCPACKSkippedSeq`),
/// the count stayed 1 for 0.8 s while the last ACK grew 1.3 s old, and the third was answered.
/// A peer that dies at once reaches 4 at the fourth probe, 3 s after the stall began at the
/// smallest RTO, well within the default `--threshold-blackhole` (10 s).
const PROBES_UNANSWERED: u8 = 4;

/// Unanswered probes that make a black hole once the probes are spread out (`icsk_backoff` at
/// least 4: every probe since the third at least 800 ms after the one before, beyond the rate
/// limit's reach, so a live receiver shows at most the one in flight). A peer that dies after a
/// long stall, its probes already 2 minutes apart, is then found at its second unanswered
/// probe rather than its fourth.
const PROBES_UNANSWERED_SPREAD: u8 = 2;
/// The `icsk_backoff` from which [`PROBES_UNANSWERED_SPREAD`] applies.
const SPREAD_BACKOFF: u8 = 4;

/// What a sampler reading says (`hz` converts the kernel's jiffies; `None` if unknown). The
/// signatures were measured on the kernel (notes `kernel-reads.md` §5): a stalled receiver
/// has a zero window, nothing in flight and data waiting (a probe timer pending, the probes
/// answered); a black hole has data in flight, the retransmission timer fired
/// (`icsk_retransmits`), and the last ACK growing old, or probes that go unanswered. An idle
/// connection has neither data in flight nor waiting. The limited time alone cannot tell them
/// apart: in a black hole the unacknowledged data fills the last window and the same chrono
/// runs.
pub(crate) fn classify(sample: &SockSample, hz: u64) -> Option<StallView> {
    if sample.gone != 0 {
        return Some(StallView::Gone);
    }
    if hz == 0 {
        return None;
    }
    let ago_ns = |jiffies: u32| {
        u64::from((sample.jiffies as u32).wrapping_sub(jiffies)) * 1_000_000_000 / hz
    };
    let in_flight = sample.packets_out > 0 || sample.unacked > 0;
    let unanswered = if sample.backoff >= SPREAD_BACKOFF {
        PROBES_UNANSWERED_SPREAD
    } else {
        PROBES_UNANSWERED
    };
    let probes_unanswered = sample.pending == ICSK_TIME_PROBE0 && sample.probes_out >= unanswered;
    Some(
        if (in_flight && sample.retransmits > 0) || probes_unanswered {
            StallView::Blackhole {
                since_ns: sample.now_ns.saturating_sub(ago_ns(sample.rcv_tstamp)),
            }
        } else if sample.snd_wnd == 0 && (sample.unsent > 0 || sample.pending == ICSK_TIME_PROBE0) {
            StallView::StalledReceiver {
                since_ns: (sample.chrono_type == TCP_CHRONO_RWND_LIMITED)
                    .then(|| sample.now_ns.saturating_sub(ago_ns(sample.chrono_start))),
            }
        } else if in_flight || sample.unsent > 0 {
            StallView::Moving
        } else {
            StallView::Idle
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const HZ: u64 = 250;

    /// A reading at 100 s (jiffies 25,000 at HZ 250).
    fn reading() -> SockSample {
        SockSample {
            sock: 1,
            start_ns: 0,
            now_ns: 100 * S,
            jiffies: 100 * HZ,
            ..Default::default()
        }
    }

    /// The signatures measured on the kernel (notes `kernel-reads.md` §5).
    #[test]
    fn readings_tell_a_stalled_receiver_from_a_black_hole_and_an_idle_connection() {
        assert_eq!(classify(&reading(), HZ), Some(StallView::Idle));
        // Zero window, 3.79 MB waiting, nothing in flight, the probe timer pending; limited by
        // the peer's window for the last 2.464 s.
        let stalled = SockSample {
            snd_wnd: 0,
            unsent: 3_790_000,
            pending: 3,
            chrono_type: 2,
            chrono_start: (100 * HZ - 616) as u32,
            rcv_tstamp: (100 * HZ - 230) as u32,
            ..reading()
        };
        assert_eq!(
            classify(&stalled, HZ),
            Some(StallView::StalledReceiver {
                since_ns: Some(100 * S - 2_464_000_000)
            })
        );
        // 66 segments in flight, the timer backing off (5 timeouts), the last ACK 9.5 s ago.
        let vanished = SockSample {
            snd_wnd: 94_208,
            packets_out: 66,
            unacked: 94_208,
            unsent: 46_000,
            pending: 1,
            retransmits: 5,
            backoff: 5,
            chrono_type: 2,
            rcv_tstamp: (100 * HZ - 2_375) as u32,
            ..reading()
        };
        assert_eq!(
            classify(&vanished, HZ),
            Some(StallView::Blackhole {
                since_ns: 100 * S - 9_500_000_000
            })
        );
        // A live receiver whose duplicate ACKs the rate limit skipped: the first two probes
        // unanswered, the third just sent (backoff 3), the last ACK 1.3 s old. Still stalled.
        let rate_limited = SockSample {
            probes_out: 3,
            backoff: 3,
            rcv_tstamp: (100 * HZ - 325) as u32,
            ..stalled
        };
        assert!(matches!(
            classify(&rate_limited, HZ),
            Some(StallView::StalledReceiver { .. })
        ));
        // Zero-window peers that died: after a long stall (its probes minutes apart), two
        // probes unanswered; at once, its first four.
        for (probes_out, backoff, ago_s) in [(2, 9, 60), (4, 4, 4)] {
            let dead = SockSample {
                probes_out,
                backoff,
                rcv_tstamp: (100 * HZ - ago_s * HZ) as u32,
                ..stalled
            };
            assert_eq!(
                classify(&dead, HZ),
                Some(StallView::Blackhole {
                    since_ns: 100 * S - ago_s * S
                }),
                "{probes_out} probes unanswered, backoff {backoff}"
            );
        }
        // Data in flight and acknowledged: moving.
        let moving = SockSample {
            snd_wnd: 65_535,
            packets_out: 10,
            unacked: 14_480,
            ..reading()
        };
        assert_eq!(classify(&moving, HZ), Some(StallView::Moving));
        // Jiffies wrap around 32 bits in the socket's fields.
        let wrapped = SockSample {
            jiffies: (1 << 32) + 100,
            rcv_tstamp: u32::MAX - 149,
            ..vanished
        };
        assert_eq!(
            classify(&wrapped, HZ),
            Some(StallView::Blackhole {
                since_ns: 100 * S - S
            })
        );
        assert_eq!(classify(&vanished, 0), None, "HZ unknown");
    }
}
