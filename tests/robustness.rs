//! Bad input, bad config, data exactness and trust boundaries, against the
//! real `weir` binary: each case checks the exit code, the message and the
//! bytes written.

mod support;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Runs without a plugin take a second or two; the cache case compiles one.
const LIMIT: Duration = Duration::from_secs(120);

fn assert_exit(output: &Output, code: i32) -> String {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(code), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stderr
}

/// A pipeline reading `input` (a file in the scratch folder) and writing
/// `output`, no stage.
fn copy_pipeline(scratch: &Scratch, input: (&str, &str), output: (&str, &str), sink_extra: &str) -> String {
    format!(
        "[[source]]\nname = \"in\"\nuri = {}\nformat = \"{}\"\n\n[[sink]]\nname = \"out\"\nuri = {}\nformat = \"{}\"\n{sink_extra}\n",
        toml_file_uri(&scratch.path(input.0)),
        input.1,
        toml_file_uri(&scratch.path(output.0)),
        output.1,
    )
}

// ------------------------------------------------------------ data exactness

#[test]
fn ndjson_json_values_pass_through_byte_exact() {
    let scratch = Scratch::new();
    let input = concat!(
        r#"{"value":{"b":1,"a":123456789012345678901234567890}}"#,
        "\n",
        r#"{"value": [1.50, {"z":null, "y":1e400}]}"#,
        "\n",
        r#"{"value":"text \"quoted\" é"}"#,
        "\n",
    );
    scratch.write("in.ndjson", input);
    let output = scratch.run(&copy_pipeline(&scratch, ("in.ndjson", "ndjson"), ("out.txt", "raw"), ""), LIMIT);
    assert_exit(&output, 0);
    assert_eq!(
        String::from_utf8(scratch.bytes("out.txt")).unwrap(),
        "{\"b\":1,\"a\":123456789012345678901234567890}\n[1.50, {\"z\":null, \"y\":1e400}]\ntext \"quoted\" é\n"
    );
}

#[test]
fn ndjson_round_trips_exactly_with_repeated_headers() {
    let scratch = Scratch::new();
    // What weir writes for these messages: repeated names (and a binary value
    // before a text one) take the array form; unique names the object form,
    // in message order.
    let envelopes = concat!(
        r#"{"key":"k","value":"{\"b\":1,\"a\":123456789012345678901234567890}","headers":[{"name":"h","value":"1"},{"name":"h","value":"2"}],"timestamp_ms":7}"#,
        "\n",
        r#"{"value":"v","headers":[{"name":"bin","value_b64":"gA=="},{"name":"t","value":"x"}]}"#,
        "\n",
        r#"{"value_b64":"/wA=","headers":{"z":"1","a":"2"},"headers_b64":{"b":"gQ=="}}"#,
        "\n",
    );
    scratch.write("in.ndjson", envelopes);
    let first = scratch.run(&copy_pipeline(&scratch, ("in.ndjson", "ndjson"), ("once.ndjson", "ndjson"), ""), LIMIT);
    assert_exit(&first, 0);
    assert_eq!(String::from_utf8(scratch.bytes("once.ndjson")).unwrap(), envelopes);
    // The object form with a repeated name is read in order, both kept.
    scratch.write("dup.ndjson", "{\"value\":\"v\",\"headers\":{\"h\":\"1\",\"h\":\"2\"}}\n");
    let dup = scratch.run(&copy_pipeline(&scratch, ("dup.ndjson", "ndjson"), ("dup-out.ndjson", "ndjson"), ""), LIMIT);
    assert_exit(&dup, 0);
    assert_eq!(
        String::from_utf8(scratch.bytes("dup-out.ndjson")).unwrap(),
        "{\"value\":\"v\",\"headers\":[{\"name\":\"h\",\"value\":\"1\"},{\"name\":\"h\",\"value\":\"2\"}]}\n"
    );
}

#[test]
fn raw_to_raw_keeps_every_byte_but_the_record_separator() {
    let scratch = Scratch::new();
    let input: &[u8] = b"crlf\r\nlone\rcr\n\xff\x00binary\n\nlast without newline";
    scratch.write_bytes("in.bin", input);
    let output = scratch.run(&copy_pipeline(&scratch, ("in.bin", "raw"), ("out.bin", "raw"), ""), LIMIT);
    assert_exit(&output, 0);
    assert_eq!(scratch.bytes("out.bin"), b"crlf\r\nlone\rcr\n\xff\x00binary\n\nlast without newline\n");
}

#[test]
fn a_raw_sink_refuses_a_value_that_would_split_into_several_records() {
    let scratch = Scratch::new();
    scratch.write("in.ndjson", "{\"value\":\"one\"}\n{\"value\":\"two\\nlines\"}\n{\"value\":\"three\"}\n");
    let pipeline = copy_pipeline(
        &scratch,
        ("in.ndjson", "ndjson"),
        ("out.txt", "raw"),
        "batch = { max_size = 1, max_wait_ms = 0 }",
    );
    let output = scratch.run(&pipeline, LIMIT);
    let stderr = assert_exit(&output, 1);
    assert!(
        stderr.contains(
            "error: pipeline halted: sink `out`: message 1 of 1 has a value containing a newline, which format = \
             \"raw\" (one value per line) cannot write without splitting it; use format = \"ndjson\""
        ),
        "{stderr}"
    );
    assert_eq!(scratch.bytes("out.txt"), b"one\n", "nothing of the refused batch or after it is written");
}

#[test]
fn a_file_sink_cuts_a_torn_last_record_before_appending() {
    let scratch = Scratch::new();
    scratch.write("in.txt", "new\n");
    scratch.write("out.txt", "old\ntorn-rec");
    let output = scratch.run(&copy_pipeline(&scratch, ("in.txt", "raw"), ("out.txt", "raw"), ""), LIMIT);
    let stderr = assert_exit(&output, 0);
    assert_eq!(scratch.bytes("out.txt"), b"old\nnew\n");
    let warning = format!(
        "{}: removed a torn last record (8 bytes without a newline, from an interrupted write)",
        scratch.path("out.txt").display()
    );
    assert!(stderr.contains(&warning), "{stderr}");
}

#[test]
fn a_second_process_cannot_append_to_a_locked_file_sink() {
    let scratch = Scratch::new();
    let out = scratch.path("out.txt");
    let first_pipeline = format!(
        "[[source]]\nname = \"in\"\nuri = \"stdio://\"\nformat = \"raw\"\n\n[[sink]]\nname = \"out\"\nuri = {}\nformat = \"raw\"\nbatch = {{ max_size = 1, max_wait_ms = 0 }}\n",
        toml_file_uri(&out)
    );
    let first_file = scratch.write("first.toml", &first_pipeline);
    let mut first = weir()
        .args(["run", first_file.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weir");
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(b"from the first\n").unwrap();
    stdin.flush().unwrap();
    assert!(wait_until(Duration::from_secs(30), || scratch.bytes("out.txt") == b"from the first\n"));

    scratch.write("in.txt", "from the second\n");
    let second = scratch.run(&copy_pipeline(&scratch, ("in.txt", "raw"), ("out.txt", "raw"), ""), LIMIT);
    let stderr = assert_exit(&second, 1);
    let expected = format!(
        "error: sink `out`: {} is locked by another process (another weir writing to it?); two writers would \
         interleave records",
        out.display()
    );
    assert!(stderr.lines().any(|l| l == expected), "{stderr}");

    drop(stdin);
    let first = wait_with_deadline(first, LIMIT);
    assert_exit(&first, 0);
    assert_eq!(scratch.bytes("out.txt"), b"from the first\n", "the refused run wrote nothing");
}

#[test]
fn a_sink_that_cannot_open_stops_the_run_before_anything_is_read() {
    let scratch = Scratch::new();
    scratch.write("in.txt", "a\n");
    std::fs::create_dir(scratch.path("out-dir")).unwrap();
    let output = scratch.run(&copy_pipeline(&scratch, ("in.txt", "raw"), ("out-dir", "raw"), ""), LIMIT);
    let stderr = assert_exit(&output, 1);
    let expected = format!("error: sink `out`: opening {} for appending: ", scratch.path("out-dir").display());
    assert!(stderr.lines().any(|l| l.starts_with(&expected) && l.contains("Is a directory")), "{stderr}");
}

// ------------------------------------------------------------ bad input

fn source_refusal(uri: &str) -> String {
    let scratch = Scratch::new();
    let pipeline =
        format!("[[source]]\nname = \"in\"\nuri = {}\n\n[[sink]]\nname = \"out\"\nuri = \"null://\"\n", toml_str(uri));
    let file = scratch.write("pipeline.toml", &pipeline);
    let line = refusal(&run_weir(&["run", file.to_str().unwrap()], LIMIT));
    let prefix = format!("{}:3: ", file.display());
    line.strip_prefix(&prefix).unwrap_or_else(|| panic!("expected `{prefix}...`, got {line}")).to_string()
}

#[test]
fn a_source_path_that_is_not_a_file_is_named_for_what_it_is() {
    let scratch = Scratch::new();
    let dir = scratch.dir.path().display().to_string();
    assert_eq!(
        source_refusal(&format!("file://{dir}")),
        format!("source `in`: input file {dir} is a folder, not a file")
    );
    assert_eq!(
        source_refusal("file:///dev/zero"),
        "source `in`: input file /dev/zero is a character device, not a file (a file:// source reads regular \
         files and named pipes)"
    );
    assert_eq!(
        source_refusal(&format!("file://{dir}/absent.ndjson")),
        format!("source `in`: input file {dir}/absent.ndjson does not exist")
    );
}

#[test]
fn an_endless_line_on_stdin_stops_the_run_at_max_message_bytes() {
    let scratch = Scratch::new();
    let pipeline = "[[source]]\nname = \"in\"\nuri = \"stdio://\"\nformat = \"raw\"\nmax_message_bytes = 1048576\n\n\
                    [[sink]]\nname = \"out\"\nuri = \"null://\"\n";
    let file = scratch.write("pipeline.toml", pipeline);
    let zero = std::fs::File::open("/dev/zero").expect("opening /dev/zero");
    let started = Instant::now();
    let output = run_weir_with_stdin(&["run", file.to_str().unwrap()], Stdio::from(zero), Duration::from_secs(60));
    let stderr = assert_exit(&output, 1);
    assert!(
        stderr.lines().any(|l| l
            == "error: source `in`: stdin line 1 is longer than max_message_bytes (1048576 bytes); raise \
                `max_message_bytes` on the source if such records are expected"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn lines_before_an_overlong_one_are_written_then_the_source_fails() {
    let scratch = Scratch::new();
    let mut input = b"short\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2000));
    input.extend_from_slice(b"\nafter\n");
    scratch.write_bytes("in.txt", &input);
    let pipeline = copy_pipeline(&scratch, ("in.txt", "raw"), ("out.txt", "raw"), "")
        .replace("format = \"raw\"\n\n[[sink]]", "format = \"raw\"\nmax_message_bytes = 1000\n\n[[sink]]");
    let output = scratch.run(&pipeline, LIMIT);
    let stderr = assert_exit(&output, 1);
    let expected = format!(
        "error: source `in`: {} line 2 is longer than max_message_bytes (1000 bytes)",
        scratch.path("in.txt").display()
    );
    assert!(stderr.lines().any(|l| l.starts_with(&expected)), "{stderr}");
    assert_eq!(scratch.bytes("out.txt"), b"short\n");
}

// ------------------------------------------------------------ bad config

/// A pipeline: a gen source (uri on line 3, `source_extra` on line 4), a
/// stage (plugin on line 8, `stage_extra` on line 9), a null sink (uri on
/// line 13, `sink_extra` on line 14). The plugin is never loaded: range
/// checks come first.
fn ranged(source_uri: &str, source_extra: &str, stage_extra: &str, sink_extra: &str) -> String {
    format!(
        "[[source]]\nname = \"in\"\nuri = \"{source_uri}\"\n{source_extra}\n\n[[stage]]\nname = \"s\"\nplugin = \"p.wasm\"\n{stage_extra}\n\n[[sink]]\nname = \"out\"\nuri = \"null://\"\n{sink_extra}\n"
    )
}

fn refused_at(text: &str) -> String {
    let scratch = Scratch::new();
    let file = scratch.write("pipeline.toml", text);
    let line = refusal(&run_weir(&["run", file.to_str().unwrap()], LIMIT));
    line.strip_prefix(&format!("{}:", file.display())).unwrap_or_else(|| panic!("no FILE: prefix: {line}")).to_string()
}

#[test]
fn every_numeric_setting_is_refused_outside_its_range_with_file_and_line() {
    let gen_ok = "gen://?count=1";
    let cases = [
        (
            ranged(gen_ok, "", "concurrency = 100000", ""),
            "9: stage `s`: `concurrency` = 100000 is out of range: it must be between 1 and 256",
        ),
        (
            ranged(gen_ok, "", "limits = { memory_mb = 17592186044416 }", ""),
            "9: stage `s`: `limits.memory_mb` = 17592186044416 is out of range: it must be between 1 and 4096",
        ),
        (
            ranged(gen_ok, "", "limits = { deadline_ms = 0 }", ""),
            "9: stage `s`: `limits.deadline_ms` = 0 is out of range: it must be between 1 and 3600000",
        ),
        (
            ranged(gen_ok, "", "batch = { max_wait_ms = 9999999999 }", ""),
            "9: stage `s`: `batch.max_wait_ms` = 9999999999 is out of range: it must be between 0 and 60000",
        ),
        (
            ranged(gen_ok, "", "batch = { max_size = 0 }", ""),
            "9: stage `s`: `batch.max_size` = 0 is out of range: it must be between 1 and 100000",
        ),
        (
            ranged(gen_ok, "", "retries = 4000000000", ""),
            "9: stage `s`: `retries` = 4000000000 is out of range: it must be between 0 and 100",
        ),
        (
            ranged(gen_ok, "", "retry_backoff_ms = 86400000", ""),
            "9: stage `s`: `retry_backoff_ms` = 86400000 is out of range: it must be between 0 and 60000",
        ),
        (
            ranged(gen_ok, "batch_size = 1000000", "", ""),
            "4: source `in`: `batch_size` = 1000000 is out of range: it must be between 1 and 100000",
        ),
        (
            ranged(gen_ok, "max_message_bytes = 0", "", ""),
            "4: source `in`: `max_message_bytes` = 0 is out of range: it must be between 1 and 1073741824",
        ),
        (
            ranged(gen_ok, "", "", "batch = { max_size = 0 }"),
            "14: sink `out`: `batch.max_size` = 0 is out of range: it must be between 1 and 100000",
        ),
        (
            ranged(gen_ok, "", "", "batch = { max_wait_ms = 18446744073 }"),
            "14: sink `out`: `batch.max_wait_ms` = 18446744073 is out of range: it must be between 0 and 60000",
        ),
        (
            ranged("gen://?rate=1e-20", "", "", ""),
            "3: source `in`: query parameter `rate=1e-20` is out of range: it must be between 0.001 and 10000000",
        ),
        (
            ranged("gen://?rate=NaN", "", "", ""),
            "3: source `in`: query parameter `rate=NaN` is out of range: it must be between 0.001 and 10000000",
        ),
        (
            ranged("gen://?size=100000000000", "", "", ""),
            "3: source `in`: query parameter `size=100000000000` is out of range: it must be between 0 and \
             8388608 (the source's max_message_bytes)",
        ),
        (
            ranged("redis://127.0.0.1:6379/s?block_ms=0", "", "", ""),
            "3: source `in`: query parameter `block_ms=0` is out of range: it must be between 1 and 60000",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(refused_at(&text), expected, "pipeline:\n{text}");
    }
}

#[test]
fn names_that_could_escape_a_folder_are_refused() {
    let cases = [
        (
            "[[stage]]",
            "../../../x",
            "[[stage]] name `../../../x`: character '/' is not allowed (use letters, digits, `_`, `.` and `-`)",
        ),
        ("[[source]]", ".hidden", "[[source]] name `.hidden`: must not start with `.`"),
        (
            "[[sink]]",
            "my sink",
            "[[sink]] name `my sink`: character ' ' is not allowed (use letters, digits, `_`, `.` and `-`)",
        ),
    ];
    for (table, name, expected) in cases {
        let mut text = ranged("gen://?count=1", "", "", "");
        let (line, default) = match table {
            "[[source]]" => (2, "name = \"in\""),
            "[[stage]]" => (7, "name = \"s\""),
            _ => (12, "name = \"out\""),
        };
        text = text.replacen(default, &format!("name = {}", toml_str(name)), 1);
        assert_eq!(refused_at(&text), format!("{line}: {expected}"), "pipeline:\n{text}");
    }
}

// ------------------------------------------------------------ trust boundaries

#[test]
fn a_tampered_cache_entry_is_recompiled_and_the_cache_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let cache = scratch.path("cache/components");
    let pipeline = format!(
        "[[source]]\nname = \"in\"\nuri = \"gen://?count=3\"\n\n[[stage]]\nname = \"pass\"\nplugin = {}\n\n\
         [[sink]]\nname = \"out\"\nuri = {}\nformat = \"raw\"\n",
        toml_str(plugin("passthrough").to_str().unwrap()),
        toml_file_uri(&scratch.path("out.txt")),
    );
    let file = scratch.write("pipeline.toml", &pipeline);
    let run = || {
        let child = weir()
            .args(["run", file.to_str().unwrap()])
            .env("WEIR_LOG", "info")
            .env("WEIR_CACHE_DIR", &cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weir");
        wait_with_deadline(child, LIMIT)
    };
    assert_exit(&run(), 0);
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();

    let stderr = assert_exit(&run(), 0);
    assert!(
        stderr.contains(
            "ignoring cache entry, recompiling: its content does not match its hash (corrupted or tampered with)"
        ),
        "{stderr}"
    );
    assert_ne!(std::fs::read(&entries[0]).unwrap(), bytes, "the entry was replaced");
    let stderr = assert_exit(&run(), 0);
    assert!(!stderr.contains("cache entry"), "the replaced entry loads cleanly:\n{stderr}");
    assert_eq!(scratch.lines("out.txt").len(), 9);
}

// ------------------------------------------------------------ hostile plugins

fn stage_pipeline(scratch: &Scratch, input: &str, plugin_name: &str, stage_extra: &str) -> String {
    scratch.write("in.ndjson", input);
    format!(
        "[[source]]\nname = \"in\"\nuri = {input}\nformat = \"ndjson\"\n\n\
         [[stage]]\nname = \"suspect\"\nplugin = {plugin}\non_error = \"dead-letter\"\n{stage_extra}\n\n\
         [[sink]]\nname = \"out\"\nuri = {out}\nformat = \"ndjson\"\n\n[dead_letter]\nuri = {dead}\n",
        input = toml_file_uri(&scratch.path("in.ndjson")),
        plugin = toml_str(plugin(plugin_name).to_str().unwrap()),
        out = toml_file_uri(&scratch.path("out.ndjson")),
        dead = toml_file_uri(&scratch.path("dead.ndjson")),
    )
}

#[test]
fn a_batch_where_every_message_traps_costs_bounded_time() {
    // 128 messages that each spin until the 100 ms deadline: bisecting them
    // all would take 255 deadline-long calls (25 s); the trap budget stops
    // isolation after 16 deadlines' worth of trapping calls.
    let scratch = Scratch::new();
    let input: String = (0..128).map(|i| format!("{{\"value\":\"spin {i}\"}}\n")).collect();
    let extra = "config = { loop_on = \"spin\" }\nbatch = { max_size = 128, max_wait_ms = 1000 }\n\
                 limits = { deadline_ms = 100 }";
    let started = Instant::now();
    let output = scratch.run(&stage_pipeline(&scratch, &input, "faulty", extra), LIMIT);
    let elapsed = started.elapsed();
    assert_exit(&output, 0);
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 128, "every message gets the policy once");
    assert!(
        dead.iter().any(|l| l["headers"]["weir-error"].as_str().unwrap().contains("the budget of 16 deadlines")),
        "{dead:?}"
    );
    assert!(dead.iter().all(|l| l["headers"]["weir-error"].as_str().unwrap().contains("deadline exceeded")));
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

#[test]
fn a_plugin_asleep_in_a_host_call_is_stopped_by_its_deadline() {
    // The guest asks WASI for an hour's sleep: no guest code runs meanwhile,
    // so only the host's clock can end the call at the 100 ms deadline.
    let scratch = Scratch::new();
    let input = "{\"value\":\"ok 1\"}\n{\"value\":\"nap\"}\n{\"value\":\"ok 2\"}\n";
    let extra = "config = { sleep_on = \"nap\" }\nlimits = { deadline_ms = 100 }";
    let started = Instant::now();
    let output = scratch.run(&stage_pipeline(&scratch, input, "faulty", extra), LIMIT);
    let elapsed = started.elapsed();
    assert_exit(&output, 0);
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"], "nap");
    let reason = dead[0]["headers"]["weir-error"].as_str().unwrap();
    assert!(reason.contains("deadline exceeded"), "{reason}");
    let out: Vec<String> = scratch.json_lines("out.ndjson").iter().map(|l| l["value"].to_string()).collect();
    assert_eq!(out, ["\"ok 1\"", "\"ok 2\""]);
    assert!(elapsed < Duration::from_secs(30), "an hour's sleep held the run for {elapsed:?}");
}

#[test]
fn a_plugin_asleep_in_init_is_refused_at_its_deadline() {
    let scratch = Scratch::new();
    let extra = "config = { init_sleep = \"1\" }\nlimits = { deadline_ms = 200 }";
    let started = Instant::now();
    let output = scratch.run(&stage_pipeline(&scratch, "{\"value\":\"x\"}\n", "faulty", extra), LIMIT);
    let stderr = assert_exit(&output, 2);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(
        stderr.contains("stage `suspect`: plugin init failed: deadline exceeded: the call ran longer than 200 ms"),
        "{stderr}"
    );
}

#[test]
fn the_state_quota_stops_a_plugin_that_hoards_state() {
    // Each "hoard" message stores 1 MiB: under a 2 MiB quota the first fits,
    // the rest trap with the quota named, and the state file stays bounded.
    let scratch = Scratch::new();
    let input: String = (1..=5).map(|i| format!("{{\"value\":\"hoard {i}\"}}\n")).collect();
    let extra = "config = { hoard_on = \"hoard\" }\nlimits = { state_mb = 2 }";
    let output = scratch.run(&stage_pipeline(&scratch, &input, "faulty", extra), LIMIT);
    assert_exit(&output, 0);
    let out = scratch.json_lines("out.ndjson");
    assert_eq!(out.len(), 1, "{out:?}");
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 4, "{dead:?}");
    for line in &dead {
        let reason = line["headers"]["weir-error"].as_str().unwrap();
        assert!(reason.contains("state quota exceeded") && reason.contains("over `limits.state_mb` = 2"), "{reason}");
    }
    let list = run_weir(&["state", "list", scratch.path("pipeline.toml").to_str().unwrap()], LIMIT);
    let (listed, _) = text(&list);
    let saved: u64 = listed.trim().split('\t').nth(2).and_then(|b| b.strip_suffix(" bytes")).unwrap().parse().unwrap();
    assert!((1 << 20..2 << 20).contains(&saved), "saved state of {saved} bytes: {listed}");
}

#[test]
fn plugin_logs_and_counters_are_capped() {
    let scratch = Scratch::new();
    let extra = "config = { chatter_on = \"chatter\" }";
    let output = scratch.run(&stage_pipeline(&scratch, "{\"value\":\"chatter\"}\n", "faulty", extra), LIMIT);
    let stderr = assert_exit(&output, 0);
    assert!(stderr.len() < 128 * 1024, "a 1 MiB log line reached the log: {} bytes of stderr", stderr.len());
    assert!(stderr.contains("more bytes not logged"), "{stderr}");
    let dropped: Vec<&str> = stderr.lines().filter(|l| l.contains("dropped:")).collect();
    assert_eq!(dropped.len(), 1, "refusals are reported once:\n{stderr}");
    assert!(dropped[0].contains("counter name of 1024 bytes is over the 128-byte limit"), "{}", dropped[0]);
    let summary = stderr.lines().find(|l| l.contains("stage summary")).expect("a stage summary");
    assert!(summary.contains("\"c255\": 1") && !summary.contains("\"c256\""), "256 names at most: {summary}");
    let chatter = stderr.lines().filter(|l| l.contains("chatter ")).count();
    assert!((100..=200).contains(&chatter), "{chatter} of 2,000 chatter lines logged; at most 200 a second");
    assert!(stderr.contains("plugin logs more than 200 lines per second"), "{stderr}");
    assert_eq!(scratch.lines("out.ndjson").len(), 1);
}

/// Peak resident memory of a run, from weir's closing summary.
fn peak_memory_mib(stderr: &str) -> u64 {
    let line = stderr.lines().find(|l| l.contains("run finished")).expect("a run summary");
    let after = line.split("peak memory ").nth(1).unwrap_or_else(|| panic!("no peak memory in: {line}"));
    after.trim_end_matches(" MiB").trim().parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn the_in_flight_budget_bounds_host_memory() {
    // 1 MiB messages read far faster than a file sink writes them, with
    // eight instances whose queues hold 32 batches: unbounded, the queues
    // fill with ~1 GiB (measured 1,032 MiB). A 16 MiB budget holds the run
    // to the instances' own memory plus the budget (measured ~400 MiB).
    let scratch = Scratch::new();
    let pipeline = |budget_mb: u64| {
        format!(
            "[[source]]\nname = \"in\"\nuri = \"gen://?count=400&size=1048576\"\nbatch_size = 16\n\n\
             [[stage]]\nname = \"pass\"\nplugin = {plugin}\nconcurrency = 8\n\n\
             [[sink]]\nname = \"out\"\nuri = {out}\nbatch = {{ max_size = 16 }}\n\n\
             [memory]\nmax_in_flight_mb = {budget_mb}\n",
            plugin = toml_str(plugin("passthrough").to_str().unwrap()),
            out = toml_file_uri(&scratch.path("out.ndjson")),
        )
    };
    let stderr = assert_exit(&scratch.run(&pipeline(16), LIMIT), 0);
    let peak = peak_memory_mib(&stderr);
    assert_eq!(scratch.lines("out.ndjson").len(), 400);
    assert!(peak < 640, "peak memory {peak} MiB under a 16 MiB in-flight budget");
}

#[test]
fn an_out_of_range_in_flight_budget_is_refused_at_its_line() {
    let scratch = Scratch::new();
    let text = "[[source]]\nname = \"in\"\nuri = \"gen://?count=1\"\n[[sink]]\nname = \"out\"\nuri = \"null://\"\n\
                [memory]\nmax_in_flight_mb = 0\n";
    let stderr = assert_exit(&scratch.run(text, LIMIT), 2);
    assert!(
        stderr.contains("pipeline.toml:8: [memory]: `max_in_flight_mb` = 0 is out of range: it must be between 1 and"),
        "{stderr}"
    );
}

#[test]
fn output_caps_fail_the_batch_with_a_named_reason() {
    let scratch = Scratch::new();
    // 20 lines → 20 outputs from one message, over `max_outputs = 10`.
    let many: String = (0..20).map(|i| format!("line {i}\\n")).collect();
    let input = format!("{{\"key\":\"many\",\"value\":\"{many}\"}}\n");
    let output = scratch.run(&stage_pipeline(&scratch, &input, "split-lines", "limits = { max_outputs = 10 }"), LIMIT);
    assert_exit(&output, 0);
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 1);
    let reason = dead[0]["headers"]["weir-error"].as_str().unwrap();
    assert!(
        reason.contains("output cap exceeded")
            && reason.contains("20 outputs in one call, over `limits.max_outputs` = 10"),
        "{reason}"
    );
    assert!(scratch.lines("out.ndjson").is_empty());

    // One 2 MiB output, over `max_output_mb = 1`.
    let scratch = Scratch::new();
    let input = format!("{{\"value\":\"{}\"}}\n", "x".repeat(2 << 20));
    let output = scratch.run(&stage_pipeline(&scratch, &input, "split-lines", "limits = { max_output_mb = 1 }"), LIMIT);
    assert_exit(&output, 0);
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 1);
    let reason = dead[0]["headers"]["weir-error"].as_str().unwrap();
    assert!(reason.contains("over `limits.max_output_mb` = 1"), "{reason}");

    // Out of range is refused at load.
    let scratch = Scratch::new();
    let output = scratch.run(&stage_pipeline(&scratch, "", "split-lines", "limits = { max_outputs = 0 }"), LIMIT);
    let stderr = assert_exit(&output, 2);
    assert!(stderr.contains("limits.max_outputs"), "{stderr}");
}

#[test]
fn a_guest_stack_overflow_is_named_once() {
    let scratch = Scratch::new();
    let input = "{\"value\":\"fine\"}\n{\"value\":\"deep\"}\n";
    let output = scratch.run(&stage_pipeline(&scratch, input, "faulty", "config = { stack_on = \"deep\" }"), LIMIT);
    assert_exit(&output, 0);
    assert_eq!(scratch.json_lines("out.ndjson").len(), 1);
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 1);
    let reason = dead[0]["headers"]["weir-error"].as_str().unwrap();
    assert!(reason.contains("out of bounds memory access") && reason.contains("overflows its own stack"), "{reason}");
    assert!(!reason.contains("wasm trap: wasm trap"), "{reason}");
}
