//! The ring buffer's connection events (the protocol is in the crate's docs): each starts
//! with an [`EventHeader`].

use crate::{Burst, Endpoints, ExchangeSummary, SockRecord, Task};

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
    pub _pad: [u8; 5],
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
    pub _pad: u32,
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
