//! When the daemon drains the ring buffer: on its timer while events come and, once the ring
//! has stayed empty, only when the kernel wakes it.
//!
//! The programs submit events without waking the reader (unless a quarter of the ring is
//! full), so the reader drains on a timer, `--drain-interval`. On a quiet host that timer
//! is nearly all the daemon's work: after [`EMPTY_DRAINS_BEFORE_IDLE`] drains in a row found
//! nothing, the daemon sets `READER_IDLE` (*armed*), drains once more on the timer, and, if
//! that drain finds nothing either, stops the timer (*waiting*). The first program to send an
//! event while the flag is set clears it and wakes the reader; any such wake-up, or a drain
//! that finds something, restarts the timer.
//!
//! The armed drain is there for an event whose program decided not to wake the reader just
//! before the flag was set and committed it just after: a program runs for microseconds, so
//! the event is in the ring by the armed drain, one interval later. Only a program stalled
//! for longer than that (its virtual CPU descheduled mid-run) leaves its event to the next
//! event's wake-up or the next sweep, which drains too.

/// After this many drains in a row found the ring empty, the reader arms (100 ms at the
/// default `--drain-interval`). A host whose connections only exchange (the kernel folds
/// exchanges without events) then costs no drains either, only the sweeps and the metadata
/// rescans; a busy one drains on the timer as before.
pub(crate) const EMPTY_DRAINS_BEFORE_IDLE: u32 = 10;

/// What prompted a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prompt {
    /// The drain timer.
    Timer,
    /// The ring buffer's readiness: the kernel woke the reader.
    Kernel,
    /// A sweep, which drains before it looks at the live connections.
    Sweep,
}

/// What the daemon does after a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing changes.
    Stay,
    /// Set `READER_IDLE`; the timer runs for one more drain.
    Arm,
    /// Stop the timer: the kernel wakes the reader with its next event.
    Wait,
    /// Clear `READER_IDLE` and restart the timer: events come again.
    Resume,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Timer,
    Armed,
    Waiting,
}

/// The reader's pacing state; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    /// Drains in a row that found the ring empty.
    empty_drains: u32,
    state: State,
    /// The flag could not be set: the timer runs for good.
    off: bool,
}

impl Pacing {
    /// Whether the drain timer runs.
    pub(crate) fn timer_runs(&self) -> bool {
        self.state != State::Waiting
    }

    /// Drains on the timer for good (the flag could not be set or cleared).
    pub(crate) fn disable(&mut self) {
        self.off = true;
        self.state = State::Timer;
    }

    /// The step after a drain that `prompt` started and that `found` events (or stopped for
    /// time with more to read).
    pub(crate) fn after_drain(&mut self, prompt: Prompt, found: bool) -> Step {
        // A wake-up while armed or waiting restarts the timer even if the drain found nothing:
        // the event that woke the reader may still be in the writing (the drain stops at a
        // record being written), and the flag is clear now, so nothing would wake it again.
        let woken = prompt == Prompt::Kernel && self.state != State::Timer;
        if found || woken {
            self.empty_drains = 0;
            if self.state == State::Timer {
                return Step::Stay;
            }
            self.state = State::Timer;
            return Step::Resume;
        }
        match self.state {
            State::Timer => {
                self.empty_drains = self.empty_drains.saturating_add(1);
                if self.off || self.empty_drains < EMPTY_DRAINS_BEFORE_IDLE {
                    return Step::Stay;
                }
                self.state = State::Armed;
                Step::Arm
            }
            // Only the timer's drain, an interval after the arming, may stop the timer (a
            // sweep's may come right after the arming).
            State::Armed if prompt == Prompt::Timer => {
                self.state = State::Waiting;
                Step::Wait
            }
            State::Armed | State::Waiting => Step::Stay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_timer_drains(pacing: &mut Pacing, count: u32) -> Vec<Step> {
        (0..count)
            .map(|_| pacing.after_drain(Prompt::Timer, false))
            .collect()
    }

    #[test]
    fn the_timer_stops_one_drain_after_arming() {
        let mut pacing = Pacing::default();
        let steps = empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE);
        assert!(
            steps[..9].iter().all(|step| *step == Step::Stay),
            "{steps:?}"
        );
        assert_eq!(steps[9], Step::Arm);
        assert!(pacing.timer_runs(), "armed: one more drain on the timer");
        assert_eq!(pacing.after_drain(Prompt::Timer, false), Step::Wait);
        assert!(!pacing.timer_runs());
        assert_eq!(pacing.after_drain(Prompt::Sweep, false), Step::Stay);
        assert!(!pacing.timer_runs(), "an empty sweep keeps waiting");
    }

    #[test]
    fn events_put_off_the_arming() {
        let mut pacing = Pacing::default();
        empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE - 1);
        assert_eq!(pacing.after_drain(Prompt::Timer, true), Step::Stay);
        let steps = empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE - 1);
        assert!(steps.iter().all(|step| *step == Step::Stay), "{steps:?}");
        assert_eq!(pacing.after_drain(Prompt::Timer, false), Step::Arm);
    }

    #[test]
    fn a_wake_up_resumes_the_timer_even_when_its_event_is_not_readable_yet() {
        let mut pacing = Pacing::default();
        empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE + 1);
        assert!(!pacing.timer_runs());
        assert_eq!(pacing.after_drain(Prompt::Kernel, false), Step::Resume);
        assert!(pacing.timer_runs());
        // And it takes ten empty drains again to arm.
        let steps = empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE);
        assert_eq!(steps.iter().filter(|step| **step == Step::Arm).count(), 1);
        assert_eq!(steps.last(), Some(&Step::Arm));
    }

    #[test]
    fn only_the_timer_drain_after_arming_stops_the_timer() {
        let mut pacing = Pacing::default();
        empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE);
        assert_eq!(pacing.after_drain(Prompt::Sweep, false), Step::Stay);
        assert!(
            pacing.timer_runs(),
            "a sweep right after arming does not stop the timer"
        );
        assert_eq!(pacing.after_drain(Prompt::Kernel, false), Step::Resume);
        assert!(pacing.timer_runs());
    }

    #[test]
    fn a_drain_that_finds_events_while_armed_or_waiting_resumes() {
        for extra in [0, 1] {
            let mut pacing = Pacing::default();
            empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE + extra);
            assert_eq!(pacing.after_drain(Prompt::Sweep, true), Step::Resume);
            assert!(pacing.timer_runs());
        }
    }

    #[test]
    fn a_wake_up_on_the_timer_is_a_full_ring() {
        let mut pacing = Pacing::default();
        assert_eq!(pacing.after_drain(Prompt::Kernel, true), Step::Stay);
        assert_eq!(pacing.after_drain(Prompt::Kernel, false), Step::Stay);
        assert!(pacing.timer_runs());
    }

    #[test]
    fn disabled_pacing_keeps_the_timer() {
        let mut pacing = Pacing::default();
        empty_timer_drains(&mut pacing, EMPTY_DRAINS_BEFORE_IDLE);
        pacing.disable();
        let steps = empty_timer_drains(&mut pacing, 3 * EMPTY_DRAINS_BEFORE_IDLE);
        assert!(steps.iter().all(|step| *step == Step::Stay), "{steps:?}");
        assert!(pacing.timer_runs());
    }
}
