//! The Python and JavaScript SDKs' own unit tests (their packed codecs
//! against reference encoders written from `docs/packed-abi.md`), run from
//! `cargo test` so the one test command covers them. They need python3 and
//! node, which the plugin builds need anyway.

mod support;

use std::process::Command;

use support::workspace;

fn run(program: &str, args: &[&str], dir: &str) {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (needed for the {dir} tests): {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {args:?} in {dir} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn python_sdk_unit_tests_pass() {
    run("python3", &["-m", "unittest", "discover", "-s", "tests", "-v"], "sdk/python");
}

#[test]
fn js_sdk_unit_tests_pass() {
    run("node", &["--test", "test/"], "sdk/js");
}
