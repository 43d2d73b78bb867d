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

use std::{io::Write as _, net::IpAddr};

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

    /// Copies `secs` (Unix seconds) as `YYYY-MM-DDTHH:MM:SS` (UTC) into the line.
    fn put_second(&mut self, secs: i64) {
        if secs != self.second {
            self.second = secs;
            let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
            let of_day = secs.rem_euclid(86_400) as u64;
            let text = &mut self.second_text;
            put_digits(&mut text[0..4], year.clamp(0, 9999) as u64);
            for (at, separator, value) in [
                (4, b'-', u64::from(month)),
                (7, b'-', u64::from(day)),
                (10, b'T', of_day / 3_600),
                (13, b':', of_day / 60 % 60),
                (16, b':', of_day % 60),
            ] {
                text[at] = separator;
                put_digits(&mut text[at + 1..at + 3], value);
            }
        }
        self.bytes.extend_from_slice(&self.second_text);
    }
}

/// Builds one JSON object on a line.
pub(crate) struct Object<'a> {
    line: &'a mut Line,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Starts an object of this `type`.
    pub(crate) fn new(line: &'a mut Line, kind: &str) -> Self {
        line.bytes.push(b'{');
        let mut object = Self { line, empty: true };
        object.str("type", kind);
        object.u64("schema_version", u64::from(SCHEMA_VERSION));
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
    fn key(&mut self, key: &str) {
        let first = std::mem::replace(&mut self.empty, false);
        let out = self.out();
        if !first {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    }

    #[inline(always)]
    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(self.out(), value);
        self
    }

    #[inline(always)]
    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    pub(crate) fn ip(&mut self, key: &str, value: IpAddr) -> &mut Self {
        self.key(key);
        push_ip(self.out(), value);
        self
    }

    #[inline(always)]
    pub(crate) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        push_u64(self.out(), value);
        self
    }

    #[inline(always)]
    pub(crate) fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u64(key, value),
            None => self.null(key),
        }
    }

    pub(crate) fn strs<'s>(
        &mut self,
        key: &str,
        values: impl IntoIterator<Item = &'s str>,
    ) -> &mut Self {
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

    pub(crate) fn ips(&mut self, key: &str, values: impl IntoIterator<Item = IpAddr>) -> &mut Self {
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
    pub(crate) fn opt_bool(&mut self, key: &str, value: Option<bool>) -> &mut Self {
        match value {
            Some(value) => self.bool(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    pub(crate) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.out().extend_from_slice(text);
        self
    }

    #[inline(always)]
    pub(crate) fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out().extend_from_slice(b"null");
        self
    }

    /// Nanoseconds as decimal seconds, trailing zeros trimmed.
    #[inline(always)]
    pub(crate) fn secs(&mut self, key: &str, ns: Option<u64>) -> &mut Self {
        match ns {
            Some(ns) => {
                self.key(key);
                push_secs(self.out(), ns);
                self
            }
            None => self.null(key),
        }
    }

    /// A UTC timestamp with microseconds (`2026-11-21T09:30:00.123456Z`) from Unix nanoseconds.
    #[inline(always)]
    pub(crate) fn time(&mut self, key: &str, unix_ns: i64) -> &mut Self {
        self.key(key);
        push_time(self.line, unix_ns);
        self
    }

    /// Closes the object and the line.
    pub(crate) fn end(self) {
        self.line.bytes.extend_from_slice(b"}\n");
    }
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    if value < 10 {
        out.push(b'0' + value as u8);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
}

/// `"a.b.c.d"` or `"v6"`, as `std` prints them.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// Nanoseconds as decimal seconds, trailing zeros trimmed.
fn push_secs(out: &mut Vec<u8>, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    let fraction = ns % 1_000_000_000;
    if fraction != 0 {
        let mut buffer = itoa::Buffer::new();
        let digits = fixed_width(&mut buffer, fraction, 1_000_000_000);
        let kept = digits.iter().rposition(|&digit| digit != b'0').unwrap_or(0);
        out.push(b'.');
        out.extend_from_slice(&digits[..=kept]);
    }
}

/// `"YYYY-MM-DDTHH:MM:SS.uuuuuuZ"` from Unix nanoseconds.
fn push_time(line: &mut Line, unix_ns: i64) {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) as u64 / 1_000;
    line.bytes.push(b'"');
    line.put_second(secs);
    line.bytes.push(b'.');
    let mut buffer = itoa::Buffer::new();
    line.bytes
        .extend_from_slice(fixed_width(&mut buffer, micros, 1_000_000));
    line.bytes.extend_from_slice(b"Z\"");
}

/// A timestamp as the events print it (`2026-11-21T09:30:00.123456Z`: UTC, microseconds),
/// from Unix nanoseconds, for what is not an event but should read like one (`/connections`).
pub(crate) fn timestamp(unix_ns: i64) -> String {
    let mut line = Line::default();
    push_time(&mut line, unix_ns);
    line.as_str().trim_matches('"').to_owned()
}

/// `value` (below `power`, a power of ten) with leading zeros to `power`'s number of zeros:
/// formats `power + value` and drops its leading `1`.
fn fixed_width(buffer: &mut itoa::Buffer, value: u64, power: u64) -> &[u8] {
    &buffer.format(power + value % power).as_bytes()[1..]
}

/// `value`'s last `digits.len()` decimal digits, zero-padded, as ASCII.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
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

fn escape_into(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(value.as_bytes());
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
mod tests;
