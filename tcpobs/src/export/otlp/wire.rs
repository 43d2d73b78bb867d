//! Protobuf's wire format, written by hand for what tcpobs sends most: spans and log records
//! ([`Message`]) and their attributes ([`Writer`], encoded `KeyValue`s). A record's
//! attributes are encoded once, into one buffer, then copied into its span and its log
//! record: a connection has about forty, and building them as prost structs cost two
//! allocations each, and again for each message that carries them. What this writes is
//! checked against prost's encoding of the schema ([`proto`](super::proto)) in the tests.
//!
//! Everything is written into a `Vec<u8>`: a byte is a `push`, where `BytesMut`'s `BufMut`
//! made every byte and every short key an out-of-line copy (a third of the exporter's time
//! under churn, in `perf`).

use bytes::Bytes;

use super::transport::frame;

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

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// A length-delimited field of this length: its key, length and body.
fn delimited_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// The key and length of a length-delimited `field` (below 16) of `len` bytes, written next.
fn put_header(buf: &mut Vec<u8>, field: u8, len: usize) {
    buf.push(key(field, LENGTH_DELIMITED));
    put_varint(buf, len as u64);
}

/// An attribute value: what the events hold.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Scalar<'_> {
    /// Nanoseconds as seconds: the double nearest the events' decimal below 2^53 ns (104
    /// days), within a unit in the last place above.
    pub(crate) fn seconds(ns: u64) -> Self {
        Scalar::Double(ns as f64 / 1e9)
    }
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

fn put_scalar(buf: &mut Vec<u8>, value: Scalar<'_>) {
    match value {
        Scalar::Str(s) => {
            put_header(buf, 1, s.len());
            buf.extend_from_slice(s.as_bytes());
        }
        Scalar::Bool(b) => {
            buf.push(key(2, VARINT));
            buf.push(u8::from(b));
        }
        Scalar::Int(i) => {
            buf.push(key(3, VARINT));
            put_varint(buf, i as u64);
        }
        Scalar::Double(d) => {
            buf.push(key(4, FIXED64));
            buf.extend_from_slice(&d.to_le_bytes());
        }
    }
}

/// The body of a `KeyValue` with a key of `key_len` bytes and a scalar value.
fn kv_len(key_len: usize, value: Scalar<'_>) -> usize {
    delimited_len(key_len) + delimited_len(scalar_len(value))
}

/// A `KeyValue`'s key (field 1).
fn put_kv_key(buf: &mut Vec<u8>, name: &str) {
    put_header(buf, 1, name.len());
    buf.extend_from_slice(name.as_bytes());
}

/// A `KeyValue`'s body: `name` as its key, `value` as its value.
fn put_kv_body(buf: &mut Vec<u8>, name: &str, value: Scalar<'_>) {
    put_kv_key(buf, name);
    put_header(buf, 2, scalar_len(value));
    put_scalar(buf, value);
}

/// The items of an array attribute (an `ArrayValue`'s body), written by [`Writer::array`].
pub(crate) struct Array<'a> {
    buf: &'a mut Vec<u8>,
}

impl Array<'_> {
    /// An item holding `value`.
    pub(crate) fn scalar(&mut self, value: Scalar<'_>) {
        put_header(self.buf, 1, scalar_len(value));
        put_scalar(self.buf, value);
    }

    /// An item holding a list of key-value pairs (a JSON object); `None` values are left out.
    pub(crate) fn kvlist(&mut self, fields: &[(&str, Option<Scalar<'_>>)]) {
        let present = || {
            fields
                .iter()
                .filter_map(|(key, value)| Some((*key, (*value)?)))
        };
        let body: usize = present()
            .map(|(key, value)| delimited_len(kv_len(key.len(), value)))
            .sum();
        put_header(self.buf, 1, delimited_len(body));
        put_header(self.buf, 6, body);
        for (name, value) in present() {
            put_header(self.buf, 1, kv_len(name.len(), value));
            put_kv_body(self.buf, name, value);
        }
    }
}

/// A record's attributes: encoded `KeyValue` bodies in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Attributes {
    buf: Vec<u8>,
    /// Each attribute's end in `buf`, and whether spans leave it out.
    ends: Vec<(u32, bool)>,
}

impl Attributes {
    /// Each attribute's `KeyValue` body (all, or those spans carry).
    pub(crate) fn each(&self, on_span: bool) -> impl Iterator<Item = &[u8]> {
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

/// Writes attributes, one record's at a time ([`Writer::finish`] hands them over).
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
    ends: Vec<(u32, bool)>,
    /// An array attribute's items, before their length is known (kept from record to record).
    items: Vec<u8>,
}

impl Writer {
    pub(super) fn end(&mut self, span_leaves_out: bool) {
        self.ends.push((self.buf.len() as u32, span_leaves_out));
    }

    /// Where the attribute being written goes.
    #[cfg(test)]
    pub(super) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Adds an attribute.
    pub(crate) fn scalar(&mut self, name: &str, value: Scalar<'_>) {
        self.attribute(name, value, false);
    }

    /// Adds an attribute; `span_leaves_out`: only log records carry it.
    pub(crate) fn attribute(&mut self, name: &str, value: Scalar<'_>, span_leaves_out: bool) {
        put_kv_body(&mut self.buf, name, value);
        self.end(span_leaves_out);
    }

    /// Adds an array attribute holding the items `fill` writes.
    pub(crate) fn array(
        &mut self,
        name: &str,
        span_leaves_out: bool,
        fill: impl FnOnce(&mut Array<'_>),
    ) {
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        fill(&mut Array { buf: &mut items });
        let buf = &mut self.buf;
        put_kv_key(buf, name);
        put_header(buf, 2, delimited_len(items.len()));
        put_header(buf, 5, items.len());
        buf.extend_from_slice(&items);
        self.items = items;
        self.end(span_leaves_out);
    }

    /// The attributes written since the last call, in buffers of their own. The next
    /// record's start with the room this one took (records of a kind are alike).
    pub(crate) fn finish(&mut self) -> Attributes {
        let (bytes, count) = (self.buf.len(), self.ends.len());
        let mut buf = std::mem::replace(&mut self.buf, Vec::with_capacity(bytes));
        // Records wait in the queues with their attributes: no room left unused.
        buf.shrink_to_fit();
        Attributes {
            buf,
            ends: std::mem::replace(&mut self.ends, Vec::with_capacity(count)),
        }
    }
}

/// Writes one message's fields, in field order, leaving out default values as protobuf 3
/// does.
pub(crate) struct Message<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Message<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    fn field_key(&mut self, field: u32, wire_type: u8) {
        put_varint(self.buf, u64::from(field << 3 | u32::from(wire_type)));
    }

    pub(crate) fn bytes(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        if !bytes.is_empty() {
            self.bytes_always(field, bytes);
        }
        self
    }

    /// A length-delimited field, even when empty (an embedded message that is present).
    pub(crate) fn bytes_always(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        self.header(field, bytes.len());
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The key and length of an embedded message of `len` bytes, written next.
    pub(crate) fn header(&mut self, field: u32, len: usize) -> &mut Self {
        self.field_key(field, LENGTH_DELIMITED);
        put_varint(self.buf, len as u64);
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
            self.buf.extend_from_slice(&value.to_le_bytes());
        }
        self
    }

    pub(crate) fn fixed32(&mut self, field: u32, value: u32) -> &mut Self {
        if value != 0 {
            self.field_key(field, FIXED32);
            self.buf.extend_from_slice(&value.to_le_bytes());
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
            self.bytes_always(field, attribute);
        }
        self
    }

    /// One `KeyValue` of repeated `field`.
    pub(crate) fn attribute(&mut self, field: u32, key: &str, value: Scalar<'_>) -> &mut Self {
        self.header(field, kv_len(key.len(), value));
        put_kv_body(self.buf, key, value);
        self
    }

    /// An `AnyValue` holding a string, as `field`.
    pub(crate) fn any_string(&mut self, field: u32, value: &str) -> &mut Self {
        self.header(field, scalar_len(Scalar::Str(value)));
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
        self.header(field, message_len + code_len);
        let mut status = Message::new(self.buf);
        status.bytes(2, message.as_bytes()).varint(3, code as u64);
        self
    }
}

/// Messages written into one buffer, and where each ends: a batch's spans or log records,
/// before [`Messages::request`] puts them in an Export request.
#[derive(Default)]
pub(crate) struct Messages {
    pub buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Messages {
    /// Marks the end of the message just written.
    pub(crate) fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// Each message written.
    fn each(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let message = &self.buf[start..end];
            start = end;
            message
        })
    }

    /// The messages written, as an export request of one resource and one scope (the
    /// encoded `resource` and `scope`), after gRPC's 5-byte frame header
    /// ([`framed`](super::transport::framed)'s layout). Traces and logs share the shape:
    /// `Export{Trace,Logs}ServiceRequest { resource_{spans,logs} = 1 { resource = 1,
    /// scope_{spans,logs} = 2 { scope = 1, {spans,log_records} = 2 } } }`. Each message is
    /// copied once, into a buffer of the request's size.
    pub(crate) fn request(&mut self, resource: &[u8], scope: &[u8]) -> Bytes {
        let records: usize = self.each().map(|record| delimited_len(record.len())).sum();
        let scope_body = delimited_len(scope.len()) + records;
        let resource_body = delimited_len(resource.len()) + delimited_len(scope_body);
        let mut buf = frame(delimited_len(resource_body));
        let mut message = Message::new(&mut buf);
        message.header(1, resource_body).bytes_always(1, resource);
        message.header(2, scope_body).bytes_always(1, scope);
        for record in self.each() {
            message.bytes_always(2, record);
        }
        self.buf.clear();
        self.ends.clear();
        Bytes::from(buf)
    }

    /// The messages written, one each.
    #[cfg(test)]
    pub(crate) fn finish(self) -> Vec<Bytes> {
        self.each().map(Bytes::copy_from_slice).collect()
    }
}

#[cfg(test)]
pub(crate) mod oracle;

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde_json::json;

    use super::{
        super::proto::{AnyValue, ArrayValue, KeyValue, KeyValueList, Value},
        *,
    };

    fn decoded(mut writer: Writer) -> Vec<KeyValue> {
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
        oracle::attribute(&mut writer, "tcpobs.name", &json!("curl"), false, false);
        oracle::attribute(&mut writer, "process.pid", &json!(300), false, false);
        oracle::attribute(&mut writer, "tcpobs.lifetime_s", &json!(2), true, false);
        oracle::attribute(&mut writer, "tcpobs.open", &json!(false), false, false);
        oracle::attribute(&mut writer, "tcpobs.gone", &json!(null), false, false);
        oracle::attribute(&mut writer, "tcpobs.big", &json!(u64::MAX), false, false);
        oracle::attribute(&mut writer, "tcpobs.negative", &json!(-5), false, false);
        oracle::attribute(
            &mut writer,
            "tcpobs.phases",
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
        oracle::attribute(
            &mut writer,
            "tcpobs.phases",
            &json!([{"name": "dns"}]),
            false,
            true,
        );
        writer.scalar("k", Scalar::Double(1.5));
        writer.attribute("tcpobs.open", Scalar::Bool(true), false);
        writer.array("tcpobs.stuck", false, |_| {});
        writer.array("addresses", true, |items| {
            items.scalar(Scalar::Str("::1"));
            items.kvlist(&[
                ("name", Some(Scalar::Str("dns"))),
                ("seq", None),
                ("duration_s", Some(Scalar::Double(0.25))),
            ]);
        });
        let attributes = writer.finish();
        assert_eq!(attributes.len(true), 3, "spans leave the timeline out");
        for ours in attributes.each(false) {
            assert_eq!(ours, KeyValue::decode(ours).unwrap().encode_to_vec());
        }
    }

    /// A request written around the messages is what prost writes for the schema's
    /// structs, traces and logs, and the buffer is ready for the next batch.
    #[test]
    fn requests_match_prost_s_encoding() {
        use super::super::{
            proto::{
                ExportLogsServiceRequest, ExportTraceServiceRequest, InstrumentationScope,
                Resource, ResourceLogs, ResourceSpans, ScopeLogs, ScopeSpans,
            },
            transport::framed,
        };
        let resource = Resource {
            attributes: vec![kv("service.name", Value::String("tcpobs".into()))],
        };
        let scope = InstrumentationScope {
            name: "tcpobs".into(),
            version: "1".into(),
        };
        let (encoded_resource, encoded_scope) = (resource.encode_to_vec(), scope.encode_to_vec());
        let mut out = Messages::default();
        for messages in [
            vec![],
            vec![vec![1u8; 3]],
            vec![vec![7; 200], vec![], vec![9; 20_000]],
        ] {
            for message in &messages {
                out.buf.extend_from_slice(message);
                out.end();
            }
            let records: Vec<Bytes> = messages.iter().cloned().map(Bytes::from).collect();
            let traces = framed(&ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: records.clone(),
                    }],
                }],
            });
            let logs = framed(&ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records: records,
                    }],
                }],
            });
            assert_eq!(traces, logs, "one shape");
            assert_eq!(out.request(&encoded_resource, &encoded_scope), traces);
            assert!(out.buf.is_empty() && out.ends.is_empty());
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
