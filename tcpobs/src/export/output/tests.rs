//! The output with a destination in memory that fills up, breaks or stalls on demand.

use std::sync::{Condvar, Mutex};

use super::{
    writer::{DropReason, WriteFailure},
    *,
};
use crate::model::{Role, TlsRecord};

/// What the in-memory destination holds and how it behaves.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    pub(crate) bytes: Vec<u8>,
    /// Bytes it takes before refusing with ENOSPC (`None`: no limit). A write that does not
    /// fit writes what fits first, as a file system does.
    pub(crate) room: Option<usize>,
    /// Every write fails with this errno.
    pub(crate) fail: Option<i32>,
    /// Written bytes cannot be taken back (a pipe), rather than truncated (a file).
    pub(crate) pipe: bool,
    /// Writes wait while set (a reader that stopped reading).
    pub(crate) stalled: bool,
    pub(crate) reopened: usize,
    pub(crate) reopen_fails: bool,
}

/// A destination in memory, shared with the test.
#[derive(Clone, Debug, Default)]
pub(crate) struct Memory(Arc<(Mutex<Disk>, Condvar)>);

impl Memory {
    pub(crate) fn with(disk: Disk) -> Self {
        Self(Arc::new((Mutex::new(disk), Condvar::new())))
    }

    /// Changes how it behaves (and wakes a stalled write).
    pub(crate) fn set(&self, change: impl FnOnce(&mut Disk)) {
        change(&mut self.0.0.lock().unwrap());
        self.0.1.notify_all();
    }

    pub(crate) fn get<T>(&self, read: impl FnOnce(&Disk) -> T) -> T {
        read(&self.0.0.lock().unwrap())
    }

    /// Every line written, parsed; panics on a line that is not JSON.
    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.get(|disk| disk.bytes.clone());
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n"),
            "whole lines only: {}",
            String::from_utf8_lossy(&bytes)
        );
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line).unwrap_or_else(|err| {
                    panic!("{err}: {}", String::from_utf8_lossy(line));
                })
            })
            .collect()
    }
}

impl Destination for Memory {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let (disk, wake) = &*self.0;
        let mut disk = disk.lock().unwrap();
        while disk.stalled {
            disk = wake.wait(disk).unwrap();
        }
        if let Some(errno) = disk.fail {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let fits = disk
            .room
            .map_or(bytes.len(), |room| room.saturating_sub(disk.bytes.len()))
            .min(bytes.len());
        if fits == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        disk.bytes.extend_from_slice(&bytes[..fits]);
        Ok(fits)
    }

    fn unwrite(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.0.0.lock().unwrap();
        if disk.pipe {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let keep = disk.bytes.len() - len as usize;
        disk.bytes.truncate(keep);
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<()> {
        let mut disk = self.0.0.lock().unwrap();
        if disk.reopen_fails {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        disk.reopened += 1;
        Ok(())
    }

    fn ends_mid_line(&mut self) -> bool {
        self.get(|disk| disk.bytes.last().is_some_and(|&b| b != b'\n'))
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

/// A failed handshake on no known connection: written with the default selection.
fn failed_tls(start_ns: u64) -> Record {
    Record::Tls(TlsRecord {
        conn_id: None,
        role: Role::Client,
        addrs: None,
        process: None,
        start_ns,
        duration_ns: 1_000,
        ok: false,
        calls: 1,
        after_close: false,
    })
}

fn output(memory: &Memory, queue_bytes: usize) -> Output {
    Output::new(
        Box::new(memory.clone()),
        Format::Json,
        Clock::new(),
        queue_bytes,
    )
    .unwrap()
}

/// Waits for the writer to write what it was given.
fn settle(output: &Output) {
    assert!(
        output.queue.wait_idle(Duration::from_secs(20)),
        "writer idle"
    );
}

const TLS: usize = EventType::Tls as usize;

fn written(output: &Output) -> u64 {
    output.counts.get().0[TLS]
}

fn dropped(output: &Output, reason: DropReason) -> u64 {
    output.counts.dropped()[reason as usize][TLS]
}

fn errors(output: &Output, failure: WriteFailure) -> u64 {
    output.counts.errors()[failure as usize]
}

/// A queue smaller than a block makes the blocks smaller: an empty queue takes a block whole,
/// so what waits stays within `--output-queue-bytes` (give or take a line).
#[test]
fn a_small_queue_makes_small_blocks() {
    let memory = Memory::default();
    let queue = 16 * 1024;
    let mut output = output(&memory, queue);
    output.write(&failed_tls(0)).unwrap();
    output.flush().unwrap();
    settle(&output);
    let line_len = memory.get(|disk| disk.bytes.len());
    // Twice the queue, far less than FLUSH_AT, and no flush: handed over all the same.
    for index in 0..2 * queue / line_len {
        output
            .write(&failed_tls((index as u64 + 1) * 1_000))
            .unwrap();
    }
    settle(&output);
    assert!(memory.lines().len() > 1, "{}", memory.lines().len());
}

#[test]
fn lines_are_handed_over_when_the_buffer_fills_at_flush_and_at_close() {
    let memory = Memory::default();
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    output.write(&failed_tls(0)).unwrap();
    settle(&output);
    assert!(memory.lines().is_empty(), "held until the flush");
    output.flush().unwrap();
    settle(&output);
    assert_eq!(memory.lines().len(), 1);
    assert_eq!(memory.lines()[0]["type"], "tls");
    assert_eq!(written(&output), 1);

    // More than FLUSH_AT bytes of events: the full buffer goes out without a flush.
    let line_len = memory.get(|disk| disk.bytes.len());
    let count = FLUSH_AT / line_len * 2;
    let stats_line = "{\"type\":\"stats\"}\n".to_owned();
    for index in 0..count {
        output
            .write(&failed_tls((index as u64 + 1) * 1_000))
            .unwrap();
    }
    settle(&output);
    let before_flush = memory.lines().len();
    assert!(
        before_flush > 1 && before_flush < count + 1,
        "{before_flush}"
    );
    let counts = output.counts();
    assert_eq!(
        output.close(Duration::from_secs(20), |_| stats_line),
        Closed {
            unwritten: 0,
            last_line_written: true,
            totals: OutputTotals::default(),
        }
    );
    let lines = memory.lines();
    assert_eq!(lines.len(), count + 2);
    assert_eq!(
        counts.get().0[TLS],
        count as u64 + 1,
        "the stats line is no event"
    );
    let starts: Vec<&str> = lines.iter().filter_map(|l| l["start"].as_str()).collect();
    assert_eq!(starts.len(), count + 1);
    assert!(
        starts.is_sorted_by(|a, b| a < b),
        "every event once, in order"
    );
    assert_eq!(lines[count + 1]["type"], "stats", "after every event");
}

/// Writes `n` events and flushes them as one block.
fn block_of(output: &mut Output, n: usize, first: u64) {
    for index in 0..n {
        output
            .write(&failed_tls((first + index as u64) * 1_000))
            .unwrap();
    }
    output.flush().unwrap();
    settle(output);
}

#[test]
fn a_full_disk_keeps_whole_lines_and_counts_what_it_refused() {
    let memory = Memory::default();
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    block_of(&mut output, 1, 0);
    let line_len = memory.get(|disk| disk.bytes.len());
    // Room for one line and a half: the write of four lines goes out in part, then fails.
    memory.set(|disk| disk.room = Some(line_len * 5 / 2));
    block_of(&mut output, 4, 1);
    assert_eq!(
        memory.get(|disk| disk.bytes.len()),
        line_len * 2,
        "cut back to the last whole line"
    );
    assert_eq!(memory.lines().len(), 2);
    assert_eq!(written(&output), 2);
    assert_eq!(dropped(&output, DropReason::WriteError), 3);
    assert_eq!(errors(&output, WriteFailure::NoSpace), 1);

    // Still full: refused whole, counted again.
    block_of(&mut output, 2, 5);
    assert_eq!(dropped(&output, DropReason::WriteError), 5);
    assert_eq!(errors(&output, WriteFailure::NoSpace), 2);

    // Space again: writing resumes, and every event is written or dropped, once.
    memory.set(|disk| disk.room = None);
    block_of(&mut output, 3, 7);
    let lines = memory.lines();
    assert_eq!(lines.len(), 5);
    assert_eq!(written(&output), 5);
    assert_eq!(
        written(&output) + dropped(&output, DropReason::WriteError),
        10
    );
    assert_eq!(dropped(&output, DropReason::OutputSlow), 0);
}

#[test]
fn a_broken_line_that_cannot_be_cut_stands_alone() {
    let memory = Memory::with(Disk {
        pipe: true,
        ..Disk::default()
    });
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    block_of(&mut output, 1, 0);
    let line_len = memory.get(|disk| disk.bytes.len());
    memory.set(|disk| disk.room = Some(line_len * 5 / 2));
    block_of(&mut output, 2, 1);
    assert_eq!(written(&output), 2);
    assert_eq!(dropped(&output, DropReason::WriteError), 1);
    memory.set(|disk| disk.room = None);
    block_of(&mut output, 2, 3);
    let bytes = memory.get(|disk| disk.bytes.clone());
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[2].len(), line_len / 2, "the broken half line, alone");
    for (index, line) in lines.iter().enumerate().filter(|(index, _)| *index != 2) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["type"], "tls", "line {index}");
    }
    assert_eq!(written(&output), 4);
}

#[test]
fn an_output_that_ends_mid_line_gets_a_new_line_first() {
    let memory = Memory::with(Disk {
        bytes: b"{\"type\":\"conn".to_vec(),
        ..Disk::default()
    });
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    block_of(&mut output, 1, 0);
    let text = String::from_utf8(memory.get(|disk| disk.bytes.clone())).unwrap();
    let (broken, rest) = text.split_once('\n').unwrap();
    assert_eq!(broken, "{\"type\":\"conn");
    let event: serde_json::Value = serde_json::from_str(rest.trim_end()).unwrap();
    assert_eq!(event["type"], "tls");
}

#[test]
fn a_closed_pipe_is_counted_and_survived() {
    let memory = Memory::with(Disk {
        fail: Some(libc::EPIPE),
        pipe: true,
        ..Disk::default()
    });
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    for round in 0..5 {
        block_of(&mut output, 2, round * 2);
    }
    assert_eq!(errors(&output, WriteFailure::BrokenPipe), 5);
    assert_eq!(dropped(&output, DropReason::WriteError), 10);
    assert_eq!(written(&output), 0);
    let mut seen = None;
    let closed = output.close(Duration::from_secs(20), |totals| {
        seen = Some(totals);
        "{\"type\":\"stats\"}\n".to_owned()
    });
    assert!(
        !closed.last_line_written,
        "the stats line failed too, and said so, without holding up the stop"
    );
    assert_eq!(
        seen,
        Some(OutputTotals {
            events_dropped: 10,
            write_errors: 5
        }),
        "what the stats event says"
    );
    assert_eq!(closed.totals.write_errors, 6, "its own write failed too");
}

#[test]
fn a_stalled_reader_costs_counted_events_never_the_callers_time() {
    let memory = Memory::with(Disk {
        stalled: true,
        ..Disk::default()
    });
    // Room for a few blocks of one line each.
    let mut output = output(&memory, 1024);
    let events = 200;
    for index in 0..events {
        // Returns although nothing is written: the caller never waits for the writer.
        output.write(&failed_tls(index * 1_000)).unwrap();
        output.flush().unwrap();
    }
    let slow = dropped(&output, DropReason::OutputSlow);
    assert!(slow > 150, "most blocks dropped: {slow}");
    assert!(
        output.counts.queued_bytes.load(Ordering::Relaxed) <= 1024,
        "bounded"
    );
    assert_eq!(written(&output), 0);

    // The reader catches up: what was queued is written, nothing is counted twice.
    memory.set(|disk| disk.stalled = false);
    settle(&output);
    let lines = memory.lines();
    assert_eq!(lines.len() as u64, written(&output));
    assert_eq!(written(&output) + slow, events);
    let starts: Vec<&str> = lines.iter().filter_map(|l| l["start"].as_str()).collect();
    assert!(starts.is_sorted(), "in order: {starts:?}");
}

/// An output whose writer is stuck on the first of three blocks of two events.
fn stuck_on_three_blocks() -> (Memory, Output) {
    let memory = Memory::with(Disk {
        stalled: true,
        ..Disk::default()
    });
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    for round in 0..3 {
        block_of_unsettled(&mut output, 2, round * 2);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !output.queue.busy() {
        assert!(
            Instant::now() < deadline,
            "the writer takes the first block"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (memory, output)
}

#[test]
fn a_slow_reader_at_the_stop_still_gets_the_stats_which_count_what_it_missed() {
    let (memory, output) = stuck_on_three_blocks();
    let counts = output.counts();
    let closed = output.close(Duration::from_millis(50), |totals| {
        // The deadline has passed and the queue is dropped; the reader moves again.
        memory.set(|disk| disk.stalled = false);
        format!(
            "{{\"type\":\"stats\",\"output_events_dropped\":{}}}\n",
            totals.events_dropped
        )
    });
    assert_eq!(closed.unwritten, 4, "the two blocks still queued");
    assert!(closed.last_line_written);
    let lines = memory.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2]["type"], "stats", "after the block being written");
    assert_eq!(lines[2]["output_events_dropped"], 4);
    assert_eq!(counts.dropped()[DropReason::OutputSlow as usize][TLS], 4);
    assert_eq!(counts.get().0[TLS], 2);
    assert_eq!(counts.queued_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_stuck_reader_delays_the_stop_by_the_deadline_and_the_grace_only() {
    let (memory, output) = stuck_on_three_blocks();
    let closed = output.close(Duration::from_millis(50), |_| "{}\n".to_owned());
    assert_eq!(closed.unwritten, 4);
    assert!(!closed.last_line_written);
    assert_eq!(closed.totals.events_dropped, 4);
    memory.set(|disk| disk.stalled = false);
}

/// Like `block_of`, without waiting for the writer.
fn block_of_unsettled(output: &mut Output, n: usize, first: u64) {
    for index in 0..n {
        output
            .write(&failed_tls((first + index as u64) * 1_000))
            .unwrap();
    }
    output.flush().unwrap();
}

#[test]
fn reopen_requests_are_served_at_once_and_failures_counted() {
    let memory = Memory::default();
    let mut output = output(&memory, DEFAULT_QUEUE_BYTES);
    output.reopen_handle().request();
    let deadline = Instant::now() + Duration::from_secs(20);
    while memory.get(|disk| disk.reopened) == 0 {
        assert!(Instant::now() < deadline, "reopened while idle");
        std::thread::sleep(Duration::from_millis(5));
    }
    memory.set(|disk| disk.reopen_fails = true);
    output.reopen_handle().request();
    while errors(&output, WriteFailure::Reopen) == 0 {
        assert!(Instant::now() < deadline, "a failed reopen is counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Tried again before the next block, failing again; the block goes where it went.
    block_of(&mut output, 1, 0);
    assert_eq!(errors(&output, WriteFailure::Reopen), 2);
    assert_eq!(written(&output), 1, "written where it was");
    // And again before the next, and it works now.
    memory.set(|disk| disk.reopen_fails = false);
    block_of(&mut output, 1, 1);
    assert_eq!(memory.get(|disk| disk.reopened), 2);
    assert_eq!(errors(&output, WriteFailure::Reopen), 2);
    assert_eq!(memory.lines().len(), 2);
}
