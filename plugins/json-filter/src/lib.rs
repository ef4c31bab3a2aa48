//! Keeps the messages whose JSON value has a field equal to a given text.
//!
//! Config:
//! - `field` (required): the field to test; a dotted path such as `user.id`
//!   (a segment that is a number also indexes into an array).
//! - `equals` (required): the text to compare with. A string field is compared
//!   by its contents, any other JSON value by its JSON text, so `equals = "3"`
//!   matches both `3` and `"3"`, and `equals = "true"` matches `true`.
//! - `negate` (optional, `"true"` | `"false"`, default `"false"`): keep the
//!   messages that do *not* match instead. A missing field never matches.
//!
//! A value that is not JSON fails the message.
//!
//! The filter only reads: it decides in place, and a kept message is
//! forwarded without being copied.

use serde_json::Value;
use weir_sdk::{Config, Decision, Message, MessageRef, Outcome, Processor};

struct JsonFilter {
    path: Vec<String>,
    equals: String,
    negate: bool,
}

impl Processor for JsonFilter {
    fn init(config: Config) -> Result<Self, String> {
        Ok(JsonFilter {
            path: parse_path(config.require("field")?).map_err(|e| format!("config key `field`: {e}"))?,
            equals: config.require("equals")?.to_owned(),
            negate: config.parse_or("negate", false)?,
        })
    }

    fn decide_in_place(&mut self, message: MessageRef<'_>) -> Option<Decision> {
        Some(self.decide(message))
    }

    fn process(&mut self, message: Message) -> Outcome {
        match self.decide(MessageRef::from(&message)) {
            Decision::Keep => Outcome::one(message),
            Decision::Drop => Outcome::drop(),
            Decision::Fail(reason) => Outcome::fail(reason),
        }
    }
}

impl JsonFilter {
    fn decide(&self, message: MessageRef<'_>) -> Decision {
        let json: Value = match message.json() {
            Ok(json) => json,
            Err(e) => return Decision::Fail(e),
        };
        let matches = lookup(&json, &self.path).is_some_and(|field| text_form(field) == self.equals);
        if matches == self.negate { Decision::Drop } else { Decision::Keep }
    }
}

/// A string's contents, or any other value's JSON text.
fn text_form(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
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

weir_sdk::export_processor!(JsonFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pairs: &[(&str, &str)]) -> JsonFilter {
        let config = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        JsonFilter::init(Config::new(config)).expect("valid config")
    }

    fn kept(filter: &mut JsonFilter, value: &str) -> bool {
        let message = Message { key: None, value: value.into(), headers: vec![], timestamp_ms: None, origin: None };
        match filter.process(message) {
            Outcome::Emit(outputs) => !outputs.is_empty(),
            Outcome::Fail(reason) => panic!("failed: {reason}"),
        }
    }

    #[test]
    fn compares_strings_numbers_and_nested_fields() {
        let mut f = filter(&[("field", "a.b"), ("equals", "3")]);
        assert!(kept(&mut f, r#"{"a":{"b":3}}"#));
        assert!(kept(&mut f, r#"{"a":{"b":"3"}}"#));
        assert!(!kept(&mut f, r#"{"a":{"b":"\"3\""}}"#));
        assert!(!kept(&mut f, r#"{"a":{}}"#));
        let mut f = filter(&[("field", "ok"), ("equals", "true"), ("negate", "true")]);
        assert!(!kept(&mut f, r#"{"ok":true}"#));
        assert!(kept(&mut f, r#"{"ok":false}"#));
        assert!(kept(&mut f, r#"{}"#));
    }

    #[test]
    fn refuses_bad_config_and_fails_non_json() {
        let err = |pairs: &[(&str, &str)]| {
            let config = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            JsonFilter::init(Config::new(config)).err().expect("refused")
        };
        assert!(err(&[("equals", "x")]).contains("`field`"));
        assert!(err(&[("field", "a")]).contains("`equals`"));
        assert!(err(&[("field", "a..b"), ("equals", "x")]).contains("`field`"));
        assert!(err(&[("field", "a"), ("equals", "x"), ("negate", "yes")]).contains("`negate`"));
        let mut f = filter(&[("field", "a"), ("equals", "x")]);
        let message = Message { key: None, value: b"nope".to_vec(), headers: vec![], timestamp_ms: None, origin: None };
        assert!(matches!(f.process(message), Outcome::Fail(reason) if reason.contains("JSON")));
    }
}
