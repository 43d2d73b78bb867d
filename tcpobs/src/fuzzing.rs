//! Entry points for the fuzz targets (`fuzz/`, run by `cargo xtask fuzz`). Each takes
//! arbitrary bytes, drives one parser the way the daemon does, and checks what must hold
//! whatever the input: no panic, no read past a ring buffer record, valid JSON out, round
//! trips where a printer exists. The proptest suites next to each parser check the same
//! properties on stable, in the regular test suite.
//!
//! Not an API: hidden from the documentation, and free to change with the fuzz targets. It
//! exists so that the parsers can stay `pub(crate)`.

use std::{
    collections::HashMap,
    ffi::OsString,
    io,
    os::unix::ffi::OsStringExt as _,
    path::PathBuf,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use axum::{extract::Query, http::Uri};
use chrono::{DateTime, Local};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tcpobs_common::{
    BurstEvent, CloseEvent, DnsEvent, EventHeader, OpenEvent, ShortCloseEvent, SockRecord,
    StateEvent, TlsEvent, kind,
};

use crate::{
    clock::Clock,
    config::{
        Sources,
        control::{Control, check_log_level},
        live::{EventSelection, Filters, LiveSettings, Thresholds},
    },
    export::{
        http::{ConnectionFilter, MAX_LIMIT},
        metrics::Metrics,
        output::{Format, Output, Sink, justniffer::LineFormat, writer::Destination},
    },
    kernel::{
        btf::Btf,
        decode::{KIND_NAMES, KernelEvent},
        loader::sock_offsets,
    },
    model::{Addrs, CloseOriginator, ExchangeClass, ExchangeRecord, Record, Role},
    sync::lock,
    tracker::{KernelView, StallViews, Tracker},
};

/// A fuzz target: its name (as in `fuzz/`) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 7] = [
    ("ring_buffer", ring_buffer),
    ("btf", btf),
    ("config_file", config_file),
    ("flags", flags),
    ("line_format", line_format),
    ("put_config", put_config),
    ("connections_query", connections_query),
];

/// Reads a fuzz input front to back; past its end, every read is zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// Fills `out` from the input (zeros once it runs out).
    fn fill(&mut self, out: &mut [u8]) {
        let n = out.len().min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        out[n..].fill(0);
        self.0 = &self.0[n..];
    }
}

/// A ring buffer record in its own 8-byte-aligned buffer, as the ring hands them out,
/// optionally shifted off its alignment.
struct RingRecord {
    words: Vec<u64>,
    shift: usize,
    len: usize,
}

impl RingRecord {
    fn new(bytes: &[u8], shift: usize) -> Self {
        let mut record = Self {
            words: vec![0; (bytes.len() + shift).div_ceil(8)],
            shift,
            len: bytes.len(),
        };
        record.bytes_mut().copy_from_slice(bytes);
        record
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `shift + len` initialised bytes.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>().add(self.shift), self.len)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `self` is borrowed mutably.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr().cast::<u8>().add(self.shift),
                self.len,
            )
        }
    }
}

/// The bytes of a plain-data event type.
fn bytes_of<T>(value: &T) -> &[u8] {
    // SAFETY: used only with the `#[repr(C)]` types of tcpobs-common, which have their
    // padding spelled out as fields: every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Size of the event of `kind`.
fn event_size(kind: u32) -> usize {
    match kind {
        kind::OPEN | kind::CONNECT => size_of::<OpenEvent>(),
        kind::BURST => size_of::<BurstEvent>(),
        kind::STATE => size_of::<StateEvent>(),
        kind::CLOSE => size_of::<CloseEvent>(),
        kind::DNS => size_of::<DnsEvent>(),
        kind::TLS => size_of::<TlsEvent>(),
        _ => size_of::<EventHeader>(),
    }
}

/// Decodes `record` as the reader does, and checks that the event lies inside the record:
/// the decoder hands out references into the ring, so an event that reached past the record
/// would read the next one, or past the ring's end.
pub(crate) fn decode_checked(record: &[u8]) -> Option<KernelEvent<'_>> {
    let event = KernelEvent::try_from(record).ok()?;
    let (start, size) = match event {
        KernelEvent::Connect(e) | KernelEvent::Open(e) => (e as *const _ as usize, size_of_val(e)),
        KernelEvent::Burst(e) => (e as *const _ as usize, size_of_val(e)),
        KernelEvent::State(e) => (e as *const _ as usize, size_of_val(e)),
        KernelEvent::Close(e) => (e as *const _ as usize, size_of_val(e)),
        KernelEvent::ShortClose(e) => (e as *const _ as usize, size_of_val(e)),
        KernelEvent::Dns(e) => (e as *const _ as usize, size_of_val(e)),
        KernelEvent::Tls(e) => (e as *const _ as usize, size_of_val(e)),
    };
    let range = record.as_ptr_range();
    assert!(
        start == range.start as usize && start + size <= range.end as usize,
        "a decoded event of {size} bytes reaches past its record of {} bytes",
        record.len()
    );
    assert!(event.kind_index() < KIND_NAMES.len());
    Some(event)
}

/// Room for the lines of one run: nothing is dropped for a full queue.
const QUEUE_BYTES: usize = 64 << 20;

/// A destination whose bytes can be read back (the outputs' writer threads own theirs).
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Destination for Shared {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn unwrite(&mut self, len: u64) -> io::Result<()> {
        let mut bytes = lock(&self.0);
        let keep = bytes
            .len()
            .saturating_sub(usize::try_from(len).unwrap_or(usize::MAX));
        bytes.truncate(keep);
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn ends_mid_line(&mut self) -> bool {
        lock(&self.0).last().is_some_and(|&b| b != b'\n')
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

/// Sockets and generations the events are about: a small set, so that events find each
/// other's connections.
const SOCKS: [u64; 4] = [
    0xffff_8880_0100_0000,
    0xffff_8880_0200_0000,
    0xffff_8880_0300_0000,
    0,
];
const STARTS: [u64; 4] = [1_000, 2_000_000, 500_000_000, 900_000_000];

/// Ring buffer records through the decoder, the tracker, the metrics and both output
/// formats, as the daemon's loop handles them.
///
/// The input is a list of operations. Each starts with an op byte and a time byte (the clock
/// mostly moves forward, sometimes back: events from different CPUs arrive out of order):
/// - op & 7 in 1..=7: an event of that kind, its bytes from the input, with its header's
///   socket (op bits 4-5) and generation (bits 6-7) taken from small sets so that events
///   meet; op bit 3 cuts the record to the length in the next byte.
/// - op & 7 == 0: a raw record (length byte, shift byte, bytes) as the kernel might send
///   anything; with op bit 3, a hang-detection sweep instead.
///
/// Each JSON line written must parse as JSON. (The exposition is not encoded: at a few
/// milliseconds, it would slow the target a hundredfold.)
pub fn ring_buffer(data: &[u8]) {
    let mut input = Input(data);
    let mut tracker = Tracker::default();
    let mut records: Vec<Record> = Vec::new();
    // One set of metrics for the process: creating the families costs more than a run. With
    // no optional labels, what they hold does not change how a record is observed.
    static METRICS: LazyLock<Metrics> =
        LazyLock::new(|| Metrics::new(&mut Registry::default(), &[], 8));
    let metrics = &*METRICS;
    let live = LiveSettings {
        events: EventSelection::Exchanges,
        sample: None,
        thresholds: Thresholds::default(),
        log_level: "info".to_owned(),
        filters: Filters::default(),
    };
    let json = Shared::default();
    let mut outputs = [
        Output::new(
            Box::new(json.clone()),
            Format::Json,
            Clock::new(),
            QUEUE_BYTES,
        ),
        Output::new(
            Box::new(Shared::default()),
            Format::Justniffer(LineFormat::default()),
            Clock::new(),
            QUEUE_BYTES,
        ),
    ]
    .map(|output| output.expect("the output's writer thread starts"));
    for output in &mut outputs {
        output.configure(&live);
    }
    let stuck = live.thresholds.stuck();
    let mut ts: u64 = 1_000_000_000;
    while let Some(op) = input.byte() {
        let step = input.byte().unwrap_or(0);
        ts = if step & 0x80 == 0 {
            ts.saturating_add(u64::from(step) << 16)
        } else {
            ts.saturating_sub(u64::from(step & 0x7f) << 10)
        };
        let kind = u32::from(op & 7);
        let record = match (kind, op & 8 != 0) {
            (0, true) => {
                let view = input.byte().map(|b| KernelView {
                    start_ns: STARTS[usize::from(b & 3)],
                    last_data_ns: ts.saturating_sub(u64::from(b) << 20),
                    bytes: u64::from(b >> 4),
                    state: b >> 2 & 15,
                    state_since_ns: 0,
                    process: None,
                });
                tracker.sweep_with(ts, &stuck, |_| view, &StallViews::default(), &mut records);
                None
            }
            (0, false) => {
                let len = usize::from(input.byte().unwrap_or(0)) * 2;
                let shift = usize::from(input.byte().unwrap_or(0) & 7);
                let mut bytes = vec![0; len];
                input.fill(&mut bytes);
                Some(RingRecord::new(&bytes, shift))
            }
            (kind, cut) => {
                let mut bytes = vec![0; event_size(kind)];
                input.fill(&mut bytes);
                let header = EventHeader {
                    kind,
                    _pad: 0,
                    ts_ns: ts,
                    sock: SOCKS[usize::from(op >> 4 & 3)],
                    start_ns: STARTS[usize::from(op >> 6)],
                };
                bytes[..size_of::<EventHeader>()].copy_from_slice(bytes_of(&header));
                if cut {
                    let at = usize::from(input.byte().unwrap_or(0));
                    // A close cut at 128 or more is a short close (its record without the
                    // timeline spans), as the kernel sends for a one-request connection.
                    let at = if kind == kind::CLOSE && at >= 128 {
                        size_of::<ShortCloseEvent>()
                    } else {
                        at
                    };
                    bytes.truncate(at);
                }
                Some(RingRecord::new(&bytes, 0))
            }
        };
        if let Some(event) = record.as_ref().and_then(|r| decode_checked(r.bytes())) {
            tracker.handle(&event, &mut records);
        }
        write_out(&mut records, metrics, &mut outputs, ts);
    }
    // Stopping: the kernel's record of each socket, made of the input's first bytes.
    let mut bytes = [0u8; size_of::<SockRecord>()];
    Input(data).fill(&mut bytes);
    // SAFETY: `SockRecord` is plain data (integers and byte arrays), for which any bytes are
    // a valid value; `read_unaligned` needs no alignment.
    let pending: SockRecord = unsafe { bytes.as_ptr().cast::<SockRecord>().read_unaligned() };
    tracker.flush(
        ts,
        |_| {
            Some(SockRecord {
                start_ns: STARTS[0],
                ..pending
            })
        },
        &mut records,
    );
    write_out(&mut records, metrics, &mut outputs, ts);
    // Every line written, the last one a stats line of the output's own totals.
    for output in outputs {
        let closed = output.close(Duration::from_secs(60), |_| {
            "{\"type\":\"stats\"}\n".to_owned()
        });
        assert_eq!(closed.unwritten, 0, "events the writer did not take");
    }
    for line in lock(&json.0).split_inclusive(|&b| b == b'\n') {
        assert_eq!(
            line.last(),
            Some(&b'\n'),
            "a JSON event without its newline"
        );
        if let Err(err) = serde_json::from_slice::<Value>(line) {
            panic!(
                "invalid JSON event ({err}): {}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

fn write_out(records: &mut Vec<Record>, metrics: &Metrics, outputs: &mut [Output], now: u64) {
    for record in records.drain(..) {
        metrics.observe(&record);
        metrics.observe_delay(&record, now);
        for output in outputs.iter_mut() {
            output.write(&record).expect("writing to memory");
        }
    }
    for output in outputs.iter_mut() {
        output.flush().expect("writing to memory");
    }
}

/// A BTF blob through the reader: parsed, then every lookup the loader makes, and lookups by
/// the blob's own names (so that the fuzzer can reach the member search).
pub fn btf(data: &[u8]) {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    let _ = sock_offsets(&btf);
    let _ = btf.func_params("tcp_sendmsg");
    let names = btf_names(data, 8);
    for ty in &names {
        let _ = btf.func_params(ty);
        for member in &names {
            let _ = btf.member(ty, member);
            let _ = btf.member(ty, &format!("{member}.{member}"));
        }
    }
}

/// Up to `limit` names from the blob's string section (the reader keeps its own private),
/// and the empty name, which anonymous members have.
fn btf_names(data: &[u8], limit: usize) -> Vec<String> {
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let strings = match (word(4), word(16), word(20)) {
        (Some(header), Some(offset), Some(len)) => header
            .checked_add(offset)
            .and_then(|start| data.get(start..start.checked_add(len)?)),
        _ => None,
    };
    let mut names = vec![String::new()];
    names.extend(
        strings
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .filter_map(|name| std::str::from_utf8(name).ok())
            .take(limit)
            .map(ToOwned::to_owned),
    );
    names
}

/// A path of our own for the config file target's input (one per thread: the property tests
/// run in parallel).
fn scratch_file() -> PathBuf {
    std::env::temp_dir().join(format!(
        "tcpobs-fuzz-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ))
}

/// A `--config` file, read as the daemon reads it (with no flags), through to the settings.
pub fn config_file(data: &[u8]) {
    let path = scratch_file();
    std::fs::write(&path, data).expect("writing the scratch config file");
    let loaded = Sources::new([
        OsString::from("tcpobs"),
        "--config".into(),
        path.clone().into_os_string(),
    ])
    .load();
    let _ = std::fs::remove_file(&path);
    if let Ok(settings) = loaded {
        settings_hold(&settings);
    }
}

/// A command line: the input split at NUL bytes into arguments, as the kernel passes them.
pub fn flags(data: &[u8]) {
    let args = std::iter::once(OsString::from("tcpobs")).chain(
        data.split(|&b| b == 0)
            .map(|arg| OsString::from_vec(arg.to_vec())),
    );
    if let Ok(settings) = Sources::new(args).load() {
        settings_hold(&settings);
    }
}

/// What valid settings promise: the live part validates and survives a JSON round trip.
fn settings_hold(settings: &crate::config::Settings) {
    settings
        .live
        .validate()
        .expect("accepted settings validate");
    live_round_trip(&settings.live);
    let _ = settings.statics();
}

/// The live settings, as `GET /config` shows them, patched onto the defaults, are the same
/// settings.
pub(crate) fn live_round_trip(live: &LiveSettings) {
    let shown = serde_json::to_value(live).expect("live settings serialise");
    let back = default_live()
        .patched(&shown, check_log_level)
        .unwrap_or_else(|err| panic!("GET /config's own settings refused ({err}): {shown}"));
    assert_eq!(
        &back, live,
        "the live settings change through JSON: {shown}"
    );
}

pub(crate) fn default_live() -> LiveSettings {
    LiveSettings {
        events: EventSelection::Connections,
        sample: None,
        thresholds: Thresholds::default(),
        log_level: "info".to_owned(),
        filters: Filters::default(),
    }
}

/// A justniffer line format (`-l`): parsed, printed back and parsed again to the same format,
/// and rendered.
pub fn line_format(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(format) = text.parse::<LineFormat>() else {
        return;
    };
    let printed = format.to_string();
    assert_eq!(
        printed.parse::<LineFormat>().as_ref(),
        Ok(&format),
        "{text:?} printed as {printed:?}"
    );
    let exchange = ExchangeRecord {
        conn_id: 1,
        role: Role::Server,
        addrs: Addrs::new(
            "[2001:db8::1]:8080".parse().expect("an address"),
            "192.0.2.1:51000".parse().expect("an address"),
        ),
        process: None,
        seq: 2,
        class: ExchangeClass::Last,
        start_ns: 0,
        connect_ns: None,
        idle_before_ns: Some(u64::MAX),
        request_ns: Some(0),
        response_begin_ns: Some(5_272_000),
        response_end_ns: Some(1_500),
        response_ns: Some(5_273_500),
        idle_after_ns: Some(1_417_703_000),
        session_ns: 7_151_756_999,
        request_bytes: 78,
        response_bytes: u64::MAX,
        close_originator: Some(CloseOriginator::Client),
        folded: false,
    };
    let mut line = String::new();
    format.write(&mut line, &exchange, DateTime::<Local>::default());
    assert_eq!(
        line.matches('\n').count(),
        printed.matches('\n').count() + 1
    );
}

/// A `PUT /config` body, as the handler takes it: a refused change changes nothing; an
/// accepted one is valid and shows as JSON that round-trips.
pub fn put_config(data: &[u8]) {
    // The handler's `String` body refuses what is not UTF-8.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(patch) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let (control, _) = Control::new(default_live(), json!({}), Box::new(check_log_level));
    let before = control.live();
    match control.patch(&patch, &"the put_config fuzz target") {
        Ok(next) => {
            assert_eq!(control.live(), next);
            next.validate().expect("an accepted change validates");
            live_round_trip(&next);
            let _ = serde_json::to_string(&control.describe()).expect("GET /config serialises");
        }
        Err(_) => assert_eq!(control.live(), before, "a refused change changed settings"),
    }
}

/// A `/connections` query string, through axum's query extractor and the filter parser.
pub fn connections_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    // A request line the HTTP server would not accept never reaches the handler.
    let Ok(uri) = format!("/connections?{query}").parse::<Uri>() else {
        return;
    };
    let Ok(Query(pairs)) = Query::<HashMap<String, String>>::try_from_uri(&uri) else {
        return;
    };
    if let Ok(filter) = ConnectionFilter::parse(&pairs) {
        assert!((1..=MAX_LIMIT).contains(&filter.limit));
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, panic, path::Path};

    /// Every input that once crashed a fuzz target, kept in `fuzz/regressions/<target>/`,
    /// replayed through its entry point (a readable test of each fix sits next to the code).
    #[test]
    fn inputs_that_crashed_a_fuzz_target_stay_fixed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
        let (mut replayed, mut failed) = (0, Vec::new());
        for (name, target) in super::TARGETS {
            let Ok(dir) = fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.expect("a directory entry").path();
                let data = fs::read(&path).expect("a regression input");
                if panic::catch_unwind(|| target(&data)).is_err() {
                    failed.push(path.display().to_string());
                }
                replayed += 1;
            }
        }
        assert!(
            replayed > 0,
            "no regression inputs found in {}",
            root.display()
        );
        assert!(failed.is_empty(), "these crash again: {failed:?}");
    }
}
