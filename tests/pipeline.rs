//! `weir run` end to end: the real binary, real pipeline files, real plugins,
//! real input and output files.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Long enough for a debug `weir` to compile a plugin on a cold cache.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A path as a TOML basic string (JSON string syntax is valid TOML for it).
fn toml_path(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("UTF-8 path")).expect("serialising a string")
}

/// A `file://` URI for `path`, as a TOML string.
fn file_uri(path: &Path) -> String {
    serde_json::to_string(&format!("file://{}", path.to_str().expect("UTF-8 path"))).expect("serialising a string")
}

/// The absolute path of a ready-made or test plugin's component, as a TOML string.
fn wasm(name: &str) -> String {
    toml_path(&plugin(name))
}

/// How long a run that halts may take: loading the plugin, a few traps while
/// the poison message is isolated, and a prompt exit.
const HALT_LIMIT: Duration = Duration::from_secs(30);

/// Runs `weir run` on a pipeline file in `scratch`.
fn run_pipeline(scratch: &Scratch, pipeline: &str) -> Output {
    run_pipeline_within(scratch, pipeline, RUN_LIMIT)
}

/// Runs `weir run` on a pipeline file in `scratch`, failing after `limit`.
fn run_pipeline_within(scratch: &Scratch, pipeline: &str, limit: Duration) -> Output {
    let file = scratch.write("pipeline.toml", pipeline);
    run_weir(&["run", file.to_str().unwrap()], limit)
}

/// Asserts a successful run, showing its output otherwise.
fn assert_success(output: &Output) {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(0), "weir run failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
}

/// The `gen://` value of message `seq` (no size padding).
fn gen_value(seq: u64, keys: u64) -> Value {
    let status = ["ok", "ok", "ok", "warn", "error"][(seq % 5) as usize];
    json!({ "seq": seq, "key": format!("key-{}", seq % keys), "status": status, "amount": seq % 1000 })
}

fn str_of<'a>(line: &'a Value, field: &str) -> &'a str {
    line[field].as_str().unwrap_or_else(|| panic!("`{field}` is not a string in {line}"))
}

fn header<'a>(line: &'a Value, name: &str) -> &'a str {
    line["headers"][name].as_str().unwrap_or_else(|| panic!("no header `{name}` in {line}"))
}

fn value_json(line: &Value) -> Value {
    serde_json::from_str(str_of(line, "value")).unwrap_or_else(|e| panic!("value of {line} is not JSON: {e}"))
}

fn seq_of(line: &Value) -> u64 {
    header(line, "seq").parse().unwrap_or_else(|e| panic!("bad seq header in {line}: {e}"))
}

#[test]
fn filter_keeps_exactly_the_error_messages_in_order() {
    let scratch = Scratch::new();
    let out = scratch.path("out.ndjson");
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?count=1000&keys=10"

[[stage]]
name = "errors-only"
plugin = {plugin}
config = {{ field = "status", equals = "error" }}

[[sink]]
name = "out"
uri = {out}
format = "ndjson"
"#,
            plugin = wasm("json-filter"),
            out = file_uri(&out),
        ),
    );
    assert_success(&output);

    let lines = scratch.json_lines("out.ndjson");
    assert_eq!(lines.len(), 200, "expected the 200 messages with seq % 5 == 4");
    for (i, line) in lines.iter().enumerate() {
        let seq = 5 * i as u64 + 4;
        assert_eq!(str_of(line, "key"), format!("key-{}", seq % 10), "line {i}: {line}");
        assert_eq!(value_json(line), gen_value(seq, 10), "line {i}: {line}");
        assert_eq!(line["headers"], json!({ "seq": seq.to_string() }), "line {i}: {line}");
        assert!(line["timestamp_ms"].is_u64(), "line {i} has no timestamp: {line}");
    }
}

#[test]
fn stages_run_in_order_filter_then_extract() {
    let scratch = Scratch::new();
    let out = scratch.path("out.ndjson");
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?count=1000&keys=10"

[[stage]]
name = "errors-only"
plugin = {filter}
config = {{ field = "status", equals = "error" }}

[[stage]]
name = "seq"
plugin = {extract}
config = {{ field = "seq" }}

[[sink]]
name = "out"
uri = {out}
"#,
            filter = wasm("json-filter"),
            extract = wasm("json-extract"),
            out = file_uri(&out),
        ),
    );
    assert_success(&output);

    let lines = scratch.json_lines("out.ndjson");
    let values: Vec<&str> = lines.iter().map(|l| str_of(l, "value")).collect();
    let expected: Vec<String> = (0..200).map(|i| (5 * i + 4).to_string()).collect();
    assert_eq!(values, expected);
    for line in &lines {
        // json-extract (into value) keeps key and headers.
        let seq: u64 = str_of(line, "value").parse().unwrap();
        assert_eq!(str_of(line, "key"), format!("key-{}", seq % 10));
        assert_eq!(header(line, "seq"), seq.to_string());
    }
}

#[test]
fn split_lines_flat_maps_each_line_into_a_message() {
    let scratch = Scratch::new();
    let input = scratch.write(
        "in.ndjson",
        concat!(
            r#"{"key":"k1","value":"alpha\nbeta\ngamma","headers":{"src":"one"}}"#,
            "\n",
            r#"{"key":"k2","value":"single line"}"#,
            "\n",
            r#"{"key":"k3","value":"x\r\n\ny\n","timestamp_ms":42}"#,
            "\n",
            r#"{"key":"k4","value":""}"#,
            "\n",
        ),
    );
    let out = scratch.path("out.ndjson");
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "in"
uri = {input}
format = "ndjson"

[[stage]]
name = "split"
plugin = {plugin}

[[sink]]
name = "out"
uri = {out}
format = "ndjson"
"#,
            input = file_uri(&input),
            plugin = wasm("split-lines"),
            out = file_uri(&out),
        ),
    );
    assert_success(&output);

    let lines = scratch.json_lines("out.ndjson");
    let expected = vec![
        json!({"key":"k1","value":"alpha","headers":{"src":"one","weir-split-index":"0"}}),
        json!({"key":"k1","value":"beta","headers":{"src":"one","weir-split-index":"1"}}),
        json!({"key":"k1","value":"gamma","headers":{"src":"one","weir-split-index":"2"}}),
        json!({"key":"k2","value":"single line","headers":{"weir-split-index":"0"}}),
        json!({"key":"k3","value":"x","headers":{"weir-split-index":"0"},"timestamp_ms":42}),
        json!({"key":"k3","value":"y","headers":{"weir-split-index":"1"},"timestamp_ms":42}),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn route_by_field_sends_each_message_to_exactly_one_sink() {
    let scratch = Scratch::new();
    let (errors, warns, rest) =
        (scratch.path("errors.ndjson"), scratch.path("warns.ndjson"), scratch.path("rest.ndjson"));
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?count=1000&keys=7"

[[stage]]
name = "route"
plugin = {plugin}
config = {{ field = "status", routes = "error,warn" }}

[[sink]]
name = "errors"
uri = {errors}
route = "error"

[[sink]]
name = "rest"
uri = {rest}

[[sink]]
name = "warns"
uri = {warns}
route = "warn"
"#,
            plugin = wasm("route-by-field"),
            errors = file_uri(&errors),
            rest = file_uri(&rest),
            warns = file_uri(&warns),
        ),
    );
    assert_success(&output);

    let mut seen = BTreeSet::new();
    for (file, statuses, count) in [
        ("errors.ndjson", &["error"][..], 200),
        ("warns.ndjson", &["warn"][..], 200),
        ("rest.ndjson", &["ok"][..], 600),
    ] {
        let lines = scratch.json_lines(file);
        assert_eq!(lines.len(), count, "{file}");
        let mut previous = None;
        for line in &lines {
            let seq = seq_of(line);
            assert_eq!(value_json(line), gen_value(seq, 7), "{file}: {line}");
            assert!(statuses.contains(&value_json(line)["status"].as_str().unwrap()), "{file}: {line}");
            assert!(seen.insert(seq), "seq {seq} written twice (again in {file})");
            // One stage instance, one sink: each file keeps source order.
            assert!(previous < Some(seq), "{file}: seq {seq} after {previous:?}");
            previous = Some(seq);
        }
    }
    assert_eq!(seen, (0..1000).collect::<BTreeSet<u64>>());
}

/// The last count per key in an ndjson file of count-by-key outputs, checking
/// that each key's counts only grow.
fn last_counts(lines: &[Value]) -> BTreeMap<String, u64> {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        let key = str_of(line, "key").to_string();
        let value = value_json(line);
        assert_eq!(value["key"], json!(key), "{line}");
        let count = value["count"].as_u64().unwrap_or_else(|| panic!("no count in {line}"));
        if let Some(&before) = last.get(&key) {
            assert!(count > before, "count of {key} went from {before} to {count}");
        }
        last.insert(key, count);
    }
    last
}

#[test]
fn aggregator_counts_per_key_and_its_state_survives_a_restart() {
    let scratch = Scratch::new();
    let out = scratch.path("counts.ndjson");
    let pipeline = scratch.write(
        "pipeline.toml",
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?count=1000&keys=5"

[[stage]]
name = "count"
plugin = {plugin}
concurrency = 2
dispatch = "partition"
partition_by = "key"
batch = {{ max_size = 50 }}

[[sink]]
name = "out"
uri = {out}
"#,
            plugin = wasm("count-by-key"),
            out = file_uri(&out),
        ),
    );
    let expected = |n: u64| (0..5).map(|k| (format!("key-{k}"), n)).collect::<BTreeMap<_, _>>();

    let first = run_weir(&["run", pipeline.to_str().unwrap()], RUN_LIMIT);
    assert_success(&first);
    let first_lines = scratch.json_lines("counts.ndjson");
    assert_eq!(last_counts(&first_lines), expected(200));
    assert!(
        scratch.path(".weir/state/state.redb").is_file(),
        "the stage state is saved in .weir/state beside the pipeline file"
    );
    let file = pipeline.to_str().unwrap();
    let list = run_weir(&["state", "list", file], RUN_LIMIT);
    assert_success(&list);
    let (listed, _) = text(&list);
    // count:key-0 .. count:key-4, each an 8-byte counter.
    assert_eq!(listed.trim(), format!("count\t5 keys\t{} bytes", 5 * ("count:key-0".len() + 8)));
    let show = run_weir(&["state", "show", file, "count", "--limit", "2"], RUN_LIMIT);
    assert_success(&show);
    let (shown, more) = text(&show);
    let shown: Vec<serde_json::Value> = shown.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[0]["key"], "count:key-0");
    assert_eq!(shown[0]["value_b64"], base64_of(&200u64.to_le_bytes()), "{shown:?}");
    assert!(more.contains("3 more entries"), "{more}");

    // Same file again: the counts continue from the saved state (the file
    // sink appends, so the second run's lines follow the first run's).
    let second = run_weir(&["run", pipeline.to_str().unwrap()], RUN_LIMIT);
    assert_success(&second);
    let all_lines = scratch.json_lines("counts.ndjson");
    assert!(all_lines.len() > first_lines.len());
    assert_eq!(last_counts(&all_lines), expected(400));
    let second_run = &all_lines[first_lines.len()..];
    assert!(
        second_run.iter().all(|l| value_json(l)["count"].as_u64().unwrap() > 200),
        "every count of the second run continues from 200"
    );

    // Reset: the next run starts from nothing.
    let reset = run_weir(&["state", "reset", file, "count"], RUN_LIMIT);
    assert_success(&reset);
    assert!(text(&reset).0.starts_with("stage `count`: deleted 5 keys"), "{:?}", text(&reset));
    let third = run_weir(&["run", file], RUN_LIMIT);
    assert_success(&third);
    let third_run = scratch.json_lines("counts.ndjson")[all_lines.len()..].to_vec();
    assert_eq!(last_counts(&third_run), expected(200));
}

/// A file source under count-by-key, killed with SIGKILL at random moments
/// and started again: each run resumes after the last checkpoint's line, and
/// the saved counts are exact. A run that reads the file to its end forgets
/// the position, so the next run reads it whole again.
#[test]
fn a_file_resumes_at_the_last_checkpoint_and_keyed_counts_stay_exact() {
    const LINES: u64 = 300_000;
    const KEYS: u64 = 7;
    let scratch = Scratch::new();
    let mut input = String::with_capacity(LINES as usize * 40);
    for i in 0..LINES {
        input += &format!("{{\"key\":\"k{}\",\"value\":\"{i}\"}}\n", i % KEYS);
    }
    let path = scratch.write("in.ndjson", &input);
    let pipeline = scratch.write(
        "pipeline.toml",
        &format!(
            r#"
[[source]]
name = "in"
uri = {input}
batch_size = 100

[[stage]]
name = "count"
plugin = {plugin}

[[sink]]
name = "out"
uri = "null://"

[state]
checkpoint_interval_ms = 20
"#,
            input = file_uri(&path),
            plugin = wasm("count-by-key"),
        ),
    );
    let file = pipeline.to_str().unwrap();
    let expected = |runs: u64| -> BTreeMap<String, u64> {
        counts_per_key(LINES, KEYS, "k").into_iter().map(|(key, count)| (key, runs * count)).collect()
    };
    let mut kills = 0;
    let mut resumed = 0;
    loop {
        let mut running = Running::start(&["run", file]);
        running.wait_for_log(RUN_LIMIT, "the plugin to load", |log| log.contains("plugin loaded"));
        // A random kill moment, unless the run finishes first.
        let _ = wait_until(Duration::from_millis(random_in(100..400)), || !running.is_running());
        if !running.is_running() || kills == 4 {
            let (code, log, _) = running.wait(RUN_LIMIT);
            assert_eq!(code, Some(0), "{log}");
            resumed += usize::from(log.contains("resuming"));
            break;
        }
        let log = running.kill9();
        resumed += usize::from(log.contains("resuming"));
        kills += 1;
        if kills == 1 {
            // The position is recorded with the state, as `line byte`.
            let list = run_weir(&["state", "list", file], RUN_LIMIT);
            assert_success(&list);
            let listed = text(&list).0;
            assert!(listed.contains("source in\tcheckpoint position "), "{listed}");
        }
    }
    assert!(kills >= 2, "the file was read to its end before two kills ({kills}): make it longer");
    assert!(resumed >= kills, "every run after a kill resumes ({resumed} of {kills})");
    assert_eq!(saved_counts(&pipeline, "count"), expected(1), "exact counts after {kills} kill -9 restarts");

    // The last run read the file to its end: the next one reads it whole.
    let listed = text(&run_weir(&["state", "list", file], RUN_LIMIT)).0;
    assert!(!listed.contains("checkpoint position"), "a file read to its end keeps no position: {listed}");
    let again = run_weir(&["run", file], RUN_LIMIT);
    assert_success(&again);
    assert!(!text(&again).1.contains("resuming"), "{:?}", text(&again));
    assert_eq!(saved_counts(&pipeline, "count"), expected(2));
    let reset = run_weir(&["state", "reset", file, "--positions"], RUN_LIMIT);
    assert_success(&reset);
    assert!(text(&reset).0.starts_with("forgot 0 recorded source positions"), "{:?}", text(&reset));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn the_state_store_is_locked_and_an_unusable_state_folder_is_refused() {
    let scratch = Scratch::new();
    let pipeline = scratch.write(
        "pipeline.toml",
        &format!(
            "[[source]]\nname = \"gen\"\nuri = \"gen://?rate=100\"\n\n[[stage]]\nname = \"count\"\nplugin = {plugin}\n\n\
             [[sink]]\nname = \"out\"\nuri = \"null://\"\n",
            plugin = wasm("count-by-key"),
        ),
    );
    let file = pipeline.to_str().unwrap();
    let mut running = Running::start(&["run", file]);
    running.wait_for_log(RUN_LIMIT, "the plugin to load", |log| log.contains("plugin loaded"));
    let busy = run_weir(&["state", "reset", file, "count"], RUN_LIMIT);
    assert_eq!(busy.status.code(), Some(1));
    assert!(text(&busy).1.contains("is in use by another weir process"), "{:?}", text(&busy));
    running.signal("-TERM");
    let (code, log, _) = running.wait(RUN_LIMIT);
    assert_eq!(code, Some(0), "{log}");

    // A state folder that cannot be created refuses the run up front.
    std::fs::write(scratch.path("blocked"), "a file, not a folder").unwrap();
    let blocked = pipeline.to_str().unwrap().to_string();
    let text_with_state = std::fs::read_to_string(&blocked).unwrap() + "\n[state]\ndir = \"blocked/state\"\n";
    std::fs::write(&blocked, text_with_state).unwrap();
    let refused = run_weir(&["run", file], RUN_LIMIT);
    let message = refusal(&refused);
    let expected = format!("pipeline.toml: state folder {}: cannot create it", scratch.path("blocked/state").display());
    assert!(message.contains(&expected), "{message}");
}

#[test]
fn a_plugin_source_folder_is_built_and_run() {
    let scratch = Scratch::new();
    let out = scratch.path("out.ndjson");
    let folder = workspace().join("plugins/passthrough");
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?count=100&keys=4"

[[stage]]
name = "pass"
plugin = {folder}

[[sink]]
name = "out"
uri = {out}
"#,
            folder = toml_path(&folder),
            out = file_uri(&out),
        ),
    );
    assert_success(&output);
    let lines = scratch.json_lines("out.ndjson");
    let seqs: Vec<u64> = lines.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    for line in &lines {
        assert_eq!(value_json(line), gen_value(seq_of(line), 4));
    }
}

/// Runs gen:// → faulty (with `faulty_config`, and `extra` stage keys) → file
/// under the default `on_error` (halt) and checks that weir itself fails
/// cleanly with exit code 1 and a reason containing `cause`.
fn assert_halts_cleanly(faulty_config: &str, extra: &str, cause: &str) {
    let scratch = Scratch::new();
    let out = scratch.path("out.ndjson");
    let output = run_pipeline_within(
        &scratch,
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?count=100&keys=4"

[[stage]]
name = "faulty"
plugin = {plugin}
config = {{ {faulty_config} }}
{extra}

[[sink]]
name = "out"
uri = {out}
"#,
            plugin = wasm("faulty"),
            out = file_uri(&out),
        ),
        HALT_LIMIT,
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a clean runtime failure (exit 1, not a signal or a host panic)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("error: pipeline halted: stage `faulty`"), "no halt reason in stderr:\n{stderr}");
    let halt_line = stderr.lines().find(|l| l.starts_with("error: pipeline halted")).unwrap();
    assert!(halt_line.contains(cause), "halt reason does not name `{cause}`: {halt_line}");
    // The host did not crash: a Rust panic of weir's own threads would say
    // `thread 'main'` or `thread 'weir-…'` / `tokio-runtime-worker`.
    // The plugin's own panic text is forwarded to the log tagged with its
    // stage; only the host's lines count here.
    let host_lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("stage=\"faulty\"")).collect();
    for host_thread in ["thread 'main' panicked", "thread 'weir", "thread 'tokio", "RUST_BACKTRACE"] {
        assert!(!host_lines.iter().any(|l| l.contains(host_thread)), "weir itself panicked:\n{stderr}");
    }
    // Halt commits nothing past the failure: the poison message never reaches the sink.
    for line in scratch.json_lines("out.ndjson") {
        assert_ne!(seq_of(&line), 42, "the poison message was written");
    }
}

#[test]
fn a_panicking_plugin_halts_the_run_with_exit_1() {
    assert_halts_cleanly(r#"panic_on = '"seq":42,'"#, "", "plugin panicked");
}

#[test]
fn a_looping_plugin_is_stopped_by_its_deadline_and_halts_the_run() {
    assert_halts_cleanly(r#"loop_on = '"seq":42,'"#, "limits = { deadline_ms = 200 }", "deadline exceeded");
}

#[test]
fn a_plugin_allocating_without_bound_hits_its_memory_cap_and_halts_the_run() {
    assert_halts_cleanly(r#"alloc_on = '"seq":42,'"#, "limits = { memory_mb = 16 }", "memory cap exceeded");
}

const MIXED_INPUT: &str = concat!(
    r#"{"key":"a","value":"first"}"#,
    "\n",
    "this is not json\n",
    r#"{"key":"c","value":"third","headers":{"h":"v"}}"#,
    "\n",
);

#[test]
fn a_malformed_input_line_goes_to_the_dead_letter() {
    let scratch = Scratch::new();
    let input = scratch.write("in.ndjson", MIXED_INPUT);
    let (out, dlq) = (scratch.path("out.ndjson"), scratch.path("dlq.ndjson"));
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "in"
uri = {input}
format = "ndjson"

[[stage]]
name = "pass"
plugin = {plugin}

[[sink]]
name = "out"
uri = {out}

[dead_letter]
uri = {dlq}
"#,
            input = file_uri(&input),
            plugin = wasm("passthrough"),
            out = file_uri(&out),
            dlq = file_uri(&dlq),
        ),
    );
    assert_success(&output);

    assert_eq!(
        scratch.json_lines("out.ndjson"),
        vec![json!({"key":"a","value":"first"}), json!({"key":"c","value":"third","headers":{"h":"v"}})]
    );
    let dead = scratch.json_lines("dlq.ndjson");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(str_of(&dead[0], "value"), "this is not json");
    let reason = header(&dead[0], "weir-error");
    assert!(
        reason.starts_with(&format!("{} line 2: not an ndjson envelope", input.display())),
        "weir-error does not name the file and line: {reason}"
    );
    assert_eq!(header(&dead[0], "weir-stage"), "in", "a source rejection names the source");
}

#[test]
fn a_malformed_input_line_without_dead_letter_fails_the_run() {
    let scratch = Scratch::new();
    let input = scratch.write("in.ndjson", MIXED_INPUT);
    let out = scratch.path("out.ndjson");
    let output = run_pipeline(
        &scratch,
        &format!(
            r#"
[[source]]
name = "in"
uri = {input}
format = "ndjson"

[[sink]]
name = "out"
uri = {out}
"#,
            input = file_uri(&input),
            out = file_uri(&out),
        ),
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let expected = format!("error: pipeline halted: in: {} line 2: not an ndjson envelope", input.display());
    assert!(stderr.lines().any(|l| l.starts_with(&expected)), "expected `{expected}…` in stderr:\n{stderr}");
    assert!(stderr.contains("[dead_letter]"), "the error says how to keep going:\n{stderr}");
}

#[test]
fn stdin_to_stdout_through_a_plugin() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "pipeline.toml",
        &format!(
            r#"
[[source]]
name = "in"
uri = "stdio://"
format = "raw"

[[stage]]
name = "pass"
plugin = {plugin}

[[sink]]
name = "out"
uri = "stdio://"
format = "raw"
"#,
            plugin = wasm("passthrough"),
        ),
    );
    let mut child = weir()
        .args(["run", file.to_str().unwrap()])
        .env("WEIR_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weir");
    let input = "first line\nsecond {\"json\": true}\nthird\n";
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        // Dropping stdin closes it: the bounded source ends the run.
    }
    let output = wait_with_deadline(child, RUN_LIMIT);
    assert_success(&output);
    assert_eq!(text(&output).0, input);
}

#[test]
fn sigterm_drains_and_exits_0_without_gap_or_duplicate() {
    let scratch = Scratch::new();
    let out = scratch.path("out.ndjson");
    let file = scratch.write(
        "pipeline.toml",
        &format!(
            r#"
[[source]]
name = "gen"
uri = "gen://?rate=2000&keys=3"

[[stage]]
name = "pass"
plugin = {plugin}

[[sink]]
name = "out"
uri = {out}
format = "ndjson"
"#,
            plugin = wasm("passthrough"),
            out = file_uri(&out),
        ),
    );
    let child = weir()
        .args(["run", file.to_str().unwrap()])
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weir");
    let pid = child.id().to_string();
    let started = wait_until(RUN_LIMIT, || scratch.lines("out.ndjson").len() >= 200);
    if !started {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let output = wait_with_deadline(child, Duration::from_secs(10));
        panic!("the unbounded run never wrote 200 lines; stderr:\n{}", text(&output).1);
    }
    let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("running kill");
    assert!(kill.success());
    let output = wait_with_deadline(child, Duration::from_secs(10));
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "SIGTERM must drain and exit 0; stderr:\n{stderr}");

    let seqs: Vec<u64> = scratch.json_lines("out.ndjson").iter().map(seq_of).collect();
    assert!(seqs.len() >= 200);
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "seq headers are not exactly 0..N in order");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_sink_keeps_a_fast_generator_in_bounded_memory_and_a_second_signal_exits_at_once() {
    let scratch = Scratch::new();
    // An unbounded generator at full speed into a sink that takes 50 ms per
    // batch of 100: without backpressure the process would grow by the
    // generator's rate (hundreds of thousands of messages a second).
    let pipeline = scratch.write(
        "p.toml",
        &format!(
            r#"
            [[source]]
            name = "gen"
            uri = "gen://?size=1000"
            [[stage]]
            name = "pass"
            plugin = {}
            [[sink]]
            name = "slow"
            uri = "null://?delay_ms=50"
            batch = {{ max_size = 100, max_wait_ms = 5 }}
            "#,
            wasm("passthrough")
        ),
    );
    let mut child = weir()
        .args(["run", pipeline.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Let it reach its steady state, then watch it for a while.
    assert!(wait_until(Duration::from_secs(30), || rss_kib(pid) > 0));
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        samples.push(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let early = samples[4..8].iter().copied().max().unwrap();
    let late = samples[samples.len() - 4..].iter().copied().max().unwrap();
    assert!(late < early + 20 * 1024, "RSS grew from {early} KiB to {late} KiB behind a slow sink: {samples:?}");
    assert!(late < 200 * 1024, "RSS {late} KiB is not bounded by the channels");

    // First signal: drain (slowly, the sink is slow). Second: exit at once.
    let kill = |sig: &str| assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    kill("-TERM");
    let child_stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child_stderr));
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("stopping: draining"))), "first signal starts draining");
    kill("-INT");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let output = wait_with_deadline(child, Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(130), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("second signal")), "{rest:?}");
}
