//! Rate limiting for the output's warnings.

use std::time::{Duration, Instant};

/// Lets a log line through at most once per period; counts the ones held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// Lines held back since the last one let through.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }

    /// `Some(n)` when a line may be logged now, `n` the lines held back since the last one.
    pub(crate) fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}
