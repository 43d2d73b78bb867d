//! Ring buffer records to typed events.

use tcpobs_common::{
    BurstEvent, CloseEvent, DnsEvent, EventHeader, OpenEvent, ShortCloseEvent, StateEvent,
    TlsEvent, kind,
};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("ring buffer record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("event kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u32, need: usize, got: usize },
    #[error("ring buffer record not aligned for its event type")]
    Misaligned,
}

/// One event from the kernel programs, read in place in the ring buffer (no copy: a close
/// event is 240 bytes, and the daemon reads hundreds of thousands of events a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelEvent<'a> {
    /// A connecting client retransmitted its SYN.
    Connect(&'a OpenEvent),
    Open(&'a OpenEvent),
    Burst(&'a BurstEvent),
    State(&'a StateEvent),
    Close(&'a CloseEvent),
    /// A close whose record kept no timeline span, sent without the spans (kind `CLOSE`, told
    /// apart by its length); [`ShortCloseEvent::widen`] makes it whole.
    ShortClose(&'a ShortCloseEvent),
    /// A `getaddrinfo` call returned.
    Dns(&'a DnsEvent),
    /// A TLS handshake call returned, or an unfinished handshake was freed.
    Tls(&'a TlsEvent),
}

/// Names of the event kinds, indexed by `kind - 1` (for per-kind counters).
pub(crate) const KIND_NAMES: [&str; 7] =
    ["open", "burst", "state", "close", "connect", "dns", "tls"];

impl KernelEvent<'_> {
    pub(crate) fn header(&self) -> &EventHeader {
        match self {
            Self::Connect(e) | Self::Open(e) => &e.hdr,
            Self::Burst(e) => &e.hdr,
            Self::State(e) => &e.hdr,
            Self::Close(e) => &e.hdr,
            Self::ShortClose(e) => &e.hdr,
            Self::Dns(e) => &e.hdr,
            Self::Tls(e) => &e.hdr,
        }
    }

    /// Index into [`KIND_NAMES`].
    pub(crate) fn kind_index(&self) -> usize {
        self.header().kind as usize - 1
    }
}

/// An event owned rather than borrowed from the ring buffer, for tests that script the
/// kernel side.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum OwnedEvent {
    Connect(OpenEvent),
    Open(OpenEvent),
    Burst(BurstEvent),
    State(StateEvent),
    Close(CloseEvent),
    ShortClose(ShortCloseEvent),
    Dns(DnsEvent),
    Tls(TlsEvent),
}

#[cfg(test)]
impl OwnedEvent {
    pub(crate) fn event(&self) -> KernelEvent<'_> {
        match self {
            Self::Connect(e) => KernelEvent::Connect(e),
            Self::Open(e) => KernelEvent::Open(e),
            Self::Burst(e) => KernelEvent::Burst(e),
            Self::State(e) => KernelEvent::State(e),
            Self::Close(e) => KernelEvent::Close(e),
            Self::ShortClose(e) => KernelEvent::ShortClose(e),
            Self::Dns(e) => KernelEvent::Dns(e),
            Self::Tls(e) => KernelEvent::Tls(e),
        }
    }
}

/// `bytes` seen as a `T`, if long enough and aligned. Ring buffer records are 8-byte aligned,
/// as every event type needs.
fn view<T>(bytes: &[u8]) -> Option<Result<&T, DecodeError>> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    let ptr = bytes.as_ptr().cast::<T>();
    if !ptr.is_aligned() {
        return Some(Err(DecodeError::Misaligned));
    }
    // SAFETY: the bytes are long enough and aligned for a `T`, borrowed for the returned
    // lifetime, and every `T` used here is plain data for which any bytes are a valid value
    // (the layout contract of `tcpobs_common`).
    Some(Ok(unsafe { &*ptr }))
}

fn decode<T>(kind: u32, bytes: &[u8]) -> Result<&T, DecodeError> {
    view(bytes).unwrap_or(Err(DecodeError::Truncated {
        kind,
        need: size_of::<T>(),
        got: bytes.len(),
    }))
}

impl<'a> TryFrom<&'a [u8]> for KernelEvent<'a> {
    type Error = DecodeError;

    fn try_from(bytes: &'a [u8]) -> Result<Self, Self::Error> {
        let header: &EventHeader = view(bytes).unwrap_or(Err(DecodeError::Short(bytes.len())))?;
        Ok(match header.kind {
            kind::OPEN => Self::Open(decode(header.kind, bytes)?),
            kind::BURST => Self::Burst(decode(header.kind, bytes)?),
            kind::STATE => Self::State(decode(header.kind, bytes)?),
            kind::CLOSE if bytes.len() >= size_of::<CloseEvent>() => {
                Self::Close(decode(header.kind, bytes)?)
            }
            kind::CLOSE => Self::ShortClose(decode(header.kind, bytes)?),
            kind::CONNECT => Self::Connect(decode(header.kind, bytes)?),
            kind::DNS => Self::Dns(decode(header.kind, bytes)?),
            kind::TLS => Self::Tls(decode(header.kind, bytes)?),
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
            Ok(KernelEvent::State(&state))
        );
        let close = CloseEvent {
            hdr: hdr(kind::CLOSE),
            record: SockRecord {
                bytes_sent: 99,
                ..Default::default()
            },
        };
        let decoded = KernelEvent::try_from(bytes_of(&close)).unwrap();
        assert_eq!(decoded, KernelEvent::Close(&close));
        assert_eq!(KIND_NAMES[decoded.kind_index()], "close");
        // The same close without its timeline spans: told apart by length, made whole.
        let short = ShortCloseEvent::of(&close);
        let decoded = KernelEvent::try_from(bytes_of(&short)).unwrap();
        assert_eq!(decoded, KernelEvent::ShortClose(&short));
        assert_eq!(KIND_NAMES[decoded.kind_index()], "close");
        let KernelEvent::ShortClose(decoded) = decoded else {
            unreachable!()
        };
        assert_eq!(decoded.widen(), close);
        assert_eq!(
            KernelEvent::try_from(&bytes_of(&close)[..300]),
            Err(DecodeError::Truncated {
                kind: kind::CLOSE,
                need: size_of::<ShortCloseEvent>(),
                got: 300
            })
        );
        let mut dns = DnsEvent {
            hdr: hdr(kind::DNS),
            result: -2,
            host_len: 9,
            ..Default::default()
        };
        dns.host[..9].copy_from_slice(b"localhost");
        let decoded = KernelEvent::try_from(bytes_of(&dns)).unwrap();
        assert_eq!(decoded, KernelEvent::Dns(&dns));
        assert_eq!(KIND_NAMES[decoded.kind_index()], "dns");
        let tls = TlsEvent {
            hdr: hdr(kind::TLS),
            ret: 1,
            ..Default::default()
        };
        let decoded = KernelEvent::try_from(bytes_of(&tls)).unwrap();
        assert_eq!(decoded, KernelEvent::Tls(&tls));
        assert_eq!(KIND_NAMES[decoded.kind_index()], "tls");
        assert_eq!(
            KernelEvent::try_from(&bytes_of(&dns)[..100]),
            Err(DecodeError::Truncated {
                kind: kind::DNS,
                need: 408,
                got: 100
            })
        );
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
                need: 112,
                got: 40
            })
        );
        // A record one byte off its alignment is refused, not read.
        let mut shifted = vec![0u64; size_of::<OpenEvent>() / 8 + 1];
        // SAFETY: the u64 buffer is at least one event long past its first byte.
        let shifted: &mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(shifted.as_mut_ptr().cast::<u8>(), shifted.len() * 8)
        };
        shifted[1..1 + size_of::<OpenEvent>()].copy_from_slice(bytes_of(&open));
        assert_eq!(
            KernelEvent::try_from(&shifted[1..]),
            Err(DecodeError::Misaligned)
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
