//! The ring buffer's connection events (the protocol is in the crate's docs): each starts
//! with an [`EventHeader`].

use crate::{Burst, Endpoints, ExchangeSummary, SockRecord, Task, kind, tcp_state};

/// Header of every ring buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`](crate::kind).
    pub kind: u32,
    pub _pad: u32,
    /// When the event happened (`CLOCK_MONOTONIC` ns).
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`; with `start_ns`, the connection's identity.
    pub sock: u64,
    /// When the kernel started tracking this socket (`CLOCK_MONOTONIC` ns): the SYN for
    /// connections seen from the start, the first sighting for partial ones.
    pub start_ns: u64,
}

/// A connection was established, or an already-open socket was seen for the first time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenEvent {
    pub hdr: EventHeader,
    pub endpoints: Endpoints,
    pub task: Task,
    /// One of [`role`](crate::role).
    pub role: u8,
    /// `FLAG_*` bits ([`FLAG_PARTIAL`](crate::FLAG_PARTIAL) for a socket already open when first
    /// seen).
    pub flags: u8,
    /// The socket's TCP state ([`tcp_state`](crate::tcp_state)).
    pub state: u8,
    /// 1 for the open of a connection whose open was deferred ([`PendingOpens`]), sent late:
    /// its close may already have stood for it, and `hdr.ts_ns` is when it was established.
    pub deferred: u8,
    pub _pad: [u8; 4],
}

/// The counters of one CPU's deferred opens (the one entry of the per-CPU array
/// [`names::PENDING_LISTS_MAP`](crate::names::PENDING_LISTS_MAP)); the entries are in
/// [`PendingOpens`], a ring of [`PENDING_OPEN_SLOTS`], oldest first: `entries[head %
/// PENDING_OPEN_SLOTS]` is the oldest. Apart, so that the daemon's look at every CPU's list
/// copies 16 bytes a CPU, not the entries.
///
/// When a connection is established the state program notes it here instead of sending its
/// open event ([`SockRecord::open_deferred`]). An entry is taken out when the list is full or
/// the entry is [`OPEN_DEFER_NS`] old (by the CPU's next establishment, at most two each: the
/// work is constant, with no loop for the verifier to walk), or when the daemon runs the
/// `flush_opens` program on the CPU for a list that has waited that long, or has to be emptied.
/// Taking an entry out sends the open of its connection if it is still deferred (kind
/// [`kind::OPEN`](crate::kind::OPEN) with [`OpenEvent::deferred`], then its `CLOSE_WAIT` state
/// event if it is in that state). Any other event about a deferred connection (an exchange, a
/// TLS handshake, `FIN_WAIT2`) sends its open first. A connection that closes while deferred
/// needs no open event: its close carries the mark and the daemon makes the open from the
/// record. Churned connections, most of which close before their entry is taken out, then cost
/// the kernel one ring buffer event a socket instead of two or three.
///
/// Only programs on the list's own CPU touch it; `busy` keeps a program that interrupts another
/// mid-update (a softirq over a process-context run, or the flush program's run on the CPU) off
/// it: that one sends its open at once instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingList {
    pub busy: u32,
    pub _pad: u32,
    /// Entries taken out so far (counts on, wrapping).
    pub head: u32,
    /// Entries put in so far (counts on, wrapping); `tail - head` are waiting.
    pub tail: u32,
}

impl PendingList {
    /// Entries waiting.
    pub fn waiting(&self) -> u32 {
        self.tail.wrapping_sub(self.head)
    }
}

/// The entries of one CPU's deferred opens (the one entry of the per-CPU array
/// [`names::PENDING_OPENS_MAP`](crate::names::PENDING_OPENS_MAP)); [`PendingList`] counts them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingOpens {
    pub entries: [PendingOpen; PENDING_OPEN_SLOTS],
}

impl PendingOpens {
    /// The oldest entry waiting on `list`, if any.
    pub fn oldest(&self, list: &PendingList) -> Option<&PendingOpen> {
        (list.waiting() != 0).then(|| &self.entries[list.head as usize % PENDING_OPEN_SLOTS])
    }

    /// The slot the next entry of `list` goes to.
    pub fn next_mut(&mut self, list: &PendingList) -> &mut PendingOpen {
        &mut self.entries[list.tail as usize % PENDING_OPEN_SLOTS]
    }
}

/// Entries in a CPU's [`PendingOpens`] (a power of two: the counters of [`PendingList`] wrap).
pub const PENDING_OPEN_SLOTS: usize = 256;
const _: () = assert!(PENDING_OPEN_SLOTS.is_power_of_two());

/// Entries one run of the `flush_opens` program takes out (the verifier walks each run's loop
/// whole: a short one keeps the program quick to load on old kernels).
pub const OPENS_PER_FLUSH: usize = 16;

/// How long an open may stay deferred, about: an entry this old is taken out by the CPU's next
/// establishment, or by the daemon's next look (every [`OPEN_DEFER_NS`]).
pub const OPEN_DEFER_NS: u64 = 100_000_000;

/// A connection whose open is deferred: its socket and generation, and when it was noted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingOpen {
    pub sock: u64,
    pub start_ns: u64,
    pub deferred_ns: u64,
}

/// An exchange ended: the next request began at `hdr.ts_ns` (the end of the exchange's idle
/// gap). Sent only while the daemon asks for every exchange (see the crate's docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BurstEvent {
    pub hdr: EventHeader,
    /// The request burst ([`direction::NONE`](crate::direction::NONE) for a response without a
    /// request: a server that speaks first).
    pub request: Burst,
    /// The response burst.
    pub response: Burst,
    /// Who the socket belongs to so far (a server socket learns it at its first recv).
    pub task: Task,
    /// The exchange's number on its connection, from 1.
    pub seq: u32,
    /// 1 if the kernel also folded the exchange into its histograms (the daemon must not
    /// count it again).
    pub folded: u8,
    pub _pad: [u8; 3],
}

/// A teardown state transition.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateEvent {
    pub hdr: EventHeader,
    /// Previous state ([`tcp_state`](crate::tcp_state)).
    pub old_state: u8,
    /// New state ([`tcp_state`](crate::tcp_state)).
    pub new_state: u8,
    pub _pad: [u8; 6],
}

/// The socket is done; `record` is its final record, including the burst in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub hdr: EventHeader,
    pub record: SockRecord,
}

/// The bytes of a [`SockRecord`] a [`ShortCloseEvent`] carries: everything before the
/// exchange summary's timeline spans.
pub const SHORT_RECORD_BYTES: usize =
    core::mem::offset_of!(SockRecord, exchanges) + core::mem::offset_of!(ExchangeSummary, spans);

/// A close (kind [`kind::CLOSE`](crate::kind::CLOSE)) whose record kept no timeline span
/// (`exchanges.kept == 0`: no exchange ended before the last one, as on every connection that makes
/// one request, or the first could not be packed): the record without its spans and padding. 352
/// bytes of the ring buffer instead of 488, two cache lines fewer to write at each such close; the
/// daemon tells the two apart by length and reads this one as a [`CloseEvent`] with those bytes
/// zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortCloseEvent {
    pub hdr: EventHeader,
    pub record: [u8; SHORT_RECORD_BYTES],
}

impl OpenEvent {
    /// The open a close stands for, when its connection's open was deferred and never sent
    /// ([`SockRecord::open_deferred`]): what the deferred open event would have said, as of
    /// the close (the owner may be better known by then), but for the flags, which by then
    /// also say how it ended (an open of a deferred connection is never partial, the one flag
    /// the daemon reads of an open).
    pub fn stood_for_by(close: &CloseEvent) -> Self {
        let rec = &close.record;
        Self {
            hdr: EventHeader {
                kind: kind::OPEN,
                _pad: 0,
                ts_ns: rec.established_ns,
                sock: close.hdr.sock,
                start_ns: close.hdr.start_ns,
            },
            endpoints: rec.endpoints,
            task: rec.task,
            role: rec.role,
            flags: 0,
            state: tcp_state::ESTABLISHED,
            deferred: 1,
            _pad: [0; 4],
        }
    }
}

impl ShortCloseEvent {
    /// The short form of `close`, as the kernel sends it (its record's first
    /// `SHORT_RECORD_BYTES`), for the daemon's tests.
    #[cfg(any(test, feature = "user"))]
    pub fn of(close: &CloseEvent) -> Self {
        // SAFETY: the first bytes of a plain `#[repr(C)]` value with no implicit padding (the
        // layout tests), in bounds.
        let bytes = unsafe {
            core::slice::from_raw_parts((&raw const close.record).cast::<u8>(), SHORT_RECORD_BYTES)
        };
        let mut short = Self {
            hdr: close.hdr,
            record: [0; SHORT_RECORD_BYTES],
        };
        short.record.copy_from_slice(bytes);
        short
    }

    /// The whole close this stands for: the record's left-out bytes zero, and no span kept
    /// (whatever the copy says: a data hook on another CPU may have folded an exchange between
    /// the kernel's check and its copy).
    pub fn widen(&self) -> CloseEvent {
        let mut close = CloseEvent {
            hdr: self.hdr,
            ..CloseEvent::default()
        };
        // SAFETY: `SockRecord` is plain `#[repr(C)]` data with no implicit padding (the layout
        // tests), every byte pattern a valid value; the first `SHORT_RECORD_BYTES` of it are
        // overwritten with as many bytes, in bounds of both.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.record.as_ptr(),
                (&raw mut close.record).cast::<u8>(),
                SHORT_RECORD_BYTES,
            );
        }
        close.record.exchanges.kept = 0;
        close
    }
}
