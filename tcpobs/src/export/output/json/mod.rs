//! NDJSON events: one object per line, each with `type` and `schema_version`. This module is
//! the byte writer ([`Line`], [`Object`]); what each event holds is in [`events`].
//!
//! Written by hand rather than through serde: the field set is fixed, keys need no escaping,
//! and durations print as plain decimal seconds (`0.00007`, not `7e-5`). The daemon writes
//! two `connection` events per loopback connection, so this is its hottest code: the line is
//! built in bytes (no UTF-8 encoding of each character pushed), the field writers inline so
//! that a key is copied as a constant, and fixed-width numbers (a timestamp's microseconds, a
//! duration's fraction) are formatted in place.

pub(crate) mod events;
mod fields;

use std::{io::Write as _, mem::MaybeUninit, net::IpAddr};

pub(crate) use fields::Fields;

use crate::{clock::WallClock, model::Timeline};

/// Bumped on any incompatible change to the JSON events.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// A buffer for JSON lines, reused from event to event. It remembers the last timestamp's
/// second (Unix) formatted as `YYYY-MM-DDTHH:MM:SS`: consecutive events, and the timestamps
/// within one (a connection's start, end and phases), mostly share their second.
pub(crate) struct Line {
    bytes: Vec<u8>,
    second: i64,
    second_text: [u8; 19],
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: Vec::new(),
            second: i64::MIN,
            second_text: [b'0'; 19],
        }
    }
}

impl Line {
    /// The lines written since the last `clear`.
    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The same, as text (every writer puts valid UTF-8).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Hands the lines over: returns them and goes on in `spare` (emptied), keeping the
    /// timestamp cache. The output passes whole blocks of lines to its writer this way.
    pub(crate) fn swap_bytes(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.bytes, spare)
    }

    /// Appends `text` as it is.
    pub(crate) fn push_str(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// Makes `second_text` say `secs` (Unix seconds) as `YYYY-MM-DDTHH:MM:SS` (UTC).
    fn cache_second(&mut self, secs: i64) {
        if secs != self.second {
            self.second = secs;
            let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
            let of_day = secs.rem_euclid(86_400) as u64;
            let text = &mut self.second_text;
            put_digits(&mut text[..], 0, 4, year.clamp(0, 9999) as u64);
            for (at, separator, value) in [
                (4, b'-', u64::from(month)),
                (7, b'-', u64::from(day)),
                (10, b'T', of_day / 3_600),
                (13, b':', of_day / 60 % 60),
                (16, b':', of_day % 60),
            ] {
                text[at] = separator;
                put_digits(&mut text[..], at + 1, at + 3, value);
            }
        }
    }
}

/// A field's key as written after the previous field: `,"name":` (an object's first field
/// leaves the comma out), and as an OTLP attribute's key outside the semantic conventions,
/// `tcpobs.name`. Made by [`key!`] from a literal, so that writing a key is one copy of a
/// constant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key(&'static str, &'static str);

impl Key {
    /// `text` must be `,"name":` with a name that needs no escaping, `attribute`
    /// `tcpobs.name` (see [`key!`]).
    pub(crate) const fn new(text: &'static str, attribute: &'static str) -> Self {
        Self(text, attribute)
    }

    /// The field's name (`name` of `,"name":`).
    #[inline(always)]
    pub(crate) fn name(self) -> &'static str {
        &self.0[2..self.0.len() - 2]
    }

    /// `tcpobs.name`.
    #[inline(always)]
    pub(crate) fn attribute(self) -> &'static str {
        self.1
    }
}

/// The [`Key`] of a field name (a literal that needs no escaping).
macro_rules! key {
    ($name:literal) => {
        $crate::export::output::json::Key::new(
            concat!(",\"", $name, "\":"),
            concat!("tcpobs.", $name),
        )
    };
}
pub(crate) use key;

/// Builds one JSON object on a line.
///
/// Each field is one copy of its constant key; numbers, times and durations are formatted
/// straight into the line's spare capacity, two digits at a time: no intermediate buffer to
/// copy (a wide copy of bytes just stored one by one stalls the CPU), no out-of-line copy of
/// a variable length.
pub(crate) struct Object<'a> {
    line: &'a mut Line,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Starts an object of this `type`.
    pub(crate) fn new(line: &'a mut Line, kind: &str) -> Self {
        line.bytes.push(b'{');
        let mut object = Self { line, empty: true };
        object.str(key!("type"), kind);
        object.u64(key!("schema_version"), u64::from(SCHEMA_VERSION));
        object
    }

    fn out(&mut self) -> &mut Vec<u8> {
        &mut self.line.bytes
    }

    /// Writes the fields `fill` adds as an object inside this one's current value.
    fn nested(&mut self, fill: impl FnOnce(&mut Self)) {
        self.out().push(b'{');
        self.empty = true;
        fill(self);
        self.out().push(b'}');
        self.empty = false;
    }

    #[inline(always)]
    fn key(&mut self, key: Key) {
        let text = key.0.as_bytes();
        // Two copies of constant lengths (a choice of slices would be a variable one).
        if std::mem::replace(&mut self.empty, false) {
            self.out().extend_from_slice(&text[1..]);
        } else {
            self.out().extend_from_slice(text);
        }
    }

    /// Closes the object and the line.
    pub(crate) fn end(self) {
        self.line.bytes.extend_from_slice(b"}\n");
    }
}

impl Fields for Object<'_> {
    #[inline(always)]
    fn str(&mut self, key: Key, value: &str) -> &mut Self {
        self.key(key);
        escape_into(self.out(), value);
        self
    }

    #[inline(always)]
    fn ip(&mut self, key: Key, value: IpAddr) -> &mut Self {
        self.key(key);
        push_ip(self.out(), value);
        self
    }

    #[inline(always)]
    fn u64(&mut self, key: Key, value: u64) -> &mut Self {
        self.key(key);
        push_u64(self.out(), value);
        self
    }

    fn strs<'s>(&mut self, key: Key, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        self.key(key);
        let out = self.out();
        out.push(b'[');
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            escape_into(out, value);
        }
        out.push(b']');
        self
    }

    fn ips(&mut self, key: Key, values: impl IntoIterator<Item = IpAddr>) -> &mut Self {
        self.key(key);
        let out = self.out();
        out.push(b'[');
        for (index, ip) in values.into_iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            push_ip(out, ip);
        }
        out.push(b']');
        self
    }

    #[inline(always)]
    fn bool(&mut self, key: Key, value: bool) -> &mut Self {
        self.key(key);
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.out().extend_from_slice(text);
        self
    }

    #[inline(always)]
    fn null(&mut self, key: Key) -> &mut Self {
        self.key(key);
        self.out().extend_from_slice(b"null");
        self
    }

    /// Decimal seconds, trailing zeros trimmed.
    #[inline(always)]
    fn secs(&mut self, key: Key, ns: Option<u64>) -> &mut Self {
        match ns {
            Some(ns) => {
                self.key(key);
                push_secs(self.out(), ns);
                self
            }
            None => self.null(key),
        }
    }

    #[inline(always)]
    fn time(&mut self, key: Key, unix_ns: i64) -> &mut Self {
        self.key(key);
        push_time(self.line, unix_ns);
        self
    }

    fn timeline(&mut self, key: Key, timeline: &Timeline, clock: &impl WallClock) -> &mut Self {
        self.key(key);
        self.out().push(b'[');
        for (index, entry) in timeline.entries().iter().enumerate() {
            if index > 0 {
                self.out().push(b',');
            }
            self.nested(|item| {
                item.str(key!("name"), entry.name)
                    .time(key!("start"), clock.unix_ns(entry.start_ns))
                    .secs(key!("duration_s"), Some(entry.duration_ns));
                if let Some(seq) = entry.seq {
                    item.u64(key!("seq"), u64::from(seq));
                }
            });
        }
        self.out().push(b']');
        self
    }
}

/// Two ASCII digits of each number below 100.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Somewhere to write digits: the line's spare capacity, or a plain buffer.
trait Digits {
    fn set(&mut self, at: usize, byte: u8);
}

impl Digits for [u8] {
    #[inline(always)]
    fn set(&mut self, at: usize, byte: u8) {
        self[at] = byte;
    }
}

impl Digits for [MaybeUninit<u8>] {
    #[inline(always)]
    fn set(&mut self, at: usize, byte: u8) {
        self[at].write(byte);
    }
}

/// Writes `value`'s last `to - from` decimal digits, zero-padded, at `from..to`.
#[inline(always)]
fn put_digits(buf: &mut (impl Digits + ?Sized), from: usize, to: usize, mut value: u64) {
    let mut at = to;
    while at >= from + 2 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        buf.set(at - 2, PAIRS[pair]);
        buf.set(at - 1, PAIRS[pair + 1]);
        at -= 2;
    }
    if at > from {
        buf.set(at - 1, b'0' + (value % 10) as u8);
    }
}

/// The number of decimal digits of `value` (1 for 0).
#[inline(always)]
fn digit_count(value: u64) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Lets `fill` write at most `N` bytes straight into `out`'s spare capacity (no buffer to copy
/// from), and keeps the count it returns.
#[inline(always)]
fn put_with<const N: usize>(out: &mut Vec<u8>, fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> usize) {
    out.reserve(N);
    let spare = &mut out.spare_capacity_mut()[..N];
    let written = fill(spare).min(N);
    // SAFETY: `fill` initialised the first `written` bytes of the spare capacity (every writer
    // here writes each byte up to the count it returns), and `reserve` made room for them.
    unsafe { out.set_len(out.len() + written) };
}

/// `value` in decimal, written into `buf` (no allocation), for what needs the text of a number
/// without a line to put it in (metric label values).
pub(crate) fn decimal(value: u64, buf: &mut [u8; 20]) -> &str {
    let len = digit_count(value);
    put_digits(&mut buf[..], 0, len, value);
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    put_with::<20>(out, |buf| {
        let len = digit_count(value);
        put_digits(buf, 0, len, value);
        len
    });
}

/// `"a.b.c.d"` or `"v6"`, as `std` prints them.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => put_with::<17>(out, |buf| {
            buf.set(0, b'"');
            let mut len = 1;
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    buf.set(len, b'.');
                    len += 1;
                }
                let digits = digit_count(u64::from(octet));
                put_digits(buf, len, len + digits, u64::from(octet));
                len += digits;
            }
            buf.set(len, b'"');
            len + 1
        }),
        IpAddr::V6(v6) => {
            out.push(b'"');
            let _ = write!(out, "{v6}");
            out.push(b'"');
        }
    }
}

/// Nanoseconds as decimal seconds, trailing zeros trimmed.
fn push_secs(out: &mut Vec<u8>, ns: u64) {
    let (whole, fraction) = (ns / 1_000_000_000, ns % 1_000_000_000);
    // 20 digits of seconds at most, a point and 9 digits of fraction.
    put_with::<30>(out, |buf| {
        let len = digit_count(whole);
        put_digits(buf, 0, len, whole);
        if fraction == 0 {
            return len;
        }
        buf.set(len, b'.');
        // Two independent halves (the digits of one do not wait for the other's divisions),
        // then as many digits as the fraction has before its trailing zeros.
        put_digits(buf, len + 1, len + 6, fraction / 10_000);
        put_digits(buf, len + 6, len + 10, fraction % 10_000);
        len + 10 - trailing_decimal_zeros(fraction)
    });
}

/// Trailing zeros of a non-zero number below 10^9, in decimal.
#[inline(always)]
fn trailing_decimal_zeros(mut value: u64) -> usize {
    let mut zeros = 0;
    if value.is_multiple_of(10_000) {
        value /= 10_000;
        zeros += 4;
    }
    if value.is_multiple_of(100) {
        value /= 100;
        zeros += 2;
    }
    if value.is_multiple_of(10) {
        value /= 10;
        zeros += 1;
    }
    if value.is_multiple_of(10) {
        zeros += 1;
    }
    zeros
}

/// `"YYYY-MM-DDTHH:MM:SS.uuuuuuZ"` from Unix nanoseconds.
fn push_time(line: &mut Line, unix_ns: i64) {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) as u64 / 1_000;
    line.cache_second(secs);
    let second = line.second_text;
    put_with::<29>(&mut line.bytes, |buf| {
        buf.set(0, b'"');
        for (index, &byte) in second.iter().enumerate() {
            buf.set(1 + index, byte);
        }
        buf.set(20, b'.');
        put_digits(buf, 21, 27, micros);
        buf.set(27, b'Z');
        buf.set(28, b'"');
        29
    });
}

/// A timestamp as the events print it (`2026-11-21T09:30:00.123456Z`: UTC, microseconds),
/// from Unix nanoseconds, for what is not an event but should read like one (`/connections`).
pub(crate) fn timestamp(unix_ns: i64) -> String {
    time_text(&mut Line::default(), unix_ns).to_owned()
}

/// The same in `line` (cleared first, its cached second kept): no allocation.
pub(crate) fn time_text(line: &mut Line, unix_ns: i64) -> &str {
    line.clear();
    push_time(line, unix_ns);
    unquoted(line)
}

/// An address as the events print it, in `line` (cleared first).
pub(crate) fn ip_text(line: &mut Line, ip: IpAddr) -> &str {
    line.clear();
    push_ip(&mut line.bytes, ip);
    unquoted(line)
}

/// A string value written alone on `line`, without its quotes.
fn unquoted(line: &Line) -> &str {
    let text = line.as_str();
    text.get(1..text.len().saturating_sub(1))
        .unwrap_or_default()
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether a byte goes into a JSON string as it is.
#[inline(always)]
fn plain(byte: u8) -> bool {
    (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\'
}

fn escape_into(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // Short strings (names, states, roles, commands): checked and copied in one pass, with no
    // out-of-line copy.
    if bytes.len() <= 30 {
        let mut clean = true;
        put_with::<32>(out, |buf| {
            buf.set(0, b'"');
            for (index, &byte) in bytes.iter().enumerate() {
                if !plain(byte) {
                    clean = false;
                    return 0;
                }
                buf.set(index + 1, byte);
            }
            buf.set(bytes.len() + 1, b'"');
            bytes.len() + 2
        });
        if clean {
            return;
        }
    }
    out.push(b'"');
    if bytes.iter().all(|&byte| plain(byte)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
pub(crate) mod tests;
