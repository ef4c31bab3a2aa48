//! The `weir` command line: `check`, `build`, the refusals of `run`, help and
//! usage errors. Each test checks the exit code and the message text.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Long enough for a cold `cargo build` of a plugin.
const LIMIT: Duration = Duration::from_secs(300);

const EXIT_OK: i32 = 0;
const EXIT_USAGE: i32 = 2;

fn weir_ok(args: &[&str]) -> (String, String) {
    let output = run_weir(args, LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_OK), "weir {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// Runs weir, expects exit code 2 and exactly one line on stderr, which it returns.
fn weir_refuses(args: &[&str]) -> String {
    let output = run_weir(args, LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "weir {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "", "a refusal prints nothing on stdout");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one clear line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------- weir check

#[test]
fn check_describes_a_processor() {
    let wasm = plugin("passthrough");
    let (stdout, _) = weir_ok(&["check", path_str(&wasm)]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{}: ok", wasm.display()));
    // The SDK builds the packed world by default.
    assert_eq!(lines[1], "  world    weir:processor/processor-packed@0.1.0");
    assert!(lines[2].starts_with("  version  ") && lines[2].len() == "  version  ".len() + 64, "{stdout}");
    assert_eq!(lines[3], "  exports  init (func), process-packed (func)");
    assert!(lines[4].starts_with("  imports  ") && lines[4].contains("wasi:cli/stderr"), "{stdout}");
    assert_eq!(lines.len(), 5, "{stdout}");
}

#[test]
fn check_describes_an_aggregator() {
    let wasm = plugin("count-by-key");
    let (stdout, _) = weir_ok(&["check", path_str(&wasm)]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{}: ok", wasm.display()));
    assert_eq!(lines[1], "  world    weir:processor/aggregator-packed@0.1.0");
    assert_eq!(lines[3], "  exports  init (func), process-batch-packed (func)");
    // count-by-key keeps its counts in the stage state: it imports the host interface.
    assert!(lines[4].contains("weir:processor/host@0.1.0"), "{stdout}");
}

#[test]
fn check_refuses_a_file_that_is_not_wasm() {
    let scratch = Scratch::new();
    let file = scratch.write("plugin.wasm", "this is a text file, not a component\n");
    let line = weir_refuses(&["check", path_str(&file)]);
    assert_eq!(line, format!("error: {}: not a WebAssembly file (no `\\0asm` header)", file.display()));
}

#[test]
fn check_refuses_a_missing_file() {
    let scratch = Scratch::new();
    let file = scratch.path("absent.wasm");
    let line = weir_refuses(&["check", path_str(&file)]);
    assert!(line.starts_with(&format!("error: {}: cannot read:", file.display())), "{line}");
}

#[test]
fn check_refuses_a_core_module() {
    let scratch = Scratch::new();
    let file = scratch.path("core.wasm");
    std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
    let line = weir_refuses(&["check", path_str(&file)]);
    assert!(
        line.starts_with(&format!("error: {}: this is a core WebAssembly module, not a component", file.display())),
        "{line}"
    );
    assert!(line.contains("wasm32-wasip2"), "the refusal says how to build a component: {line}");
}

/// Builds a test crate of `tests/plugins` with plain cargo and returns its
/// `.wasm` (read from cargo's artifact messages, wherever the target dir is).
fn cargo_build_wasm(package: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", package, "--message-format=json"])
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo");
    assert!(output.status.success(), "cargo build -p {package} failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let manifest = workspace().join("tests/plugins").join(package).join("Cargo.toml");
    let wasm = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["manifest_path"].as_str() == manifest.to_str())
        .flat_map(|msg| msg["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"));
    wasm.unwrap_or_else(|| panic!("cargo built {package} but reported no .wasm:\n{stdout}"))
}

#[test]
fn check_refuses_a_component_of_another_world() {
    // A plain Rust binary built for wasm32-wasip2 is a wasi:cli command.
    let wasm = cargo_build_wasm("not-a-plugin");
    let line = weir_refuses(&["check", path_str(&wasm)]);
    assert!(
        line.starts_with(&format!(
            "error: {}: component does not implement a weir world: it exports none of `process` (processor), \
             `process-batch` (aggregator), `process-packed` (processor-packed) or `process-batch-packed` \
             (aggregator-packed)",
            wasm.display()
        )),
        "{line}"
    );
    assert!(line.contains("wasi:cli/run"), "the refusal lists what it does export: {line}");
}

#[test]
fn check_refuses_a_component_without_init() {
    let wasm = cargo_build_wasm("missing-init");
    let line = weir_refuses(&["check", path_str(&wasm)]);
    assert_eq!(
        line,
        format!(
            "error: {}: component looks like a processor (it exports `process`) but does not export `init`",
            wasm.display()
        )
    );
}

// ------------------------------------------------------- weir run refusals

/// A valid pipeline, one stage; `{stage_extra}`, `{source_uri}` and
/// `{sections}` are filled in by each test. Line numbers are fixed:
/// source uri on line 3, stage plugin on line 7, the stage's extra key on line 8.
fn pipeline(source_uri: &str, plugin: &str, stage_extra: &str, sections: &str) -> String {
    format!(
        r#"[[source]]
name = "in"
uri = "{source_uri}"

[[stage]]
name = "s"
plugin = "{plugin}"
{stage_extra}

[[sink]]
name = "out"
uri = "null://"
{sections}"#
    )
}

fn passthrough() -> String {
    path_str(&plugin("passthrough")).to_string()
}

/// `weir run` on `text` must refuse with exit 2 and one line starting with
/// `FILE:LINE: `; returns the rest of the line.
fn run_refuses_at(text: &str, line: usize) -> String {
    let scratch = Scratch::new();
    let file = scratch.write("pipeline.toml", text);
    let message = weir_refuses(&["run", path_str(&file)]);
    let prefix = format!("error: {}:{line}: ", file.display());
    message
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("expected the refusal to start with `{prefix}`, got: {message}"))
        .to_string()
}

#[test]
fn run_refuses_an_unknown_stage_key() {
    let text = pipeline("gen://?count=1", &passthrough(), "concurency = 2", "");
    let message = run_refuses_at(&text, 8);
    assert!(message.starts_with("unknown field `concurency`, expected one of"), "{message}");
    assert!(message.contains("`concurrency`"), "the refusal lists the valid keys: {message}");
}

#[test]
fn run_refuses_exactly_once_unless_every_end_is_kafka() {
    let exactly_once =
        |source: &str| format!("delivery = \"exactly-once\"\n{}", pipeline(source, &passthrough(), "", ""));
    let message = run_refuses_at(&exactly_once("kafka://127.0.0.1:9092/in"), 13);
    assert_eq!(
        message,
        "sink `out` `null://` is not Kafka: `delivery = \"exactly-once\"` needs Kafka on both ends (kafka:// sources, \
         sinks and dead letter)"
    );
    let message = run_refuses_at(&exactly_once("gen://?count=1"), 4);
    assert!(message.starts_with("source `in` `gen://?count=1` is not Kafka"), "{message}");
    let message = run_refuses_at("delivery = \"twice\"\n", 1);
    assert!(message.contains("unknown variant `twice`"), "{message}");
}

#[test]
fn run_refuses_an_unknown_connector() {
    let text = pipeline("nosuch://x", &passthrough(), "", "");
    let message = run_refuses_at(&text, 3);
    assert!(message.starts_with("source `in`: unknown connector `nosuch://`"), "{message}");
}

#[test]
fn run_refuses_a_missing_plugin() {
    let scratch = Scratch::new();
    let missing = scratch.path("missing.wasm");
    let text = pipeline("gen://?count=1", path_str(&missing), "", "");
    let message = run_refuses_at(&text, 7);
    assert_eq!(
        message,
        format!(
            "stage `s`: plugin {} not found (expected a .wasm component or a plugin source folder)",
            missing.display()
        )
    );
}

#[test]
fn run_refuses_a_value_of_the_wrong_type_naming_the_key() {
    let text = pipeline("gen://?count=1", &passthrough(), r#"concurrency = "four""#, "");
    let message = run_refuses_at(&text, 8);
    assert!(message.contains(r#"invalid type: string "four""#), "{message}");
    // The refusal must name the key, not only the line.
    assert!(message.contains("concurrency"), "the refusal does not name the key `concurrency`: {message}");
}

#[test]
fn run_refuses_dead_letter_policy_without_dead_letter_section() {
    let text = pipeline("gen://?count=1", &passthrough(), r#"on_error = "dead-letter""#, "");
    // Line 8 is the `on_error` line, the key at fault.
    let message = run_refuses_at(&text, 8);
    assert!(message.contains("on_error"), "{message}");
    assert!(message.contains("[dead_letter]"), "{message}");
}

#[test]
fn run_accepts_dead_letter_policy_with_dead_letter_section() {
    let text = pipeline(
        "gen://?count=1",
        &passthrough(),
        r#"on_error = "dead-letter""#,
        "\n[dead_letter]\nuri = \"null://\"\n",
    );
    let scratch = Scratch::new();
    let file = scratch.write("pipeline.toml", &text);
    weir_ok(&["run", path_str(&file)]);
}

#[test]
fn run_refuses_an_unknown_gen_parameter() {
    let text = pipeline("gen://?count=1&colour=red", &passthrough(), "", "");
    let message = run_refuses_at(&text, 3);
    assert_eq!(message, "source `in`: unknown query parameter `colour` for gen://");
}

#[test]
fn run_refuses_a_plugin_whose_init_fails() {
    let faulty = plugin("faulty");
    let text = pipeline("gen://?count=1", path_str(&faulty), r#"config = { init_fail = "no such mode" }"#, "");
    let message = run_refuses_at(&text, 7);
    assert_eq!(message, "stage `s`: plugin init failed: no such mode");
}

#[test]
fn run_refuses_a_missing_pipeline_file() {
    let scratch = Scratch::new();
    let file = scratch.path("absent.toml");
    let line = weir_refuses(&["run", path_str(&file)]);
    assert!(line.starts_with(&format!("error: {}: cannot read pipeline file:", file.display())), "{line}");
}

// ---------------------------------------------------------------- weir build

#[test]
fn build_prints_the_component_path() {
    let dir = workspace().join("plugins/passthrough");
    let (stdout, stderr) = weir_ok(&["build", path_str(&dir)]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is exactly the .wasm path:\n{stdout}");
    let wasm = Path::new(lines[0]);
    assert!(wasm.is_absolute() && wasm.is_file(), "{stdout}");
    assert_eq!(wasm.file_name().unwrap(), "passthrough.wasm");
    assert!(stderr.contains(&format!("built {} (processor-packed", wasm.display())), "{stderr}");
    // What was built is a valid plugin.
    let (checked, _) = weir_ok(&["check", lines[0]]);
    assert!(checked.contains("weir:processor/processor-packed@0.1.0"), "{checked}");
}

#[test]
fn build_refuses_a_folder_that_is_not_a_plugin() {
    let scratch = Scratch::new();
    let line = weir_refuses(&["build", path_str(scratch.dir.path())]);
    assert_eq!(
        line,
        format!(
            "error: {} is not a plugin folder weir can build: expected a Rust crate (Cargo.toml), a Python module (app.py or pyproject.toml) or a JavaScript module (package.json)",
            scratch.dir.path().display()
        )
    );
}

#[test]
fn build_refuses_a_missing_folder() {
    let scratch = Scratch::new();
    let dir = scratch.path("nothing-here");
    let line = weir_refuses(&["build", path_str(&dir)]);
    assert_eq!(line, format!("error: {} is not a folder", dir.display()));
}

#[test]
fn build_refuses_a_crate_that_builds_but_is_not_a_plugin() {
    toolchains(false);
    let dir = workspace().join("tests/plugins/not-a-plugin");
    let output = run_weir(&["build", path_str(&dir)], LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "");
    // cargo's own progress lines may precede it; the verdict is the last line.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: built ") && last.contains("but it is not a valid plugin"), "{stderr}");
    assert!(last.contains("does not implement a weir world"), "{stderr}");
}

// ------------------------------------------------------------ help, usage

#[test]
fn help_lists_the_commands_and_exits_0() {
    let (stdout, _) = weir_ok(&["--help"]);
    for command in ["run", "check", "build"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(command)), "`{command}` missing from:\n{stdout}");
    }
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let output = run_weir(&["frobnicate"], LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.starts_with("error: unrecognized subcommand 'frobnicate'"), "{stderr}");
}

#[test]
fn no_subcommand_is_a_usage_error() {
    let output = run_weir(&[], LIMIT);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "{:?}", text(&output));
    assert!(text(&output).1.contains("Usage: weir"), "{:?}", text(&output));
}

// ------------------------------------------------------------- log format

#[test]
fn json_logs_are_one_object_per_line() {
    let scratch = Scratch::new();
    let pipeline_text = pipeline(
        "gen://?count=3",
        path_str(&plugin("faulty")),
        "config = { fail_on = \"seq\" }\non_error = \"skip\"",
        "",
    );
    let file = scratch.write("pipeline.toml", &pipeline_text);
    let (_, stderr) = weir_ok(&["--log-format", "json", "run", path_str(&file)]);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["message"].is_string() && l["target"].is_string()));
    let skipped: Vec<_> =
        lines.iter().filter(|l| l["message"].as_str().unwrap().starts_with("message skipped")).collect();
    assert_eq!(skipped.len(), 3, "{stderr}");
    assert!(skipped.iter().all(|l| l["stage"] == "s" && l["level"] == "WARN"), "{stderr}");
    assert!(lines.iter().any(|l| l["message"] == "stage summary" && l["skipped"] == 3), "{stderr}");

    // The environment variable does the same, refusals included.
    let bad = scratch.write("bad.toml", &pipeline("gen://?count=1", &passthrough(), "concurency = 2", ""));
    let output = weir().args(["run", path_str(&bad)]).env("WEIR_LOG_FORMAT", "json").output().unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "{stderr}");
    let refusal: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(refusal["level"], "ERROR");
    assert!(refusal["message"].as_str().unwrap().contains("unknown field `concurency`"), "{refusal}");
}
