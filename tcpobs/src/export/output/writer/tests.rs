use super::*;
use crate::export::output::select::EventType;

#[test]
fn throttle_lets_one_line_through_per_period_and_counts_the_rest() {
    let mut throttle = Throttle::new(Duration::from_secs(10));
    let start = Instant::now();
    assert_eq!(throttle.ready(start), Some(0));
    for second in 1..10 {
        assert_eq!(throttle.ready(start + Duration::from_secs(second)), None);
    }
    assert_eq!(throttle.ready(start + Duration::from_secs(10)), Some(9));
    assert_eq!(throttle.ready(start + Duration::from_secs(11)), None);
    assert_eq!(throttle.ready(start + Duration::from_secs(25)), Some(1));
}

#[test]
fn failures_are_named_by_cause() {
    for (errno, failure) in [
        (libc::ENOSPC, WriteFailure::NoSpace),
        (libc::EDQUOT, WriteFailure::NoSpace),
        (libc::EPIPE, WriteFailure::BrokenPipe),
        (libc::EIO, WriteFailure::Other),
    ] {
        assert_eq!(
            WriteFailure::of(&io::Error::from_raw_os_error(errno)),
            failure,
            "{errno}"
        );
    }
    let labels: Vec<_> = WriteFailure::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(labels, ["no_space", "broken_pipe", "reopen", "other"]);
    for (index, failure) in WriteFailure::ALL.iter().enumerate() {
        assert_eq!(*failure as usize, index);
    }
    for (index, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, index);
    }
}

#[test]
fn blocks_count_events_not_other_lines() {
    let block = Block {
        bytes: b"a\nb\nstats\n".to_vec(),
        lines: vec![
            (2, EventType::Connection.index() as u8),
            (4, EventType::Dns.index() as u8),
            (10, NOT_AN_EVENT),
        ],
    };
    assert_eq!(block.events(), 2);
    let counters: [std::sync::atomic::AtomicU64; 5] = Default::default();
    assert_eq!(Block::count(&block.lines, &counters), 2);
    let counted: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(counted, [1, 0, 0, 1, 0]);
}
