//! Protobuf's wire format, written by hand for what tcpobs sends most: spans and log records
//! ([`Message`]) and their attributes ([`Writer`], encoded `KeyValue`s). A record's
//! attributes are encoded once, into one buffer, then copied into its span and its log
//! record: a connection has about forty, and building them as prost structs cost two
//! allocations each, and again for each message that carries them. What this writes is
//! checked against prost's encoding of the schema ([`proto`](super::proto)) in the tests.

use bytes::{BufMut as _, Bytes, BytesMut};
use serde_json::Value as Json;

/// Protobuf's wire types used here.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// The key of a field below 16 (one byte).
fn key(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// A length-delimited field of this length: its key, length and body.
fn delimited_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// An attribute value: what the events hold.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// The body of an `AnyValue` holding `value`, and its length.
fn scalar_len(value: Scalar<'_>) -> usize {
    match value {
        Scalar::Str(s) => delimited_len(s.len()),
        Scalar::Int(i) => 1 + varint_len(i as u64),
        Scalar::Double(_) => 9,
        Scalar::Bool(_) => 2,
    }
}

fn put_scalar(buf: &mut BytesMut, value: Scalar<'_>) {
    match value {
        Scalar::Str(s) => {
            buf.put_u8(key(1, LENGTH_DELIMITED));
            put_varint(buf, s.len() as u64);
            buf.put_slice(s.as_bytes());
        }
        Scalar::Bool(b) => {
            buf.put_u8(key(2, VARINT));
            buf.put_u8(u8::from(b));
        }
        Scalar::Int(i) => {
            buf.put_u8(key(3, VARINT));
            put_varint(buf, i as u64);
        }
        Scalar::Double(d) => {
            buf.put_u8(key(4, FIXED64));
            buf.put_f64_le(d);
        }
    }
}

/// A JSON value as an `AnyValue` body (`None` for null, which is left out), and its length.
fn json_scalar(value: &Json, double: bool) -> Option<Scalar<'_>> {
    Some(match value {
        Json::Null | Json::Array(_) | Json::Object(_) => return None,
        Json::Bool(b) => Scalar::Bool(*b),
        Json::Number(n) if double => Scalar::Double(n.as_f64().unwrap_or(0.0)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::Int(i),
            (None, Some(u)) => Scalar::Int(i64::try_from(u).unwrap_or(i64::MAX)),
            _ => Scalar::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Scalar::Str(s),
    })
}

fn any_len(value: &Json, double: bool) -> Option<usize> {
    match value {
        Json::Array(items) => Some(delimited_len(
            items
                .iter()
                .filter_map(|item| any_len(item, false))
                .map(delimited_len)
                .sum(),
        )),
        Json::Object(fields) => Some(delimited_len(
            fields
                .iter()
                .filter_map(|(k, v)| kv_len(&["", k], v, k.ends_with("_s")))
                .map(delimited_len)
                .sum(),
        )),
        scalar => json_scalar(scalar, double).map(scalar_len),
    }
}

fn put_any(buf: &mut BytesMut, value: &Json, double: bool) {
    match value {
        Json::Array(items) => {
            buf.put_u8(key(5, LENGTH_DELIMITED));
            let body: usize = items
                .iter()
                .filter_map(|item| any_len(item, false))
                .map(delimited_len)
                .sum();
            put_varint(buf, body as u64);
            for item in items {
                if let Some(len) = any_len(item, false) {
                    buf.put_u8(key(1, LENGTH_DELIMITED));
                    put_varint(buf, len as u64);
                    put_any(buf, item, false);
                }
            }
        }
        Json::Object(fields) => {
            buf.put_u8(key(6, LENGTH_DELIMITED));
            let body: usize = fields
                .iter()
                .filter_map(|(k, v)| kv_len(&["", k], v, k.ends_with("_s")))
                .map(delimited_len)
                .sum();
            put_varint(buf, body as u64);
            for (k, v) in fields {
                let double = k.ends_with("_s");
                if let Some(len) = kv_len(&["", k], v, double) {
                    buf.put_u8(key(1, LENGTH_DELIMITED));
                    put_varint(buf, len as u64);
                    put_kv_body(buf, &["", k], v, double);
                }
            }
        }
        scalar => {
            if let Some(scalar) = json_scalar(scalar, double) {
                put_scalar(buf, scalar);
            }
        }
    }
}

/// The body of a `KeyValue` whose key is the concatenation of `key`'s parts.
fn kv_len(key: &[&str; 2], value: &Json, double: bool) -> Option<usize> {
    let key_len: usize = key.iter().map(|part| part.len()).sum();
    Some(delimited_len(key_len) + delimited_len(any_len(value, double)?))
}

fn put_kv_body(buf: &mut BytesMut, key_parts: &[&str; 2], value: &Json, double: bool) {
    let key_len: usize = key_parts.iter().map(|part| part.len()).sum();
    buf.put_u8(key(1, LENGTH_DELIMITED));
    put_varint(buf, key_len as u64);
    for part in key_parts {
        buf.put_slice(part.as_bytes());
    }
    if let Some(len) = any_len(value, double) {
        buf.put_u8(key(2, LENGTH_DELIMITED));
        put_varint(buf, len as u64);
        put_any(buf, value, double);
    }
}

/// A record's attributes: encoded `KeyValue` bodies in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Attributes {
    buf: Bytes,
    /// Each attribute's end in `buf`, and whether spans leave it out.
    ends: Vec<(u32, bool)>,
}

impl Attributes {
    fn each(&self, on_span: bool) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().filter_map(move |&(end, span_leaves_out)| {
            let attribute = &self.buf[start..end as usize];
            start = end as usize;
            (!(on_span && span_leaves_out)).then_some(attribute)
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self, on_span: bool) -> usize {
        self.each(on_span).count()
    }
}

/// Writes attributes.
#[derive(Default)]
pub(crate) struct Writer {
    buf: BytesMut,
    ends: Vec<(u32, bool)>,
}

impl Writer {
    pub(crate) fn with_capacity(bytes: usize, attributes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            ends: Vec::with_capacity(attributes),
        }
    }

    fn end(&mut self, span_leaves_out: bool) {
        self.ends.push((self.buf.len() as u32, span_leaves_out));
    }

    /// Adds an attribute from a JSON value (`double`: numbers as doubles); nothing for null.
    /// `span_leaves_out`: only log records carry it.
    pub(crate) fn json(
        &mut self,
        key: &[&str; 2],
        value: &Json,
        double: bool,
        span_leaves_out: bool,
    ) {
        if kv_len(key, value, double).is_some() {
            put_kv_body(&mut self.buf, key, value, double);
            self.end(span_leaves_out);
        }
    }

    /// Adds an attribute.
    pub(crate) fn scalar(&mut self, key: &str, value: Scalar<'_>) {
        self.buf.put_u8(self::key(1, LENGTH_DELIMITED));
        put_varint(&mut self.buf, key.len() as u64);
        self.buf.put_slice(key.as_bytes());
        self.buf.put_u8(self::key(2, LENGTH_DELIMITED));
        put_varint(&mut self.buf, scalar_len(value) as u64);
        put_scalar(&mut self.buf, value);
        self.end(false);
    }

    pub(crate) fn finish(self) -> Attributes {
        Attributes {
            buf: self.buf.freeze(),
            ends: self.ends,
        }
    }
}

/// Writes one message's fields, in field order, leaving out default values as protobuf 3
/// does.
pub(crate) struct Message<'a> {
    buf: &'a mut BytesMut,
}

impl<'a> Message<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut) -> Self {
        Self { buf }
    }

    fn field_key(&mut self, field: u32, wire_type: u8) {
        put_varint(self.buf, u64::from(field << 3 | u32::from(wire_type)));
    }

    pub(crate) fn bytes(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        if !bytes.is_empty() {
            self.field_key(field, LENGTH_DELIMITED);
            put_varint(self.buf, bytes.len() as u64);
            self.buf.put_slice(bytes);
        }
        self
    }

    pub(crate) fn varint(&mut self, field: u32, value: u64) -> &mut Self {
        if value != 0 {
            self.field_key(field, VARINT);
            put_varint(self.buf, value);
        }
        self
    }

    pub(crate) fn fixed64(&mut self, field: u32, value: u64) -> &mut Self {
        if value != 0 {
            self.field_key(field, FIXED64);
            self.buf.put_u64_le(value);
        }
        self
    }

    pub(crate) fn fixed32(&mut self, field: u32, value: u32) -> &mut Self {
        if value != 0 {
            self.field_key(field, FIXED32);
            self.buf.put_u32_le(value);
        }
        self
    }

    /// Each attribute (all, or those spans carry) as a `KeyValue` of repeated `field`.
    pub(crate) fn attributes(
        &mut self,
        field: u32,
        attributes: &Attributes,
        on_span: bool,
    ) -> &mut Self {
        for attribute in attributes.each(on_span) {
            self.field_key(field, LENGTH_DELIMITED);
            put_varint(self.buf, attribute.len() as u64);
            self.buf.put_slice(attribute);
        }
        self
    }

    /// One `KeyValue` of repeated `field`.
    pub(crate) fn attribute(&mut self, field: u32, key: &str, value: Scalar<'_>) -> &mut Self {
        let value_len = scalar_len(value);
        self.field_key(field, LENGTH_DELIMITED);
        put_varint(
            self.buf,
            (delimited_len(key.len()) + delimited_len(value_len)) as u64,
        );
        self.buf.put_u8(self::key(1, LENGTH_DELIMITED));
        put_varint(self.buf, key.len() as u64);
        self.buf.put_slice(key.as_bytes());
        self.buf.put_u8(self::key(2, LENGTH_DELIMITED));
        put_varint(self.buf, value_len as u64);
        put_scalar(self.buf, value);
        self
    }

    /// An `AnyValue` holding a string, as `field`.
    pub(crate) fn any_string(&mut self, field: u32, value: &str) -> &mut Self {
        self.field_key(field, LENGTH_DELIMITED);
        put_varint(self.buf, scalar_len(Scalar::Str(value)) as u64);
        put_scalar(self.buf, Scalar::Str(value));
        self
    }

    /// A `Status` (`message` 2, `code` 3) as `field`.
    pub(crate) fn status(&mut self, field: u32, code: i32, message: &str) -> &mut Self {
        let message_len = if message.is_empty() {
            0
        } else {
            delimited_len(message.len())
        };
        let code_len = if code == 0 {
            0
        } else {
            1 + varint_len(code as u64)
        };
        self.field_key(field, LENGTH_DELIMITED);
        put_varint(self.buf, (message_len + code_len) as u64);
        let mut status = Message::new(self.buf);
        status.bytes(2, message.as_bytes()).varint(3, code as u64);
        self
    }
}

/// Ends of the messages written into one buffer, to cut it into one [`Bytes`] each.
#[derive(Default)]
pub(crate) struct Messages {
    pub buf: BytesMut,
    ends: Vec<usize>,
}

impl Messages {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            ends: Vec::new(),
        }
    }

    /// Marks the end of the message just written.
    pub(crate) fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// The messages written, one [`Bytes`] each (sharing one buffer).
    pub(crate) fn take(&mut self) -> Vec<Bytes> {
        let buf = self.buf.split().freeze();
        let mut start = 0;
        self.ends
            .drain(..)
            .map(|end| {
                let message = buf.slice(start..end);
                start = end;
                message
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn finish(mut self) -> Vec<Bytes> {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde_json::json;

    use super::{
        super::proto::{AnyValue, ArrayValue, KeyValue, KeyValueList, Value},
        *,
    };

    fn decoded(writer: Writer) -> Vec<KeyValue> {
        let attributes = writer.finish();
        attributes
            .each(false)
            .map(|bytes| KeyValue::decode(bytes).unwrap())
            .collect()
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    /// What the hand-written bytes decode to is what prost would have encoded.
    #[test]
    fn attributes_decode_as_key_values() {
        let mut writer = Writer::default();
        writer.json(&["tcpobs.", "name"], &json!("curl"), false, false);
        writer.json(&["", "process.pid"], &json!(300), false, false);
        writer.json(&["tcpobs.", "lifetime_s"], &json!(2), true, false);
        writer.json(&["tcpobs.", "open"], &json!(false), false, false);
        writer.json(&["tcpobs.", "gone"], &json!(null), false, false);
        writer.json(&["tcpobs.", "big"], &json!(u64::MAX), false, false);
        writer.json(&["tcpobs.", "negative"], &json!(-5), false, false);
        writer.json(
            &["tcpobs.", "phases"],
            &json!([{"name": "dns", "duration_s": 0.5, "seq": null}, "x"]),
            false,
            true,
        );
        writer.scalar("tcpobs.exchange.seq", Scalar::Int(1_000_000));
        writer.scalar("empty", Scalar::Str(""));
        let expected = vec![
            kv("tcpobs.name", Value::String("curl".into())),
            kv("process.pid", Value::Int(300)),
            kv("tcpobs.lifetime_s", Value::Double(2.0)),
            kv("tcpobs.open", Value::Bool(false)),
            kv("tcpobs.big", Value::Int(i64::MAX)),
            kv("tcpobs.negative", Value::Int(-5)),
            kv(
                "tcpobs.phases",
                Value::Array(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(Value::Kvlist(KeyValueList {
                                values: vec![
                                    kv("duration_s", Value::Double(0.5)),
                                    kv("name", Value::String("dns".into())),
                                ],
                            })),
                        },
                        AnyValue {
                            value: Some(Value::String("x".into())),
                        },
                    ],
                }),
            ),
            kv("tcpobs.exchange.seq", Value::Int(1_000_000)),
            kv("empty", Value::String(String::new())),
        ];
        let attributes = decoded(writer);
        assert_eq!(attributes, expected);
        // Byte for byte what prost writes.
        let mut writer = Writer::default();
        writer.json(
            &["tcpobs.", "phases"],
            &json!([{"name": "dns"}]),
            false,
            true,
        );
        writer.scalar("k", Scalar::Double(1.5));
        let attributes = writer.finish();
        assert_eq!(attributes.len(true), 1, "spans leave the timeline out");
        for ours in attributes.each(false) {
            assert_eq!(ours, KeyValue::decode(ours).unwrap().encode_to_vec());
        }
    }

    /// Messages written field by field are what prost writes for the schema's structs.
    #[test]
    fn messages_match_prost_s_encoding() {
        use super::super::proto::{Span, Status};
        let mut out = Messages::default();
        let mut attributes = Writer::default();
        attributes.scalar("a", Scalar::Str("b"));
        let attributes = attributes.finish();
        let mut message = Message::new(&mut out.buf);
        message
            .bytes(1, &[1; 16])
            .bytes(2, &[2; 8])
            .bytes(4, &[])
            .bytes(5, b"tcp.connection")
            .varint(6, 3)
            .fixed64(7, 10)
            .fixed64(8, 0)
            .attributes(9, &attributes, true)
            .attribute(9, "n", Scalar::Int(-1))
            .status(15, 2, "refused")
            .fixed32(16, 0x101);
        out.end();
        let mut message = Message::new(&mut out.buf);
        message.status(15, 0, "");
        out.end();
        let written = out.finish();
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "tcp.connection".into(),
            kind: 3,
            start_time_unix_nano: 10,
            attributes: vec![kv("a", Value::String("b".into())), kv("n", Value::Int(-1))],
            status: Some(Status {
                message: "refused".into(),
                code: 2,
            }),
            flags: 0x101,
            ..Span::default()
        };
        assert_eq!(written[0], span.encode_to_vec());
        let empty_status = Span {
            status: Some(Status::default()),
            ..Span::default()
        };
        assert_eq!(written[1], empty_status.encode_to_vec());
    }
}
