//! Ring buffer records to typed events.

use tcpobs_common::{BurstEvent, CloseEvent, EventHeader, OpenEvent, StateEvent, kind, read_pod};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("event kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u32, need: usize, got: usize },
}

/// One event from the kernel programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A client entered `SYN_SENT`.
    Connect(OpenEvent),
    Open(OpenEvent),
    Burst(BurstEvent),
    State(StateEvent),
    Close(CloseEvent),
}

/// Names of the event kinds, indexed by `kind - 1` (for per-kind counters).
pub const KIND_NAMES: [&str; 5] = ["open", "burst", "state", "close", "connect"];

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Connect(e) | Self::Open(e) => &e.hdr,
            Self::Burst(e) => &e.hdr,
            Self::State(e) => &e.hdr,
            Self::Close(e) => &e.hdr,
        }
    }

    /// Index into [`KIND_NAMES`].
    pub fn kind_index(&self) -> usize {
        self.header().kind as usize - 1
    }
}

fn decode<T: Copy>(kind: u32, bytes: &[u8]) -> Result<T, DecodeError> {
    read_pod(bytes).ok_or(DecodeError::Truncated {
        kind,
        need: size_of::<T>(),
        got: bytes.len(),
    })
}

impl TryFrom<&[u8]> for KernelEvent {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let header: EventHeader = read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
        Ok(match header.kind {
            kind::OPEN => Self::Open(decode(header.kind, bytes)?),
            kind::BURST => Self::Burst(decode(header.kind, bytes)?),
            kind::STATE => Self::State(decode(header.kind, bytes)?),
            kind::CLOSE => Self::Close(decode(header.kind, bytes)?),
            kind::CONNECT => Self::Connect(decode(header.kind, bytes)?),
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use tcpobs_common::{SockRecord, tcp_state};

    use super::*;

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: used only with the Pod event types, which have no implicit padding.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn decodes_each_kind() {
        let hdr = |kind| EventHeader {
            kind,
            ts_ns: 10,
            sock: 0xffff_0001,
            start_ns: 5,
            ..Default::default()
        };
        let state = StateEvent {
            hdr: hdr(kind::STATE),
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE_WAIT,
            _pad: [0; 6],
        };
        assert_eq!(
            KernelEvent::try_from(bytes_of(&state)),
            Ok(KernelEvent::State(state))
        );
        let close = CloseEvent {
            hdr: hdr(kind::CLOSE),
            record: SockRecord {
                bytes_sent: 99,
                ..Default::default()
            },
        };
        let decoded = KernelEvent::try_from(bytes_of(&close)).unwrap();
        assert_eq!(decoded, KernelEvent::Close(close));
        assert_eq!(KIND_NAMES[decoded.kind_index()], "close");
    }

    #[test]
    fn rejects_short_truncated_and_unknown_records() {
        assert_eq!(
            KernelEvent::try_from(&[0u8; 8][..]),
            Err(DecodeError::Short(8))
        );
        let open = OpenEvent {
            hdr: EventHeader {
                kind: kind::OPEN,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            KernelEvent::try_from(&bytes_of(&open)[..40]),
            Err(DecodeError::Truncated {
                kind: kind::OPEN,
                need: 104,
                got: 40
            })
        );
        let unknown = EventHeader {
            kind: 77,
            ..Default::default()
        };
        assert_eq!(
            KernelEvent::try_from(bytes_of(&unknown)),
            Err(DecodeError::UnknownKind(77))
        );
    }
}
