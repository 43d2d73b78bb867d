//! The flush of deferred opens (`tcpobs_common::PendingList`): a raw tracepoint program that is
//! never attached. The daemon runs it with `BPF_PROG_TEST_RUN` (raw tracepoints since Linux
//! 5.10) on a CPU whose list has waited `OPEN_DEFER_NS` (a CPU where no connection has been
//! established since: a busy one takes its own entries out), and on every CPU when the reader
//! goes idle and when the daemon stops reading. Each run takes out a few entries, oldest first,
//! sending the open of every connection still deferred.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::record::flush_some;

/// Returns 0 if it took out what it could, 1 if the list was busy under another program or the
/// ring buffer full (the daemon runs it again).
#[raw_tracepoint]
pub fn flush_opens(_ctx: RawTracePointContext) -> i32 {
    i32::from(!flush_some())
}
