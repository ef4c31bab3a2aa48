//! The field layout of an entry, both ways (see the module documentation of
//! [`super`]), and the parsing of `XREADGROUP` / `XAUTOCLAIM` replies.

use ::redis::{Cmd, Value};
use anyhow::{Result, anyhow};

use crate::message::{Header, Message};

/// Field names of the layout.
pub(super) const F_VALUE: &[u8] = b"value";
const F_KEY: &[u8] = b"key";
const F_TS: &[u8] = b"ts";
const F_HEADER: &[u8] = b"h:";

/// Appends `message`'s fields to an `XADD` command.
pub(super) fn encode(cmd: &mut Cmd, message: &Message) {
    cmd.arg(F_VALUE).arg(&message.value);
    if let Some(key) = &message.key {
        cmd.arg(F_KEY).arg(key);
    }
    if let Some(ts) = message.timestamp_ms {
        cmd.arg(F_TS).arg(ts.to_string());
    }
    for header in &message.headers {
        let mut name = Vec::with_capacity(F_HEADER.len() + header.name.len());
        name.extend_from_slice(F_HEADER);
        name.extend_from_slice(header.name.as_bytes());
        cmd.arg(name).arg(&header.value);
    }
}

/// Builds a message from an entry's fields.
pub(super) fn decode(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Message, String> {
    let mut message = Message::from_value(Vec::new());
    for (name, value) in fields {
        if name == F_VALUE {
            message.value = value;
        } else if name == F_KEY {
            message.key = Some(value);
        } else if let Some(ts) = (name == F_TS).then(|| std::str::from_utf8(&value).ok()?.parse::<u64>().ok()).flatten()
        {
            message.timestamp_ms = Some(ts);
        } else {
            let header = name.strip_prefix(F_HEADER).unwrap_or(&name);
            let header = String::from_utf8(header.to_vec())
                .map_err(|_| format!("field name {:?} is not UTF-8", String::from_utf8_lossy(&name)))?;
            message.headers.push(Header { name: header, value });
        }
    }
    Ok(message)
}

/// One stream entry; `fields` is `None` when it was deleted while pending.
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

pub(super) fn bytes(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(anyhow!("unexpected reply element {other:?}")),
    }
}

pub(super) fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(anyhow!("expected an array, got {other:?}")),
    }
}

pub(super) fn entries(value: Value) -> Result<Vec<Entry>> {
    array(value)?
        .into_iter()
        .map(|entry| {
            let mut parts = array(entry)?.into_iter();
            let id = String::from_utf8(bytes(parts.next().ok_or_else(|| anyhow!("entry without an ID"))?)?)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(list) => {
                    let mut flat = array(list)?.into_iter();
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        fields.push((bytes(name)?, bytes(value)?));
                    }
                    Some(fields)
                }
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// An `XREADGROUP` reply: entries per stream name.
pub(super) fn read_reply(value: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        other => array(other)?
            .into_iter()
            .map(|item| {
                let mut parts = array(item)?.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(name), Some(list)) => Ok((name, list)),
                    _ => Err(anyhow!("malformed XREADGROUP reply")),
                }
            })
            .collect::<Result<_>>()?,
    };
    pairs.into_iter().map(|(name, list)| Ok((String::from_utf8(bytes(name)?)?, entries(list)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &Message) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut cmd = ::redis::cmd("XADD");
        encode(&mut cmd, message);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .skip(1) // the command name
            .map(|a| match a {
                ::redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        args.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect()
    }

    #[test]
    fn layout_round_trips_binary_messages() {
        let message = Message {
            key: Some(vec![0xff, 0, 0xfe]),
            value: vec![0x80, b'\n', 0, 0xc3],
            headers: vec![
                Header { name: "a".into(), value: vec![0xff] },
                Header { name: "a".into(), value: vec![] },
                Header { name: "ts".into(), value: b"x".to_vec() },
            ],
            timestamp_ms: Some(1_700_000_000_123),
            origin: None,
        };
        let back = decode(fields(&message)).unwrap();
        assert_eq!(back.key, message.key);
        assert_eq!(back.value, message.value);
        assert_eq!(back.timestamp_ms, message.timestamp_ms);
        let headers = |m: &Message| m.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect::<Vec<_>>();
        assert_eq!(headers(&back), headers(&message));
        let bare = decode(fields(&Message::from_value(Vec::new()))).unwrap();
        assert!(bare.key.is_none() && bare.value.is_empty() && bare.headers.is_empty() && bare.timestamp_ms.is_none());
    }

    #[test]
    fn foreign_fields_become_headers() {
        let m = decode(vec![(b"temp".to_vec(), b"20".to_vec()), (b"ts".to_vec(), b"soon".to_vec())]).unwrap();
        assert_eq!(m.value, b"");
        assert_eq!(m.header("temp"), Some(&b"20"[..]));
        assert_eq!(m.header("ts"), Some(&b"soon"[..]));
        assert_eq!(m.timestamp_ms, None);
        assert!(decode(vec![(vec![0xff], b"1".to_vec())]).is_err());
    }
}
