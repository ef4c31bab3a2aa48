//! Flat-maps each message into one message per line of its value.
//!
//! Lines are split on `\n` and lose one trailing `\r`; a final `\n` ends the
//! last line rather than starting an empty one. Every output keeps the key,
//! headers and timestamp of its input and gains the header `weir-split-index`:
//! its position among the outputs of that input (`0`, `1`, ...), as decimal
//! text. The value need not be UTF-8.
//!
//! Config:
//! - `keep_empty` (optional, `"true"` | `"false"`, default `"false"`): also
//!   emit empty lines. A message with no lines at all is filtered out.

use weir_sdk::{Config, Message, Outcome, Output, Processor};

const INDEX_HEADER: &str = "weir-split-index";

struct SplitLines {
    keep_empty: bool,
}

impl Processor for SplitLines {
    fn init(config: Config) -> Result<Self, String> {
        Ok(SplitLines { keep_empty: config.parse_or("keep_empty", false)? })
    }

    fn process(&mut self, message: Message) -> Outcome {
        let mut template = message.into_output();
        let value = std::mem::take(&mut template.value);
        if value.is_empty() {
            return Outcome::drop();
        }
        let body = value.strip_suffix(b"\n").unwrap_or(&value);
        let lines = body
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| self.keep_empty || !line.is_empty());
        Outcome::many(lines.enumerate().map(|(index, line)| line_output(&template, index, line)))
    }
}

fn line_output(template: &Output, index: usize, line: &[u8]) -> Output {
    template.clone().with_value(line).with_header(INDEX_HEADER, index.to_string())
}

weir_sdk::export_processor!(SplitLines);

#[cfg(test)]
mod tests {
    use super::*;

    fn split(keep_empty: &str, value: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let config = vec![("keep_empty".to_string(), keep_empty.to_string())];
        let mut splitter = SplitLines::init(Config::new(config)).expect("valid config");
        let message = Message {
            key: Some(b"k".to_vec()),
            value: value.to_vec(),
            headers: vec![],
            timestamp_ms: Some(7),
            origin: None,
        };
        let Outcome::Emit(outputs) = splitter.process(message) else { panic!("failed") };
        outputs
            .into_iter()
            .map(|o| {
                assert_eq!((o.key.as_deref(), o.timestamp_ms), (Some(&b"k"[..]), Some(7)));
                let index = o.headers.iter().find(|h| h.name == INDEX_HEADER).expect("index header").value.clone();
                (o.value, index)
            })
            .collect()
    }

    fn pair(value: &str, index: &str) -> (Vec<u8>, Vec<u8>) {
        (value.into(), index.into())
    }

    #[test]
    fn splits_lines() {
        assert_eq!(split("false", b"a\r\n\nb\n"), vec![pair("a", "0"), pair("b", "1")]);
        assert_eq!(split("true", b"a\r\n\nb\n"), vec![pair("a", "0"), pair("", "1"), pair("b", "2")]);
        assert_eq!(split("true", b"\n"), vec![pair("", "0")]);
        assert!(split("true", b"").is_empty());
        assert!(split("false", b"\n\r\n").is_empty());
    }
}
