//! `weir new` + `weir build` + `weir test` + `weir run` in each language,
//! starting from an empty folder, with the real toolchains (see `.ci/run`).

mod support;

use std::time::Duration;

use support::*;

/// A cold Rust build of the SDK, or a Python/JS build plus a debug compile.
const LIMIT: Duration = Duration::from_secs(600);

fn scaffold(lang: &str) {
    toolchains(true);
    let scratch = Scratch::new();
    let dir = scratch.path(&format!("greet-{lang}"));
    let dir_arg = dir.to_str().unwrap();

    let output = run_weir(&["new", dir_arg, "--lang", lang], LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "weir new --lang {lang}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(dir.join("pipeline.toml").is_file() && dir.join("fixtures/expected.ndjson").is_file(), "{lang}");

    // Refuses to scaffold over a folder that is not empty.
    let again = run_weir(&["new", dir_arg, "--lang", lang], LIMIT);
    assert_eq!(again.status.code(), Some(2), "{lang}: {}", text(&again).1);

    let output = run_weir(&["build", dir_arg], LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "weir build ({lang})\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let wasm = std::path::PathBuf::from(stdout.trim());
    assert!(wasm.is_file(), "{lang}: weir build printed {stdout:?}");

    let input = dir.join("fixtures/input.ndjson");
    let expect = dir.join("fixtures/expected.ndjson");
    let output =
        run_weir(&["test", dir_arg, "--input", input.to_str().unwrap(), "--expect", expect.to_str().unwrap()], LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "weir test ({lang})\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("ok: 3 lines match {} (4 inputs → 2 outputs, 1 failed)", expect.display()),
        "{lang}"
    );

    // The config reaches init: another greeting no longer matches.
    let output = run_weir(
        &[
            "test",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--expect",
            expect.to_str().unwrap(),
            "--config",
            "greeting=Hi",
        ],
        LIMIT,
    );
    let (stdout, _) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{lang}: {stdout}");
    assert!(stdout.contains("2 of 3 lines differ"), "{lang}: {stdout}");
    assert!(stdout.contains(r#"Hi, Ada!"#), "{lang}: {stdout}");

    // `weir run` on the scaffolded pipeline works the first time.
    let output = run_weir(&["run", dir.join("pipeline.toml").to_str().unwrap()], LIMIT);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "weir run ({lang})\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let mut lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.sort_by_key(|l| l["key"].as_str().unwrap().to_string());
    assert_eq!(lines.len(), 3, "{lang}: {stdout}");
    let value = |i: usize| serde_json::from_str::<serde_json::Value>(lines[i]["value"].as_str().unwrap()).unwrap();
    assert_eq!(value(0), serde_json::json!({"name": "Ada", "greeting": "Hello, Ada!"}), "{lang}");
    assert_eq!(lines[1]["value"], "not json", "{lang}");
    assert_eq!(lines[1]["headers"]["weir-error"], "value is not a JSON object", "{lang}");
    assert_eq!(value(2), serde_json::json!({"name": "Grace", "greeting": "Hello, Grace!"}), "{lang}");
    assert_eq!(lines[2]["headers"], serde_json::json!({"greeted": "yes", "trace": "t-4"}), "{lang}");
}

#[test]
fn new_build_test_run_rust() {
    scaffold("rust");
}

#[test]
fn new_build_test_run_python() {
    scaffold("python");
}

#[test]
fn new_build_test_run_js() {
    scaffold("js");
}

#[test]
fn new_refuses_a_bad_name_and_an_unknown_language() {
    let scratch = Scratch::new();
    let output = run_weir(&["new", scratch.path("9lives").to_str().unwrap(), "--lang", "rust"], LIMIT);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("not a valid plugin name"), "{}", text(&output).1);
    let output = run_weir(&["new", scratch.path("x").to_str().unwrap(), "--lang", "cobol"], LIMIT);
    assert_eq!(output.status.code(), Some(2));
    assert!(!scratch.path("x").exists());
}
