//! Faults around the pipeline, against the real `weir` binary: sinks that
//! cannot write (a full device, a closed port, a write that never ends) and
//! signals while batches are open. Nothing may hang silently: every case
//! checks the exit code, the message, the time it took and what was written.

mod support;

use std::time::Duration;

use support::*;

/// Long enough for a loaded CI machine; the runs themselves take a second or two.
const LIMIT: Duration = Duration::from_secs(60);
/// How long a bounded failure or a signalled drain may take, at most.
const PROMPT: Duration = Duration::from_secs(10);

fn sink_on(uri: &str, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"in\"\nuri = \"gen://?count=10\"\n\n[[sink]]\nname = \"out\"\nuri = {}\n{extra}\n",
        toml_str(uri)
    )
}

#[test]
fn a_file_sink_on_a_full_device_retries_then_exits_1_naming_the_sink_and_the_error() {
    let scratch = Scratch::new();
    let started = std::time::Instant::now();
    let output = scratch.run(&sink_on("file:///dev/full", "retries = 2\nretry_backoff_ms = 50"), LIMIT);
    let elapsed = started.elapsed();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    // Each failed attempt is logged with the sink and the OS error...
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN") && l.contains("write of 10")).collect();
    assert_eq!(warnings.len(), 2, "one warning per retried attempt:\n{stderr}");
    assert!(warnings.iter().all(|l| l.contains("sink `out`") && l.contains("No space left on device")), "{stderr}");
    // ...and the exit names both.
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("sink `out`"), "{error}");
    assert!(error.contains("failed 3 times, giving up"), "{error}");
    assert!(error.contains("writing /dev/full: No space left on device"), "{error}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error: ")).count(), 1, "one clear error:\n{stderr}");
}

#[test]
fn a_dead_letter_on_a_full_device_exits_1_naming_it() {
    let scratch = Scratch::new();
    scratch.write("in.ndjson", "{\"value\":\"a\"}\nnot json\n{\"value\":\"b\"}\n");
    let pipeline = format!(
        "[[source]]\nname = \"in\"\nuri = {}\n\n[[sink]]\nname = \"out\"\nuri = {}\n\n[dead_letter]\nuri = \"file:///dev/full\"\nretries = 1\nretry_backoff_ms = 10\n",
        toml_file_uri(&scratch.path("in.ndjson")),
        toml_file_uri(&scratch.path("out.ndjson")),
    );
    let started = std::time::Instant::now();
    let output = scratch.run(&pipeline, LIMIT);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert!(stderr.contains("WARN") && stderr.contains("[dead_letter]: write of 1 messages failed"), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("[dead_letter]") && error.contains("No space left on device"), "{error}");
}

#[test]
fn a_redis_sink_on_a_closed_port_gives_up_after_its_retries() {
    let scratch = Scratch::new();
    let uri = format!("redis://127.0.0.1:{}/out", free_port());
    let started = std::time::Instant::now();
    let output = scratch.run(&sink_on(&uri, "retries = 3\nretry_backoff_ms = 20"), LIMIT);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    let warnings = stderr.lines().filter(|l| l.contains("WARN") && l.contains("sink `out`")).count();
    assert_eq!(warnings, 3, "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("sink `out`: write of 10 messages failed 4 times"), "{error}");
    assert!(error.contains("Connection refused"), "{error}");
}

#[test]
fn a_sink_retrying_forever_logs_every_attempt_and_stops_within_the_drain_timeout() {
    let scratch = Scratch::new();
    let uri = format!("redis://127.0.0.1:{}/out", free_port());
    let pipeline = format!(
        "{}\n[shutdown]\ndrain_timeout_ms = 1000\n",
        sink_on(&uri, "retries = \"forever\"\nretry_backoff_ms = 20")
    );
    let mut weir = scratch.start(&pipeline);
    // Well past any bounded default: it keeps going, and says so each time.
    weir.wait_for_log(LIMIT, "eight attempts", |log| log.matches("retrying forever").count() >= 8);
    assert!(!weir.stderr().contains("error: "), "{}", weir.stderr());
    weir.signal("-TERM");
    let (code, stderr, elapsed) = weir.wait(LIMIT);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(elapsed < PROMPT, "SIGTERM took {elapsed:?} to stop it");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("drain timed out after 1s"), "{error}");
    assert!(error.contains("sink `out`: 10 messages not written") && error.contains("Connection refused"), "{error}");
}

#[test]
fn sigterm_flushes_open_sink_batches_at_once() {
    let scratch = Scratch::new();
    let out = scratch.path("out.ndjson");
    let pipeline = sink_on(
        out.to_str().map(|p| format!("file://{p}")).as_deref().unwrap(),
        "batch = { max_size = 100000, max_wait_ms = 60000 }",
    );
    let mut weir = scratch.start(&pipeline);
    // The sink opens (creating its file) before the source reads.
    assert!(wait_until(LIMIT, || out.exists()), "the sink never opened; stderr:\n{}", weir.stderr());
    weir.wait_for_log(LIMIT, "the source's last message", |log| log.contains("generator emitted its messages"));
    assert_eq!(scratch.lines("out.ndjson").len(), 0, "the batch is open, nothing written yet");
    weir.signal("-TERM");
    let (code, stderr, elapsed) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    assert_eq!(scratch.lines("out.ndjson").len(), 10, "{stderr}");
}

#[test]
fn sigterm_flushes_a_stage_batch_with_a_long_max_wait() {
    let scratch = Scratch::new();
    let pipeline = format!(
        r#"
[[source]]
name = "in"
uri = "gen://?count=50"

[[stage]]
name = "pass"
plugin = {}
batch = {{ max_size = 100000, max_wait_ms = 60000 }}

[[sink]]
name = "out"
uri = {}
batch = {{ max_size = 10, max_wait_ms = 5 }}
"#,
        toml_str(plugin("passthrough").to_str().unwrap()),
        toml_file_uri(&scratch.path("out.ndjson")),
    );
    let mut weir = scratch.start(&pipeline);
    weir.wait_for_log(LIMIT, "the source's last message", |log| log.contains("generator emitted its messages"));
    assert_eq!(scratch.lines("out.ndjson").len(), 0, "the stage's batch is open, nothing written yet");
    weir.signal("-TERM");
    let (code, stderr, elapsed) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    assert_eq!(scratch.lines("out.ndjson").len(), 50, "{stderr}");
}

#[test]
fn a_write_that_never_ends_is_abandoned_at_the_drain_timeout() {
    let scratch = Scratch::new();
    let pipeline = r#"
[[source]]
name = "in"
uri = "gen://?rate=1000"

[[sink]]
name = "slow"
uri = "null://?delay_ms=3600000"
batch = { max_size = 100, max_wait_ms = 5 }

[shutdown]
drain_timeout_ms = 1500
"#;
    let mut weir = scratch.start(pipeline);
    weir.wait_for_log(LIMIT, "the sink's first write", |log| log.contains("null sink holding a batch"));
    weir.signal("-TERM");
    let (code, stderr, elapsed) = weir.wait(LIMIT);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(elapsed >= Duration::from_millis(1400) && elapsed < PROMPT, "took {elapsed:?}");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("drain timed out after 1.5s"), "{error}");
    assert!(error.contains("sink `slow`") && error.contains("messages being written"), "{error}");
    assert!(error.contains("will be delivered again"), "{error}");
}

#[test]
fn retry_and_drain_settings_are_validated() {
    let scratch = Scratch::new();
    let refused = refusal(&scratch.run(&sink_on("null://", "retries = \"sometimes\""), LIMIT));
    assert!(refused.contains("retries") && refused.contains("forever"), "{refused}");
    let refused = refusal(&scratch.run(&sink_on("null://", "retries = -1"), LIMIT));
    assert!(refused.contains("out of range"), "{refused}");
    let refused = refusal(&scratch.run(&sink_on("null://", "retry_backoff_ms = 100000"), LIMIT));
    assert!(refused.contains("sink `out`") && refused.contains("retry_backoff_ms"), "{refused}");
    let refused =
        refusal(&scratch.run(&format!("{}\n[shutdown]\ndrain_timeout_ms = 5\n", sink_on("null://", "")), LIMIT));
    assert!(
        refused.contains("[shutdown]") && refused.contains("drain_timeout_ms") && refused.contains("100"),
        "{refused}"
    );
}
