//! Line formats of file and stdio connectors. A record ends at `\n`; nothing
//! else in the line is interpreted or dropped.
//!
//! - `raw`: the value is the line's bytes, exactly (a `\r` before the `\n`
//!   is part of the value). A value containing `\n` cannot be written: the
//!   write is refused ([`Refused`]).
//! - `ndjson`: one JSON envelope per line:
//!   `{"key": "...", "value": "...", "headers": {"name": "value"}, "timestamp_ms": 0}`.
//!   `key`, `headers` and `timestamp_ms` are optional; `key_b64` / `value_b64`
//!   (and `headers_b64` for header values) carry bytes that are not UTF-8. A
//!   `value` that is a JSON string is its UTF-8 text; any other JSON value
//!   is its JSON text exactly as written (key order, number text, spacing).
//!   `headers` is an object (read in order, a repeated name kept) or an
//!   array of `{"name": .., "value": ..}` / `{"name": .., "value_b64": ..}`
//!   entries; the writer uses the array only when the object form would not
//!   give the same headers back (a repeated name, or a binary value before
//!   a text one).

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Refused;
use crate::config::Format;
use crate::message::{Header, Message};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    key: Option<String>,
    key_b64: Option<String>,
    /// Kept as written, so a JSON value passes through byte for byte.
    value: Option<Box<RawValue>>,
    value_b64: Option<String>,
    #[serde(default)]
    headers: HeadersIn,
    #[serde(default)]
    headers_b64: HeadersIn,
    timestamp_ms: Option<u64>,
}

/// A header's value as it appears in an envelope.
enum HeaderText {
    Text(String),
    B64(String),
}

/// Headers in document order, duplicates kept (the object form's values are
/// text, or base64 under `headers_b64`).
#[derive(Default)]
struct HeadersIn(Vec<(String, HeaderText)>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderEntry {
    name: String,
    value: Option<String>,
    value_b64: Option<String>,
}

impl<'de> Deserialize<'de> for HeadersIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = HeadersIn;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an object {"name": "value"} or an array of {"name": .., "value": ..} entries"#)
            }

            // A serde map would keep only the last of two equal names.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeadersIn, A::Error> {
                let mut headers = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    headers.push((name, HeaderText::Text(value)));
                }
                Ok(HeadersIn(headers))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeadersIn, A::Error> {
                let mut headers = Vec::new();
                while let Some(entry) = seq.next_element::<HeaderEntry>()? {
                    let value = match (entry.value, entry.value_b64) {
                        (Some(text), None) => HeaderText::Text(text),
                        (None, Some(b64)) => HeaderText::B64(b64),
                        _ => {
                            return Err(de::Error::custom(format!(
                                "header `{}` needs exactly one of `value` and `value_b64`",
                                entry.name
                            )));
                        }
                    };
                    headers.push((entry.name, value));
                }
                Ok(HeadersIn(headers))
            }
        }
        deserializer.deserialize_any(HeadersVisitor)
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
    #[serde(skip_serializing_if = "HeadersOut::is_empty")]
    headers: HeadersOut<'a>,
    #[serde(skip_serializing_if = "HeadersOut::is_empty")]
    headers_b64: HeadersOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp_ms: Option<u64>,
}

/// Headers to write: an object in message order, or the array form.
enum HeadersOut<'a> {
    Object(Vec<(&'a str, Cow<'a, str>)>),
    Array(Vec<EntryOut<'a>>),
}

#[derive(Serialize)]
struct EntryOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
}

impl HeadersOut<'_> {
    fn is_empty(&self) -> bool {
        match self {
            HeadersOut::Object(entries) => entries.is_empty(),
            HeadersOut::Array(entries) => entries.is_empty(),
        }
    }
}

impl Serialize for HeadersOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HeadersOut::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (name, value) in entries {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
            HeadersOut::Array(entries) => entries.serialize(serializer),
        }
    }
}

/// Decodes one line (without its `\n`).
pub fn decode(format: Format, line: &[u8]) -> Result<Message, String> {
    match format {
        Format::Raw => Ok(Message::from_value(line.to_vec())),
        Format::Ndjson => decode_envelope(line),
    }
}

fn decode_envelope(line: &[u8]) -> Result<Message, String> {
    let envelope: EnvelopeIn = serde_json::from_slice(line).map_err(|e| {
        let hint = if line.first() == Some(&b'{') { "" } else { " (for plain lines set format = \"raw\")" };
        format!("not an ndjson envelope: {e}{hint}")
    })?;
    let b64 = |field: &str, text: &str| B64.decode(text).map_err(|e| format!("`{field}` is not valid base64: {e}"));
    let key = match (envelope.key, envelope.key_b64) {
        (Some(_), Some(_)) => return Err("envelope has both `key` and `key_b64`".into()),
        (Some(k), None) => Some(k.into_bytes()),
        (None, Some(k)) => Some(b64("key_b64", &k)?),
        (None, None) => None,
    };
    let value = match (envelope.value, envelope.value_b64) {
        (Some(_), Some(_)) => return Err("envelope has both `value` and `value_b64`".into()),
        (Some(raw), None) if raw.get().starts_with('"') => {
            serde_json::from_str::<String>(raw.get()).map_err(|e| format!("`value`: {e}"))?.into_bytes()
        }
        // Any other JSON value is its text as written: `{"value": {"a": 1}}`
        // carries the object, numbers and key order untouched.
        (Some(raw), None) => raw.get().as_bytes().to_vec(),
        (None, Some(v)) => b64("value_b64", &v)?,
        (None, None) => return Err("envelope has no `value` (or `value_b64`)".into()),
    };
    let mut headers = Vec::with_capacity(envelope.headers.0.len() + envelope.headers_b64.0.len());
    for (name, text) in envelope.headers.0 {
        let value = match text {
            HeaderText::Text(text) => text.into_bytes(),
            HeaderText::B64(encoded) => b64("headers[].value_b64", &encoded)?,
        };
        headers.push(Header { name, value });
    }
    for (name, text) in envelope.headers_b64.0 {
        let (HeaderText::Text(encoded) | HeaderText::B64(encoded)) = text;
        headers.push(Header { name, value: b64("headers_b64", &encoded)? });
    }
    Ok(Message { key, value, headers, timestamp_ms: envelope.timestamp_ms, origin: None })
}

/// Appends one encoded line, with its `\n`, to `out`. A raw value is written
/// as it is: check it with [`encode_batch`] where it may hold a `\n`.
pub fn encode(format: Format, message: &Message, out: &mut Vec<u8>) {
    match format {
        Format::Raw => out.extend_from_slice(&message.value),
        Format::Ndjson => encode_envelope(message, out),
    }
    out.push(b'\n');
}

/// Encodes a batch into `out` (cleared first), or refuses it whole when a
/// raw value holds a `\n`: it would be read back as several records.
pub fn encode_batch(format: Format, batch: &[Message], out: &mut Vec<u8>) -> Result<(), Refused> {
    out.clear();
    if format == Format::Raw
        && let Some(index) = batch.iter().position(|m| memchr::memchr(b'\n', &m.value).is_some())
    {
        return Err(Refused(format!(
            "message {} of {} has a value containing a newline, which format = \"raw\" (one value per line) \
             cannot write without splitting it; use format = \"ndjson\"",
            index + 1,
            batch.len()
        )));
    }
    for message in batch {
        encode(format, message, out);
    }
    Ok(())
}

/// UTF-8 bytes as text, others as base64.
fn text_or_b64(bytes: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

fn encode_envelope(message: &Message, out: &mut Vec<u8>) {
    let (key, key_b64) = message.key.as_deref().map_or((None, None), text_or_b64);
    let (value, value_b64) = text_or_b64(&message.value);
    let (headers, headers_b64) = encode_headers(&message.headers);
    let envelope =
        EnvelopeOut { key, key_b64, value, value_b64, headers, headers_b64, timestamp_ms: message.timestamp_ms };
    serde_json::to_writer(&mut *out, &envelope).expect("serialising to a Vec cannot fail");
}

/// The object form (`headers` then `headers_b64`) when it reads back as the
/// same list, else the array form.
fn encode_headers(headers: &[Header]) -> (HeadersOut<'_>, HeadersOut<'_>) {
    let texts: Vec<Option<&str>> = headers.iter().map(|h| std::str::from_utf8(&h.value).ok()).collect();
    let repeated = headers.iter().enumerate().any(|(i, h)| headers[..i].iter().any(|earlier| earlier.name == h.name));
    let text_after_binary = texts.iter().skip_while(|t| t.is_some()).any(Option::is_some);
    if repeated || text_after_binary {
        let entries = headers
            .iter()
            .zip(&texts)
            .map(|(h, text)| EntryOut {
                name: &h.name,
                value: *text,
                value_b64: text.is_none().then(|| B64.encode(&h.value)),
            })
            .collect();
        return (HeadersOut::Array(entries), HeadersOut::Object(Vec::new()));
    }
    let (mut text, mut binary) = (Vec::new(), Vec::new());
    for (h, t) in headers.iter().zip(&texts) {
        match t {
            Some(t) => text.push((h.name.as_str(), Cow::Borrowed(*t))),
            None => binary.push((h.name.as_str(), Cow::Owned(B64.encode(&h.value)))),
        }
    }
    (HeadersOut::Object(text), HeadersOut::Object(binary))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parts = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>, Option<u64>);

    /// What an envelope carries, comparable.
    fn parts(m: &Message) -> Parts {
        let headers = m.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
        (m.key.clone(), m.value.clone(), headers, m.timestamp_ms)
    }

    /// The encoded line, and what decoding it gives back.
    fn round_trip(message: &Message) -> (Vec<u8>, Parts) {
        let mut line = Vec::new();
        encode(Format::Ndjson, message, &mut line);
        let back = decode(Format::Ndjson, line.strip_suffix(b"\n").unwrap()).unwrap();
        (line, parts(&back))
    }

    #[test]
    fn ndjson_round_trips_binary_and_text() {
        let message = Message::from_value(vec![0xff, 0x00, b'a'])
            .with_key(b"k\xfe".to_vec())
            .with_header("h", "text")
            .with_header("bin", vec![0x80]);
        let (line, back) = round_trip(&message);
        assert_eq!(back, parts(&message));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"key_b64\":\"a/4=\",\"value_b64\":\"/wBh\",\"headers\":{\"h\":\"text\"},\"headers_b64\":{\"bin\":\"gA==\"}}\n"
        );
    }

    #[test]
    fn ndjson_errors_name_the_problem() {
        assert!(decode(Format::Ndjson, b"hello").unwrap_err().contains("format = \"raw\""));
        assert!(decode(Format::Ndjson, br#"{"key":"k"}"#).unwrap_err().contains("no `value`"));
        assert!(decode(Format::Ndjson, br#"{"value":"v","extra":1}"#).unwrap_err().contains("extra"));
        let both = decode(Format::Ndjson, br#"{"value":"v","headers":[{"name":"a","value":"x","value_b64":"eA=="}]}"#);
        assert!(both.unwrap_err().contains("exactly one of `value` and `value_b64`"));
    }

    #[test]
    fn json_values_that_are_not_strings_keep_their_text_exactly() {
        let m = decode(Format::Ndjson, br#"{"value":{"b":1, "a":123456789012345678901234567890}}"#).unwrap();
        assert_eq!(m.value, br#"{"b":1, "a":123456789012345678901234567890}"#);
        assert_eq!(decode(Format::Ndjson, br#"{"value":1.50}"#).unwrap().value, b"1.50");
        assert_eq!(decode(Format::Ndjson, br#"{"value":"a\"\u00e9"}"#).unwrap().value, "a\"é".as_bytes());
    }

    #[test]
    fn headers_keep_order_and_repeated_names() {
        let read = decode(Format::Ndjson, br#"{"value":"v","headers":{"z":"1","a":"2","z":"3"}}"#).unwrap();
        let names: Vec<(&str, &[u8])> = read.headers.iter().map(|h| (h.name.as_str(), h.value.as_slice())).collect();
        assert_eq!(names, [("z", &b"1"[..]), ("a", b"2"), ("z", b"3")]);
        let (line, back) = round_trip(&read);
        assert_eq!(back, parts(&read));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"value\":\"v\",\"headers\":[{\"name\":\"z\",\"value\":\"1\"},{\"name\":\"a\",\"value\":\"2\"},\
             {\"name\":\"z\",\"value\":\"3\"}]}\n"
        );
        let mixed = Message::from_value("v").with_header("bin", vec![0x80]).with_header("t", "x");
        assert_eq!(round_trip(&mixed).1, parts(&mixed));
        let unique = Message::from_value("v").with_header("z", "1").with_header("a", "2");
        let (line, back) = round_trip(&unique);
        assert_eq!(back, parts(&unique));
        assert!(String::from_utf8(line).unwrap().contains(r#""headers":{"z":"1","a":"2"}"#));
    }

    #[test]
    fn raw_values_with_a_newline_are_refused() {
        let mut out = Vec::new();
        let ok = [Message::from_value("a\r"), Message::from_value("")];
        encode_batch(Format::Raw, &ok, &mut out).unwrap();
        assert_eq!(out, b"a\r\n\n");
        let bad = [Message::from_value("a"), Message::from_value("b\nc")];
        let refused = encode_batch(Format::Raw, &bad, &mut out).unwrap_err();
        assert!(refused.0.starts_with("message 2 of 2 has a value containing a newline"), "{}", refused.0);
        encode_batch(Format::Ndjson, &bad, &mut out).unwrap();
    }
}
