//! Time. The kernel stamps every event with `CLOCK_MONOTONIC` nanoseconds
//! (`bpf_ktime_get_ns`), and the tracker and hang detector work in that clock throughout;
//! only the outputs (JSON events, justniffer lines, OTLP, `/connections`) turn it into wall-clock
//! time, through a [`WallClock`]. The daemon's is [`Clock`]: the offset between the two
//! clocks, read once at start-up, so that every timestamp of a run is consistent even if the
//! system clock is stepped meanwhile.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

/// Now, in the kernel's clock (`bpf_ktime_get_ns`).
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Converts the kernel's monotonic nanoseconds to wall-clock time.
pub trait WallClock {
    /// Nanoseconds since the Unix epoch.
    fn unix_ns(&self, monotonic_ns: u64) -> i64;

    fn wall(&self, monotonic_ns: u64) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.unix_ns(monotonic_ns))
    }
}

/// Maps the kernel's `CLOCK_MONOTONIC` to wall-clock time, fixed at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    /// The process's clock: the offset is read once, at the first call, so that every
    /// output (JSON events, OTLP, `/connections`) gives one kernel timestamp the same time.
    pub fn new() -> Self {
        static OFFSET: OnceLock<i128> = OnceLock::new();
        Self {
            realtime_minus_monotonic_ns: *OFFSET
                .get_or_init(|| clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock for Clock {
    fn unix_ns(&self, monotonic_ns: u64) -> i64 {
        (i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns) as i64
    }
}

/// A wall clock whose epoch is the kernel clock's zero: monotonic nanoseconds are Unix
/// nanoseconds, so that tests read `1970-01-01T00:00:00.002000Z` for 2 ms.
#[cfg(test)]
pub(crate) struct BootEpoch;

#[cfg(test)]
impl WallClock for BootEpoch {
    fn unix_ns(&self, monotonic_ns: u64) -> i64 {
        monotonic_ns as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_follows_the_system_clock() {
        let clock = Clock::new();
        let wall = clock.wall(monotonic_now_ns());
        let skew = (Utc::now() - wall).num_milliseconds().abs();
        assert!(skew < 1_000, "{wall} is {skew} ms off the system clock");
    }

    #[test]
    fn every_clock_of_the_process_agrees() {
        let now = monotonic_now_ns();
        assert_eq!(Clock::new().unix_ns(now), Clock::new().unix_ns(now));
    }
}
