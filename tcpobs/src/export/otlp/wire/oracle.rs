//! The exporter's attributes as it wrote them until it took the fields from the events'
//! writers: the JSON event line parsed back (serde_json), each value encoded. What
//! [`EventAttributes`](super::super::attributes::EventAttributes) writes is checked against it
//! (`attributes`' tests): the same keys in the same order, the same values.

use std::fmt;

use serde::{
    Deserializer as _,
    de::{MapAccess, Visitor},
};
use serde_json::Value as Json;

use super::{
    super::attributes::{AttributeKey, attribute_key},
    *,
};

/// A JSON value as an `AnyValue` body (`None` for null, which is left out), and its length.
pub(super) fn json_scalar(value: &Json, double: bool) -> Option<Scalar<'_>> {
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
                .filter_map(|(k, v)| json_kv_len(k, v, k.ends_with("_s")))
                .map(delimited_len)
                .sum(),
        )),
        scalar => json_scalar(scalar, double).map(scalar_len),
    }
}

fn put_any(buf: &mut Vec<u8>, value: &Json, double: bool) {
    match value {
        Json::Array(items) => {
            let body: usize = items
                .iter()
                .filter_map(|item| any_len(item, false))
                .map(delimited_len)
                .sum();
            put_header(buf, 5, body);
            for item in items {
                if let Some(len) = any_len(item, false) {
                    put_header(buf, 1, len);
                    put_any(buf, item, false);
                }
            }
        }
        Json::Object(fields) => {
            let body: usize = fields
                .iter()
                .filter_map(|(k, v)| json_kv_len(k, v, k.ends_with("_s")))
                .map(delimited_len)
                .sum();
            put_header(buf, 6, body);
            for (k, v) in fields {
                let double = k.ends_with("_s");
                if let Some(len) = json_kv_len(k, v, double) {
                    put_header(buf, 1, len);
                    put_json_kv_body(buf, k, v, double);
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

/// The body of a `KeyValue` (`None` for a null value).
fn json_kv_len(name: &str, value: &Json, double: bool) -> Option<usize> {
    Some(delimited_len(name.len()) + delimited_len(any_len(value, double)?))
}

fn put_json_kv_body(buf: &mut Vec<u8>, name: &str, value: &Json, double: bool) {
    put_kv_key(buf, name);
    if let Some(len) = any_len(value, double) {
        put_header(buf, 2, len);
        put_any(buf, value, double);
    }
}

/// Adds an attribute from a JSON value (`double`: numbers as doubles); nothing for null.
pub(crate) fn attribute(
    writer: &mut Writer,
    name: &str,
    value: &Json,
    double: bool,
    span_leaves_out: bool,
) {
    if json_kv_len(name, value, double).is_some() {
        put_json_kv_body(writer.buf(), name, value, double);
        writer.end(span_leaves_out);
    }
}

/// Writes the fields of one JSON event line as attributes, as [`attribute_key`] names them
/// (durations, `*_s`, as doubles); spans leave out the timeline and the start.
struct JsonFields<'w> {
    writer: &'w mut Writer,
}

impl<'de> Visitor<'de> for JsonFields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys are plain ASCII names: borrowed from the line.
        while let Some(field) = map.next_key::<&'de str>()? {
            let value: Json = map.next_value()?;
            let name = match attribute_key(field) {
                AttributeKey::Carried => continue,
                AttributeKey::Conventional(name) => name.to_owned(),
                AttributeKey::Own => format!("tcpobs.{field}"),
            };
            let not_on_span = matches!(field, "phases" | "start");
            attribute(
                self.writer,
                &name,
                &value,
                field.ends_with("_s"),
                not_on_span,
            );
        }
        Ok(())
    }
}

/// The attributes of a JSON event line (none if it is not one).
pub(crate) fn from_event(line: &[u8]) -> Attributes {
    let mut writer = Writer::default();
    let parsed = serde_json::Deserializer::from_slice(line).deserialize_map(JsonFields {
        writer: &mut writer,
    });
    if parsed.is_err() {
        return Attributes::default();
    }
    writer.finish()
}
