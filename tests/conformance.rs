//! One set of fixtures through the same processor written in Rust, Python and
//! JavaScript (`examples/*-enrich`), each built twice: against the packed
//! world (what the SDKs build by default) and against the record world.
//! Outputs, routes and failures must be identical across all six builds, and
//! a Python or JS exception must be handled by the stage's error policy
//! exactly like a Rust `fail`, never killing the host.
//!
//! Needs the real toolchains: the `wasm32-wasip2` target, componentize-py on
//! the PATH and componentize-js in `sdk/js/node_modules` (see `.ci/run`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use support::*;
use weir::config::Format;
use weir::connectors::format;
use weir::plugin::build::Abi;
use weir::plugin::{Encoding, Instance, Runtime, StageContext};
use weir::{Message, Outcome};

/// The example processors, by language.
const LANGUAGES: [(&str, &str); 3] = [("rust", "rust-enrich"), ("python", "python-enrich"), ("js", "js-enrich")];

/// Every language in both forms of the world: (label, example, form).
fn builds() -> Vec<(String, &'static str, Abi)> {
    LANGUAGES
        .iter()
        .flat_map(|&(lang, name)| {
            [(format!("{lang}/packed"), name, Abi::Packed), (format!("{lang}/record"), name, Abi::Record)]
        })
        .collect()
}

/// Debug builds compile a ~20 MB Python component on a cold cache.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn fixtures() -> PathBuf {
    workspace().join("examples/fixtures/enrich")
}

fn config() -> Vec<(String, String)> {
    vec![("region".into(), "eu-west".into())]
}

/// Builds an example with `weir build`'s code path, once per test process
/// (one build at a time).
fn example(name: &str, abi: Abi) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, Abi), PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(&(name.to_string(), abi)) {
        return path.clone();
    }
    toolchains(true);
    let dir = workspace().join("examples").join(name);
    let wasm = weir::plugin::build::build_abi(&dir, abi).unwrap_or_else(|e| panic!("building {name} ({abi:?}): {e:#}"));
    built.insert((name.to_string(), abi), wasm.clone());
    wasm
}

fn inputs() -> Vec<Message> {
    std::fs::read_to_string(fixtures().join("input.ndjson"))
        .expect("reading the input fixture")
        .lines()
        .map(|line| format::decode(Format::Ndjson, line.as_bytes()).expect("a valid envelope"))
        .collect()
}

/// An outcome in a comparable form: every field of every output, or the
/// reason. `keep` is described as the input it forwards.
fn describe(outcome: &Outcome, input: &Message) -> String {
    match outcome {
        Outcome::Fail(reason) => format!("fail {reason:?}"),
        Outcome::Keep => {
            let Message { key, value, headers, timestamp_ms, .. } = input.clone();
            describe(&Outcome::Emit(vec![weir::Output { key, value, headers, timestamp_ms, route: None }]), input)
        }
        Outcome::Emit(outputs) => outputs
            .iter()
            .map(|o| {
                let headers: Vec<(String, String)> =
                    o.headers.iter().map(|h| (h.name.clone(), String::from_utf8_lossy(&h.value).to_string())).collect();
                format!(
                    "emit key={:?} value={:?} headers={headers:?} ts={:?} route={:?}",
                    o.key.as_deref().map(String::from_utf8_lossy),
                    String::from_utf8_lossy(&o.value),
                    o.timestamp_ms,
                    o.route
                )
            })
            .collect::<Vec<_>>()
            .join(" | "),
    }
}

#[test]
fn every_language_gives_identical_outcomes_on_the_fixtures() {
    let runtime = Runtime::new().expect("runtime");
    let batch = inputs();
    let mut results: Vec<(String, Vec<String>)> = Vec::new();
    for (lang, name, abi) in builds() {
        let plugin = runtime.load_file(&example(name, abi)).unwrap_or_else(|e| panic!("{lang}: {e:#}"));
        let expected = if abi == Abi::Packed { Encoding::Packed } else { Encoding::Records };
        assert_eq!(plugin.encoding(), expected, "{lang}: built against the wrong world");
        let mut instance = Instance::new(&plugin, Arc::new(StageContext::new(&lang, config())))
            .unwrap_or_else(|e| panic!("{lang}: init: {e}"));
        // The whole fixture as one batch, then message by message: a batch
        // boundary must not change anything.
        let whole: Vec<String> =
            instance.process(&batch).expect("no trap").iter().zip(&batch).map(|(o, m)| describe(o, m)).collect();
        let single: Vec<String> = batch
            .iter()
            .map(|m| describe(&instance.process(std::slice::from_ref(m)).expect("no trap")[0], m))
            .collect();
        assert_eq!(whole, single, "{lang}: batching changed the outcomes");
        results.push((lang, whole));
    }
    let (_, rust) = &results[0];
    assert_eq!(rust.len(), 12);
    assert_eq!(rust.iter().filter(|o| o.starts_with("fail")).count(), 5, "{rust:#?}");
    assert_eq!(rust[1], "", "the debug event is dropped");
    assert_eq!(rust[3], r#"fail "malformed input: value is not a JSON object""#);
    assert_eq!(rust[4], r#"fail "missing field: user""#);
    assert_eq!(rust[9], r#"fail "invalid field: amount""#);
    for (lang, outcomes) in &results[1..] {
        for (i, (expected, actual)) in rust.iter().zip(outcomes).enumerate() {
            assert_eq!(actual, expected, "{lang} differs from rust on input line {}", i + 1);
        }
        assert_eq!(outcomes.len(), rust.len(), "{lang}");
    }
}

#[test]
fn init_refuses_a_missing_config_key_in_every_language() {
    let runtime = Runtime::new().expect("runtime");
    for (lang, name, abi) in builds() {
        let plugin = runtime.load_file(&example(name, abi)).unwrap_or_else(|e| panic!("{lang}: {e:#}"));
        let error = Instance::new(&plugin, Arc::new(StageContext::new(&lang, vec![]))).err();
        let error = error.unwrap_or_else(|| panic!("{lang} accepted a config without `region`")).to_string();
        assert!(error.contains("missing config key `region`"), "{lang}: {error}");
    }
}

#[test]
fn weir_test_passes_the_shared_fixture_in_every_language() {
    let input = fixtures().join("input.ndjson");
    let expect = fixtures().join("expected.ndjson");
    for (lang, name, abi) in builds() {
        let wasm = example(name, abi);
        let output = run_weir(
            &[
                "test",
                wasm.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--expect",
                expect.to_str().unwrap(),
                "--config",
                "region=eu-west",
            ],
            RUN_LIMIT,
        );
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{lang}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(
            stdout.trim(),
            format!("ok: 13 lines match {} (12 inputs → 8 outputs, 5 failed)", expect.display()),
            "{lang}"
        );
    }
}

#[test]
fn weir_test_prints_a_diff_and_exits_1_on_mismatch() {
    let scratch = Scratch::new();
    let expected = std::fs::read_to_string(fixtures().join("expected.ndjson")).unwrap();
    let wrong = expected.replacen(r#"{"fail": "missing field: user"}"#, r#"{"fail": "no user"}"#, 1);
    assert_ne!(wrong, expected);
    let expect = scratch.write("expected.ndjson", &wrong);
    let wasm = example("python-enrich", Abi::Packed);
    let input = fixtures().join("input.ndjson");
    let args = ["test", wasm.to_str().unwrap(), "--input", input.to_str().unwrap(), "--expect"];
    let output = run_weir(&[&args[..], &[expect.to_str().unwrap(), "--config", "region=eu-west"]].concat(), RUN_LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("1 of 13 lines differ"), "{stdout}");
    assert!(
        stdout.contains("line 4:\n  - {\"fail\":\"no user\"}\n  + {\"fail\":\"missing field: user\"}\n"),
        "{stdout}"
    );

    // A missing config key is a usage error naming the problem.
    let expect = fixtures().join("expected.ndjson");
    let output = run_weir(&[&args[..], &[expect.to_str().unwrap()]].concat(), RUN_LIMIT);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing config key `region`"), "{stderr}");
}

/// A path as a TOML string.
fn toml_str(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("UTF-8 path")).unwrap()
}

fn file_uri(path: &Path) -> String {
    serde_json::to_string(&format!("file://{}", path.to_str().expect("UTF-8 path"))).unwrap()
}

/// Runs the fixture through `weir run` with one example and an error policy;
/// returns the run's output and the scratch folder with the sink files.
fn run_example(name: &str, abi: Abi, on_error: &str) -> (std::process::Output, Scratch) {
    let scratch = Scratch::new();
    let pipeline = format!(
        r#"
[[source]]
name = "fixture"
uri = {input}
format = "ndjson"

[[stage]]
name = "enrich"
plugin = {plugin}
concurrency = 2
batch = {{ max_size = 4, max_wait_ms = 5 }}
on_error = "{on_error}"
config = {{ region = "eu-west" }}

[[sink]]
name = "out"
uri = {out}

[[sink]]
name = "alerts"
uri = {alerts}
route = "alerts"

[[sink]]
name = "audit"
uri = {audit}
route = "audit"

[dead_letter]
uri = {dead}
"#,
        input = file_uri(&fixtures().join("input.ndjson")),
        plugin = toml_str(&example(name, abi)),
        out = file_uri(&scratch.path("out.ndjson")),
        alerts = file_uri(&scratch.path("alerts.ndjson")),
        audit = file_uri(&scratch.path("audit.ndjson")),
        dead = file_uri(&scratch.path("dead.ndjson")),
    );
    let file = scratch.write("pipeline.toml", &pipeline);
    (run_weir(&["run", file.to_str().unwrap()], RUN_LIMIT), scratch)
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

#[test]
fn exceptions_are_dead_lettered_like_rust_failures_end_to_end() {
    let mut runs = Vec::new();
    for (lang, name, abi) in builds() {
        let (output, scratch) = run_example(name, abi, "dead-letter");
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{lang}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let dead = scratch.json_lines("dead.ndjson");
        let mut reasons: Vec<(String, String)> = dead
            .iter()
            .map(|l| (l["key"].as_str().unwrap().to_string(), l["headers"]["weir-error"].as_str().unwrap().to_string()))
            .collect();
        reasons.sort();
        let expected: Vec<(String, String)> = [
            ("e10", "invalid field: amount"),
            ("e12", "invalid field: amount"),
            ("e4", "malformed input: value is not a JSON object"),
            ("e5", "missing field: user"),
            ("e7", "malformed input: value is not a JSON object"),
        ]
        .iter()
        .map(|(k, r)| (k.to_string(), r.to_string()))
        .collect();
        assert_eq!(reasons, expected, "{lang}");
        assert!(dead.iter().all(|l| l["headers"]["weir-stage"] == "enrich"), "{lang}: {dead:?}");
        // The dead-lettered message is the original input.
        let e4 = dead.iter().find(|l| l["key"] == "e4").unwrap();
        assert_eq!(e4["value"], Value::from("not json at all"), "{lang}");
        runs.push((
            lang,
            [
                sorted(scratch.lines("out.ndjson")),
                sorted(scratch.lines("alerts.ndjson")),
                sorted(scratch.lines("audit.ndjson")),
                sorted(scratch.lines("dead.ndjson")),
            ],
        ));
    }
    let (_, rust) = &runs[0];
    assert_eq!([rust[0].len(), rust[1].len(), rust[2].len(), rust[3].len()], [4, 2, 2, 5]);
    for (lang, files) in &runs[1..] {
        assert_eq!(files, rust, "{lang}: sink files differ from rust");
    }
}

#[test]
fn python_and_js_exceptions_under_halt_stop_the_run_cleanly() {
    for name in ["python-enrich", "js-enrich"] {
        let (output, scratch) = run_example(name, Abi::Packed, "halt");
        let (stdout, stderr) = text(&output);
        // A runtime failure (exit 1), reported with the plugin's reason: not a crash.
        assert_eq!(output.status.code(), Some(1), "{name}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stderr.contains("malformed input: value is not a JSON object") || stderr.contains("missing field: user"),
            "{name}: {stderr}"
        );
        assert!(scratch.lines("dead.ndjson").is_empty(), "{name}");
    }
}
