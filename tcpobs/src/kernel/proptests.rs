//! Property tests of what reads kernel data: the ring buffer decoder and the BTF reader (the
//! fuzz targets `ring_buffer` and `btf` drive the same code with libFuzzer).

use proptest::prelude::*;
use tcpobs_common::{
    BurstEvent, CloseEvent, DnsEvent, EventHeader, OpenEvent, ShortCloseEvent, StateEvent,
    TlsEvent, kind,
};

use crate::{
    fuzzing,
    kernel::{
        btf::Btf,
        decode::{DecodeError, KernelEvent},
    },
};

/// Every kind the decoder knows, with its event's size (a close has two: whole, and without
/// its timeline spans).
fn kinds() -> [(u32, usize); 8] {
    [
        (kind::OPEN, size_of::<OpenEvent>()),
        (kind::BURST, size_of::<BurstEvent>()),
        (kind::STATE, size_of::<StateEvent>()),
        (kind::CLOSE, size_of::<CloseEvent>()),
        (kind::CLOSE, size_of::<ShortCloseEvent>()),
        (kind::CONNECT, size_of::<OpenEvent>()),
        (kind::DNS, size_of::<DnsEvent>()),
        (kind::TLS, size_of::<TlsEvent>()),
    ]
}

/// `bytes` placed `shift` bytes past an 8-byte boundary, as the ring hands records out
/// (`shift` 0) or as a corrupt one might be.
fn placed(bytes: &[u8], shift: usize) -> (Vec<u64>, usize) {
    let mut words = vec![0u64; (bytes.len() + shift).div_ceil(8).max(1)];
    // SAFETY: `words` holds at least `shift + bytes.len()` bytes.
    let all =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    all[shift..shift + bytes.len()].copy_from_slice(bytes);
    (words, shift)
}

/// The fewest bytes an event of `kind` takes, if the kind is known.
fn smallest(kind: Option<u32>) -> Option<usize> {
    kinds()
        .iter()
        .filter(|(k, _)| Some(*k) == kind)
        .map(|(_, size)| *size)
        .min()
}

fn record(words: &[u64], shift: usize, len: usize) -> &[u8] {
    // SAFETY: `placed` made `words` at least `shift + len` bytes long.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>().add(shift), len) }
}

/// A record of the given kind: its header's kind set, every other byte arbitrary.
fn event_bytes() -> impl Strategy<Value = (u32, Vec<u8>)> {
    (0..kinds().len()).prop_flat_map(|index| {
        let (kind, size) = kinds()[index];
        proptest::collection::vec(any::<u8>(), size).prop_map(move |mut bytes| {
            bytes[..4].copy_from_slice(&kind.to_ne_bytes());
            (kind, bytes)
        })
    })
}

proptest! {
    /// Whatever the bytes, the decoder answers, and an event it hands out lies inside the
    /// record; it decodes exactly when the record is long enough, aligned and of a known kind.
    #[test]
    fn decode_never_reads_beyond_the_record(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        shift in 0usize..8,
    ) {
        let (words, shift) = placed(&bytes, shift);
        let record = record(&words, shift, bytes.len());
        let decoded = fuzzing::decode_checked(record);
        let header = size_of::<EventHeader>();
        let kind = (bytes.len() >= 4).then(|| u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        let need = smallest(kind);
        let expected = if bytes.len() < header {
            Err(DecodeError::Short(bytes.len()))
        } else if shift != 0 {
            Err(DecodeError::Misaligned)
        } else {
            match need {
                None => Err(DecodeError::UnknownKind(kind.unwrap())),
                Some(need) if bytes.len() < need => {
                    Err(DecodeError::Truncated { kind: kind.unwrap(), need, got: bytes.len() })
                }
                Some(_) => Ok(()),
            }
        };
        prop_assert_eq!(KernelEvent::try_from(record).map(|_| ()), expected);
        prop_assert_eq!(decoded.is_some(), need.is_some_and(|need| bytes.len() >= need) && shift == 0);
    }

    /// A well-formed record decodes to an event whose bytes are the record's, extra bytes
    /// after it ignored.
    #[test]
    fn a_whole_event_decodes_to_its_own_bytes(
        (kind, mut bytes) in event_bytes(),
        extra in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let size = bytes.len();
        bytes.extend(&extra);
        let (words, shift) = placed(&bytes, 0);
        let record = record(&words, shift, bytes.len());
        let event = fuzzing::decode_checked(record).expect("a whole event decodes");
        prop_assert_eq!(event.header().kind, kind);
        prop_assert_eq!(event.header() as *const EventHeader as *const u8, record.as_ptr());
        // One byte short: a smaller event of the kind (a whole close cut is a short one), or
        // too short for any.
        let cut = &record[..size - 1];
        let need = smallest(Some(kind)).expect("a known kind");
        if size > need {
            prop_assert!(fuzzing::decode_checked(cut).is_some());
        } else {
            prop_assert_eq!(
                KernelEvent::try_from(cut),
                Err(DecodeError::Truncated { kind, need, got: size - 1 })
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of records through decoder, tracker, metrics and outputs: no panic, and
    /// every JSON event parses (the `ring_buffer` fuzz target's input format).
    #[test]
    fn any_ring_buffer_traffic_is_survived(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        fuzzing::ring_buffer(&data);
    }
}

/// Words of one BTF type record: a kind the reader knows, a name among `int`, `s` and `m`
/// (offsets 1, 5, 7) or none, and members whose names, types and offsets are small numbers
/// more often than not, so that the records refer to each other.
fn btf_record() -> impl Strategy<Value = Vec<u32>> {
    let word = || {
        prop_oneof![
            0u32..8,
            Just(1u32),
            Just(5),
            Just(7),
            0u32..64,
            any::<u32>()
        ]
    };
    let kinds = prop_oneof![1u32..=19, Just(4), Just(5), Just(8), Just(10)];
    (
        kinds,
        0u32..4,
        any::<bool>(),
        prop_oneof![Just(0u32), Just(1), Just(5), Just(7)],
    )
        .prop_flat_map(move |(kind, vlen, kind_flag, name)| {
            let trailer = match kind {
                1 | 14 | 17 => 1,
                3 => 3,
                4 | 5 | 15 | 19 => 3 * vlen,
                6 | 13 => 2 * vlen,
                _ => 0,
            } as usize;
            (proptest::collection::vec(word(), 1 + trailer)).prop_map(move |rest| {
                let info = (kind << 24) | vlen | (u32::from(kind_flag) << 31);
                let mut words = vec![name, info];
                words.extend(rest);
                words
            })
        })
}

fn btf_blob(records: &[Vec<u32>]) -> Vec<u8> {
    let types: Vec<u8> = records
        .iter()
        .flatten()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let strings = b"\0int\0s\0m\0";
    let mut blob = vec![0x9f, 0xeb, 1, 0];
    for word in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(strings);
    blob
}

proptest! {
    /// Arbitrary bytes are refused or read, never a panic.
    #[test]
    fn any_bytes_are_refused_or_read_as_btf(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::btf(&data);
    }

    /// Blobs of well-formed records that refer to each other any which way (loops, arrays of
    /// themselves, members past 4 GiB): every lookup answers, within a bounded walk.
    #[test]
    fn any_graph_of_types_is_searched_without_panic(
        records in proptest::collection::vec(btf_record(), 1..12),
    ) {
        let blob = btf_blob(&records);
        let btf = Btf::parse(&blob).expect("well-formed records parse");
        for (ty, member) in [("s", "m"), ("s", "m.m"), ("m", "s"), ("s", ""), ("int", "m")] {
            if let Ok(found) = btf.member(ty, member) {
                prop_assert!(u64::from(found.offset) * 8 <= u64::from(u32::MAX));
            }
        }
        fuzzing::btf(&blob);
    }
}
