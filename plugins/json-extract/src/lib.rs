//! Replaces a JSON message's value (or sets its key) with one of its fields.
//!
//! Config:
//! - `field` (required): the field to extract; a dotted path such as `user.id`
//!   (a segment that is a number also indexes into an array).
//! - `into` (optional, `"value"` | `"key"`, default `"value"`): `value` replaces
//!   the value with the field, `key` sets the key from the field and keeps the
//!   value.
//!
//! A string field becomes its raw UTF-8 bytes (no quotes); any other JSON
//! value becomes its JSON text. A missing field or a value that is not JSON
//! fails the message.

use serde_json::Value;
use weir_sdk::{Config, Message, Outcome, Processor};

enum Target {
    Value,
    Key,
}

struct JsonExtract {
    field: String,
    path: Vec<String>,
    into: Target,
}

impl Processor for JsonExtract {
    fn init(config: Config) -> Result<Self, String> {
        let field = config.require("field")?;
        let into = match config.get("into").unwrap_or("value") {
            "value" => Target::Value,
            "key" => Target::Key,
            other => {
                return Err(format!("config key `into` = {other:?}: expected \"value\" or \"key\""));
            }
        };
        Ok(JsonExtract {
            field: field.to_owned(),
            path: parse_path(field).map_err(|e| format!("config key `field`: {e}"))?,
            into,
        })
    }

    fn process(&mut self, message: Message) -> Outcome {
        let json: Value = match message.json() {
            Ok(json) => json,
            Err(e) => return Outcome::fail(e),
        };
        let Some(field) = lookup(&json, &self.path) else {
            return Outcome::fail(format!("field `{}` not found in value", self.field));
        };
        let bytes = match field {
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let output = message.into_output();
        Outcome::one(match self.into {
            Target::Value => output.with_value(bytes),
            Target::Key => output.with_key(bytes),
        })
    }
}

/// Splits a dotted path, refusing empty paths and empty segments.
fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!("{path:?} is not a valid dotted path"));
    }
    Ok(segments)
}

/// Follows a dotted path through objects (by name) and arrays (by index).
fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

weir_sdk::export_processor!(JsonExtract);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)], value: &str) -> Result<(Option<Vec<u8>>, Vec<u8>), String> {
        let config = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut extract = JsonExtract::init(Config::new(config))?;
        let message = Message {
            key: Some(b"k".to_vec()),
            value: value.into(),
            headers: vec![],
            timestamp_ms: None,
            origin: None,
        };
        match extract.process(message) {
            Outcome::Emit(mut outputs) if outputs.len() == 1 => {
                let output = outputs.remove(0);
                Ok((output.key, output.value))
            }
            Outcome::Emit(outputs) => panic!("{} outputs", outputs.len()),
            Outcome::Fail(reason) => Err(reason),
        }
    }

    #[test]
    fn extracts_into_value_and_key() {
        let doc = r#"{"user":{"name":"ann","tags":[1,2]},"n":4}"#;
        assert_eq!(run(&[("field", "user.name")], doc).unwrap().1, b"ann");
        assert_eq!(run(&[("field", "user.tags")], doc).unwrap().1, b"[1,2]");
        assert_eq!(run(&[("field", "user.tags.1")], doc).unwrap().1, b"2");
        let (key, value) = run(&[("field", "n"), ("into", "key")], doc).unwrap();
        assert_eq!(key.as_deref(), Some(&b"4"[..]));
        assert_eq!(value, doc.as_bytes());
    }

    #[test]
    fn fails_on_missing_field_bad_json_and_bad_config() {
        assert!(run(&[("field", "x.y")], "{}").unwrap_err().contains("`x.y`"));
        assert!(run(&[("field", "x")], "{").unwrap_err().contains("JSON"));
        assert!(run(&[("field", "x"), ("into", "header")], "{}").unwrap_err().contains("`into`"));
        assert!(run(&[], "{}").unwrap_err().contains("`field`"));
    }
}
