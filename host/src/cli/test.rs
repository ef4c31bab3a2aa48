//! `weir test PLUGIN --input IN.ndjson --expect OUT.ndjson [--config k=v]...`:
//! runs a plugin over fixture files, without any connector, and compares what
//! it produced with what was expected (like Fluvio's `smdk test`).
//!
//! The input file is ndjson envelopes, as a `file://` source reads them. The
//! expected file has one line per output, in input order (each input's
//! outputs in the order the plugin emitted them), and one `{"fail": "reason"}`
//! line for an input the plugin failed; a dropped input has no line:
//!
//! ```text
//! {"key": "alice", "value": "{\"a\":1}", "headers": {"region": "eu"}, "route": "alerts"}
//! {"fail": "missing field: user"}
//! ```
//!
//! An output line matches when its `value` (a string: exact text; any other
//! JSON value: the output parsed as JSON equals it; or `value_b64`), `key`
//! (absent or null: no key), `headers` (absent: none) and `route` (absent or
//! null: the default next hop) all match; `timestamp_ms` is compared only
//! when the expected line has one. `{"fail": true}` matches any failure. A
//! trap (panic, deadline, memory cap) counts as a failure with its reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, report_error};
use crate::config::Format;
use crate::connectors::format;
use crate::message::{Message, Outcome, Output};
use crate::plugin::{Instance, Plugin, Runtime, StageContext, World};

/// Inputs per component call, like a stage's default batch.
const BATCH: usize = 256;

/// What became of the fixture's inputs, one line each.
#[derive(Debug)]
enum Actual {
    Output(Output),
    Fail(String),
}

pub(super) fn test(plugin: &Path, input: &Path, expect: &Path, config: &[String]) -> i32 {
    match run(plugin, input, expect, config) {
        Ok(code) => code,
        Err((code, message)) => {
            report_error(message);
            code
        }
    }
}

type Failure = (i32, String);

fn usage(message: impl std::fmt::Display) -> Failure {
    (EXIT_USAGE, message.to_string())
}

fn run(plugin: &Path, input: &Path, expect: &Path, config: &[String]) -> Result<i32, Failure> {
    let config = parse_config(config)?;
    let inputs = read_inputs(input)?;
    let expected = read_expected(expect)?;
    let wasm: PathBuf = if plugin.is_dir() {
        crate::plugin::build::build(plugin).map_err(|e| usage(format!("{e:#}")))?
    } else {
        plugin.to_path_buf()
    };
    let runtime = Runtime::new().map_err(|e| (EXIT_RUNTIME, format!("{e:#}")))?;
    let loaded = runtime.load_file(&wasm).map_err(|e| usage(format!("{e:#}")))?;
    let stage = Arc::new(StageContext::new("test", config));
    let actual = match loaded.world() {
        World::Processor => run_processor(&loaded, &stage, &inputs)?,
        World::Aggregator => run_aggregator(&loaded, &stage, &inputs)?,
    };
    let actual: Vec<Value> = actual.iter().map(render).collect();
    Ok(compare(&inputs, &actual, &expected, expect))
}

fn parse_config(pairs: &[String]) -> Result<Vec<(String, String)>, Failure> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(usage(format!("--config {pair:?}: expected KEY=VALUE"))),
        })
        .collect()
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
    Ok(text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.to_string())).collect())
}

fn read_inputs(path: &Path) -> Result<Vec<Message>, Failure> {
    read_lines(path)?
        .into_iter()
        .map(|(n, line)| {
            format::decode(Format::Ndjson, line.as_bytes()).map_err(|e| usage(format!("{}:{n}: {e}", path.display())))
        })
        .collect()
}

fn read_expected(path: &Path) -> Result<Vec<Value>, Failure> {
    read_lines(path)?
        .into_iter()
        .map(|(n, line)| {
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| usage(format!("{}:{n}: not a JSON line: {e}", path.display())))?;
            let Some(object) = value.as_object() else {
                return Err(usage(format!("{}:{n}: expected a JSON object", path.display())));
            };
            let known = ["key", "key_b64", "value", "value_b64", "headers", "headers_b64", "timestamp_ms", "route"];
            if object.contains_key("fail") {
                if object.len() != 1 || !(object["fail"].is_string() || object["fail"] == Value::Bool(true)) {
                    return Err(usage(format!(
                        "{}:{n}: a failure line is {{\"fail\": \"reason\"}} or {{\"fail\": true}}",
                        path.display()
                    )));
                }
            } else if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(usage(format!("{}:{n}: unknown field `{unknown}`", path.display())));
            } else if !object.contains_key("value") && !object.contains_key("value_b64") {
                return Err(usage(format!("{}:{n}: an output line needs `value` (or `value_b64`)", path.display())));
            }
            Ok(value)
        })
        .collect()
}

fn init(plugin: &Plugin, stage: &Arc<StageContext>) -> Result<Instance, Failure> {
    Instance::new(plugin, stage.clone()).map_err(|e| usage(format!("the plugin refused to start: {e}")))
}

fn run_processor(plugin: &Plugin, stage: &Arc<StageContext>, inputs: &[Message]) -> Result<Vec<Actual>, Failure> {
    let mut instance = init(plugin, stage)?;
    let mut actual = Vec::new();
    for batch in inputs.chunks(BATCH) {
        match instance.process(batch) {
            Ok(outcomes) => outcomes.into_iter().zip(batch).for_each(|(o, m)| push_outcome(&mut actual, o, m)),
            Err(_) => {
                // A trap poisons the instance: replay the batch one message at
                // a time on fresh instances to find which message(s) trap.
                for message in batch {
                    instance = init(plugin, stage)?;
                    match instance.process(std::slice::from_ref(message)) {
                        Ok(outcomes) => outcomes.into_iter().for_each(|o| push_outcome(&mut actual, o, message)),
                        Err(e) => actual.push(Actual::Fail(e.to_string())),
                    }
                }
                instance = init(plugin, stage)?;
            }
        }
    }
    Ok(actual)
}

fn push_outcome(actual: &mut Vec<Actual>, outcome: Outcome, input: &Message) {
    match outcome {
        Outcome::Emit(outputs) => actual.extend(outputs.into_iter().map(Actual::Output)),
        Outcome::Keep => {
            let Message { key, value, headers, timestamp_ms, .. } = input.clone();
            actual.push(Actual::Output(Output { key, value, headers, timestamp_ms, route: None }));
        }
        Outcome::Fail(reason) => actual.push(Actual::Fail(reason)),
    }
}

fn run_aggregator(plugin: &Plugin, stage: &Arc<StageContext>, inputs: &[Message]) -> Result<Vec<Actual>, Failure> {
    let mut instance = init(plugin, stage)?;
    Ok(match instance.process_batch(None, inputs) {
        Ok(Ok(outputs)) => outputs.into_iter().map(Actual::Output).collect(),
        Ok(Err(reason)) => vec![Actual::Fail(reason)],
        Err(e) => vec![Actual::Fail(e.to_string())],
    })
}

/// An actual outcome as an expected-file line.
fn render(actual: &Actual) -> Value {
    let output = match actual {
        Actual::Fail(reason) => return json!({ "fail": reason }),
        Actual::Output(output) => output,
    };
    let message = Message {
        key: output.key.clone(),
        value: output.value.clone(),
        headers: output.headers.clone(),
        timestamp_ms: output.timestamp_ms,
        origin: None,
    };
    let mut line = Vec::new();
    format::encode(Format::Ndjson, &message, &mut line);
    let mut value: Value = serde_json::from_slice(&line).expect("an envelope is JSON");
    if let (Some(route), Some(object)) = (&output.route, value.as_object_mut()) {
        object.insert("route".into(), Value::String(route.clone()));
    }
    value
}

/// Whether an actual line (as rendered) satisfies an expected line.
fn matches(actual: &Value, expected: &Value) -> bool {
    let (Some(actual), Some(expected)) = (actual.as_object(), expected.as_object()) else { return false };
    if let Some(fail) = expected.get("fail") {
        return match actual.get("fail") {
            Some(reason) => fail == &Value::Bool(true) || fail == reason,
            None => false,
        };
    }
    if actual.contains_key("fail") {
        return false;
    }
    let field = |object: &Map<String, Value>, name: &str| object.get(name).cloned().unwrap_or(Value::Null);
    let actual_text = actual.get("value").and_then(Value::as_str);
    let value_matches = match expected.get("value") {
        Some(Value::String(e)) => actual_text == Some(e.as_str()),
        Some(e) => actual_text.and_then(|a| serde_json::from_str::<Value>(a).ok()).as_ref() == Some(e),
        None => decoded(expected, "value_b64") == decoded(actual, "value_b64").or_else(|| text_bytes(actual)),
    };
    let headers = |object: &Map<String, Value>| -> BTreeMap<String, Value> {
        ["headers", "headers_b64"]
            .iter()
            .filter_map(|f| object.get(*f).and_then(Value::as_object))
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    };
    let key_matches = match (expected.get("key_b64"), actual.get("key_b64")) {
        (Some(_), _) | (_, Some(_)) => decoded(expected, "key_b64") == decoded(actual, "key_b64"),
        (None, None) => field(expected, "key") == field(actual, "key"),
    };
    value_matches
        && key_matches
        && headers(expected) == headers(actual)
        && field(expected, "route") == field(actual, "route")
        && (!expected.contains_key("timestamp_ms") || field(expected, "timestamp_ms") == field(actual, "timestamp_ms"))
}

fn decoded(object: &Map<String, Value>, field: &str) -> Option<Vec<u8>> {
    object.get(field).and_then(Value::as_str).and_then(|s| B64.decode(s).ok())
}

fn text_bytes(object: &Map<String, Value>) -> Option<Vec<u8>> {
    object.get("value").and_then(Value::as_str).map(|s| s.as_bytes().to_vec())
}

/// Compares line by line, prints a readable report, returns the exit code.
fn compare(inputs: &[Message], actual: &[Value], expected: &[Value], expect_path: &Path) -> i32 {
    let fails = actual.iter().filter(|a| a.get("fail").is_some()).count();
    let summary = format!("{} inputs → {} outputs, {} failed", inputs.len(), actual.len() - fails, fails);
    let mismatched: Vec<usize> = (0..actual.len().max(expected.len()))
        .filter(|&i| match (actual.get(i), expected.get(i)) {
            (Some(a), Some(e)) => !matches(a, e),
            _ => true,
        })
        .collect();
    if mismatched.is_empty() {
        println!("ok: {} lines match {} ({summary})", expected.len(), expect_path.display());
        return EXIT_OK;
    }
    println!("FAILED: output differs from {} ({summary})", expect_path.display());
    println!("  (- expected, + actual; line numbers count the expected file's lines)");
    for &i in &mismatched {
        println!("line {}:", i + 1);
        match expected.get(i) {
            Some(e) => println!("  - {e}"),
            None => println!("  - (no line)"),
        }
        match actual.get(i) {
            Some(a) => println!("  + {a}"),
            None => println!("  + (no line)"),
        }
    }
    println!(
        "{} of {} lines differ ({} expected, {} actual). The actual output, in the expected file's format:",
        mismatched.len(),
        actual.len().max(expected.len()),
        expected.len(),
        actual.len()
    );
    for line in actual {
        println!("{line}");
    }
    EXIT_RUNTIME
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(key: Option<&str>, value: &str, route: Option<&str>) -> Value {
        render(&Actual::Output(Output {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            headers: vec![crate::message::Header { name: "h".into(), value: b"v".to_vec() }],
            timestamp_ms: Some(5),
            route: route.map(str::to_string),
        }))
    }

    #[test]
    fn lines_match_by_value_key_headers_and_route() {
        let a = output(Some("k"), r#"{"a":1}"#, Some("alerts"));
        assert!(matches(&a, &json!({"key": "k", "value": "{\"a\":1}", "headers": {"h": "v"}, "route": "alerts"})));
        assert!(matches(&a, &json!({"key": "k", "value": {"a": 1}, "headers": {"h": "v"}, "route": "alerts"})));
        assert!(!matches(&a, &json!({"key": "k", "value": "{\"a\": 1}", "headers": {"h": "v"}, "route": "alerts"})));
        assert!(!matches(&a, &json!({"key": "k", "value": {"a": 1}, "headers": {"h": "v"}})));
        assert!(!matches(&a, &json!({"value": {"a": 1}, "headers": {"h": "v"}, "route": "alerts"})));
        assert!(!matches(&a, &json!({"key": "k", "value": {"a": 1}, "route": "alerts"})));
        assert!(!matches(
            &a,
            &json!({"key": "k", "value": {"a": 1}, "headers": {"h": "v"}, "route": "alerts", "timestamp_ms": 6})
        ));
        let fail = render(&Actual::Fail("boom".into()));
        assert!(matches(&fail, &json!({"fail": "boom"})));
        assert!(matches(&fail, &json!({"fail": true})));
        assert!(!matches(&fail, &json!({"fail": "bang"})));
        assert!(!matches(&a, &json!({"fail": true})));
    }
}
