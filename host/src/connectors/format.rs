//! Line formats of file and stdio connectors.
//!
//! - `raw`: one line is one value.
//! - `ndjson`: one JSON envelope per line:
//!   `{"key": "...", "value": "...", "headers": {"name": "value"}, "timestamp_ms": 0}`.
//!   `key`, `headers` and `timestamp_ms` are optional; `key_b64` / `value_b64`
//!   (and `headers_b64` for header values) carry bytes that are not UTF-8.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::config::Format;
use crate::message::{Header, Message};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    key: Option<String>,
    key_b64: Option<String>,
    value: Option<serde_json::Value>,
    value_b64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    headers_b64: BTreeMap<String, String>,
    timestamp_ms: Option<u64>,
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
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers_b64: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp_ms: Option<u64>,
}

/// Decodes one line (without its newline).
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
        (Some(serde_json::Value::String(s)), None) => s.into_bytes(),
        // A JSON value that is not a string is kept as its JSON text, so
        // `{"value": {"a": 1}}` carries the object.
        (Some(other), None) => other.to_string().into_bytes(),
        (None, Some(v)) => b64("value_b64", &v)?,
        (None, None) => return Err("envelope has no `value` (or `value_b64`)".into()),
    };
    let mut headers: Vec<Header> =
        envelope.headers.into_iter().map(|(name, value)| Header { name, value: value.into_bytes() }).collect();
    for (name, value) in envelope.headers_b64 {
        let value = b64("headers_b64", &value)?;
        headers.push(Header { name, value });
    }
    Ok(Message { key, value, headers, timestamp_ms: envelope.timestamp_ms, origin: None })
}

/// Appends one encoded line, with its newline, to `out`.
pub fn encode(format: Format, message: &Message, out: &mut Vec<u8>) {
    match format {
        Format::Raw => out.extend_from_slice(&message.value),
        Format::Ndjson => encode_envelope(message, out),
    }
    out.push(b'\n');
}

fn encode_envelope(message: &Message, out: &mut Vec<u8>) {
    let text_or_b64 = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(_) => (true, None),
        Err(_) => (false, Some(B64.encode(bytes))),
    };
    let (key, key_b64) = match message.key.as_deref() {
        None => (None, None),
        Some(k) => match text_or_b64(k) {
            (true, _) => (std::str::from_utf8(k).ok(), None),
            (false, b) => (None, b),
        },
    };
    let (value, value_b64) = match text_or_b64(&message.value) {
        (true, _) => (std::str::from_utf8(&message.value).ok(), None),
        (false, b) => (None, b),
    };
    let mut headers = BTreeMap::new();
    let mut headers_b64 = BTreeMap::new();
    for h in &message.headers {
        match std::str::from_utf8(&h.value) {
            Ok(text) => {
                headers.insert(h.name.as_str(), text);
            }
            Err(_) => {
                headers_b64.insert(h.name.as_str(), B64.encode(&h.value));
            }
        }
    }
    let envelope =
        EnvelopeOut { key, key_b64, value, value_b64, headers, headers_b64, timestamp_ms: message.timestamp_ms };
    serde_json::to_writer(&mut *out, &envelope).expect("serialising to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_round_trips_binary_and_text() {
        let message = Message::from_value(vec![0xff, 0x00, b'a'])
            .with_key(b"k\xfe".to_vec())
            .with_header("h", "text")
            .with_header("bin", vec![0x80]);
        let mut line = Vec::new();
        encode(Format::Ndjson, &message, &mut line);
        let back = decode(Format::Ndjson, line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(back.key, message.key);
        assert_eq!(back.value, message.value);
        assert_eq!(back.header("h"), Some(&b"text"[..]));
        assert_eq!(back.header("bin"), Some(&[0x80u8][..]));
    }

    #[test]
    fn ndjson_errors_name_the_problem() {
        assert!(decode(Format::Ndjson, b"hello").unwrap_err().contains("format = \"raw\""));
        assert!(decode(Format::Ndjson, br#"{"key":"k"}"#).unwrap_err().contains("no `value`"));
        assert!(decode(Format::Ndjson, br#"{"value":"v","extra":1}"#).unwrap_err().contains("extra"));
    }

    #[test]
    fn json_values_that_are_not_strings_keep_their_text() {
        let m = decode(Format::Ndjson, br#"{"value":{"a":1}}"#).unwrap();
        assert_eq!(m.value, br#"{"a":1}"#);
    }
}
