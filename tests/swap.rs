//! Hot swap through the real binary: the admin API under load, refusals,
//! state across a swap, `weir dev` rebuilding a plugin being edited.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::{
    ADMIN_TOKEN, Admin, Scratch, free_port, plugin, start_weir, terminate, wait_until, wait_with_deadline, weir,
    workspace,
};

/// (status, body) of a request to the admin API, with the admin token.
fn post(port: u16, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    Admin::new(port).post(path, body)
}

fn get(port: u16, path: &str) -> Option<serde_json::Value> {
    Admin::new(port).get(path)
}

/// `weir run PIPELINE`, with the admin token set.
fn start(pipeline: &Path) -> Child {
    start_weir(&["run", pipeline.to_str().unwrap()], &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)])
}

fn header<'a>(line: &'a serde_json::Value, name: &str) -> &'a str {
    line["headers"][name].as_str().unwrap_or_else(|| panic!("header {name} missing in {line}"))
}

/// Checks a gen → ... → file output: every seq exactly once, per-key order.
fn check_exactly_once_in_key_order(lines: &[serde_json::Value]) {
    let mut seqs = BTreeSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for line in lines {
        let seq: u64 = header(line, "seq").parse().unwrap();
        assert!(seqs.insert(seq), "seq {seq} delivered twice");
        let key = line["key"].as_str().unwrap().to_string();
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(seq > prev, "key {key}: {seq} after {prev}");
        }
    }
    let n = seqs.len() as u64;
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), (0..n).collect::<Vec<_>>(), "a seq is missing");
}

#[test]
fn fifty_swaps_under_full_load_lose_and_repeat_nothing() {
    let scratch = Scratch::new();
    let (v1, v2) = (plugin("tag-v1"), plugin("tag-v2"));
    let port = free_port();
    let pipeline = scratch.write(
        "p.toml",
        &format!(
            r#"
            [[source]]
            name = "gen"
            uri = "gen://?keys=8"
            [[stage]]
            name = "tag"
            plugin = "{}"
            concurrency = 2
            dispatch = "partition"
            [[sink]]
            name = "out"
            uri = "file://out.ndjson"
            [admin]
            listen = "127.0.0.1:{port}"
            "#,
            v1.display()
        ),
    );
    let child = start(&pipeline);
    assert!(wait_until(Duration::from_secs(60), || get(port, "/health").is_some()), "admin API up");
    assert!(wait_until(Duration::from_secs(30), || scratch.lines("out.ndjson").len() > 1000), "output flowing");
    let (bytes1, bytes2) = (std::fs::read(&v1).unwrap(), std::fs::read(&v2).unwrap());
    for i in 0..50 {
        let (bytes, expect) = if i % 2 == 0 { (&bytes2, "2") } else { (&bytes1, "1") };
        let (status, body) = post(port, "/stages/tag/plugin", bytes);
        assert_eq!(status, 200, "swap {i}: {body}");
        let stages = get(port, "/stages").unwrap();
        let version = stages[0]["version"].as_str().unwrap();
        assert!(body["to"].as_str().is_some_and(|to| version.starts_with(to)), "swap {i} to v{expect}: {stages}");
    }
    terminate(&child);
    let output = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = scratch.json_lines("out.ndjson");
    check_exactly_once_in_key_order(&lines);
    let versions: BTreeMap<&str, usize> = lines.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(header(l, "v")).or_default() += 1;
        m
    });
    assert_eq!(
        versions.keys().copied().collect::<Vec<_>>(),
        ["1", "2"],
        "both versions ran, nothing else: {versions:?}"
    );
    let swaps = String::from_utf8_lossy(&output.stderr).matches("plugin swapped").count();
    assert_eq!(swaps, 50, "one log line per swap");
}

#[test]
fn bad_versions_are_refused_and_the_old_one_keeps_running() {
    let scratch = Scratch::new();
    let port = free_port();
    let pipeline = scratch.write(
        "p.toml",
        &format!(
            r#"
            [[source]]
            name = "gen"
            uri = "gen://?rate=2000&keys=4"
            [[stage]]
            name = "tag"
            plugin = "{}"
            [[sink]]
            name = "out"
            uri = "file://out.ndjson"
            [admin]
            listen = "127.0.0.1:{port}"
            "#,
            plugin("tag-v1").display()
        ),
    );
    let child = start(&pipeline);
    assert!(wait_until(Duration::from_secs(60), || get(port, "/health").is_some()), "admin API up");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let aggregator = std::fs::read(plugin("count-by-key")).unwrap();
    let needs_config = std::fs::read(plugin("json-filter")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("text", b"hello, not wasm".to_vec(), "not a WebAssembly file"),
        ("core module", core_module, "core WebAssembly module"),
        ("other world", aggregator, "is a aggregator but stage `tag` runs a processor"),
        ("init fails", needs_config, "plugin init failed"),
    ];
    for (what, bytes, reason) in cases {
        let before = scratch.lines("out.ndjson").len();
        let (status, body) = post(port, "/stages/tag/plugin", &bytes);
        assert_eq!(status, 422, "{what}: {body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{what}: {body}");
        let stages = get(port, "/stages").unwrap();
        let refused = &stages[0]["last_refused"];
        assert!(refused["reason"].as_str().unwrap().contains(reason), "{what}: {stages}");
        assert!(stages[0]["previous_version"].is_null(), "nothing was swapped: {stages}");
        assert!(
            wait_until(Duration::from_secs(20), || scratch.lines("out.ndjson").len() > before + 100),
            "{what}: output continues"
        );
    }
    let (status, _) = post(port, "/stages/tag/rollback", b"");
    assert_eq!(status, 409, "no previous version to roll back to");
    let (status, _) = post(port, "/stages/nope/plugin", b"x");
    assert_eq!(status, 404);
    terminate(&child);
    let output = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = scratch.json_lines("out.ndjson");
    assert!(lines.iter().all(|l| header(l, "v") == "1"), "only the original version ever ran");
    check_exactly_once_in_key_order(&lines);
}

#[test]
fn state_carries_over_a_swap_and_rollback_works() {
    let scratch = Scratch::new();
    let port = free_port();
    let pipeline = scratch.write(
        "p.toml",
        &format!(
            r#"
            [[source]]
            name = "gen"
            uri = "gen://?count=6000&rate=1000&keys=3"
            [[stage]]
            name = "count"
            plugin = "{}"
            batch = {{ max_size = 100, max_wait_ms = 20 }}
            [[sink]]
            name = "out"
            uri = "file://out.ndjson"
            [admin]
            listen = "127.0.0.1:{port}"
            "#,
            plugin("count-by-key").display()
        ),
    );
    let child = start(&pipeline);
    assert!(wait_until(Duration::from_secs(60), || scratch.lines("out.ndjson").len() > 5), "counting started");
    let (status, body) = post(port, "/stages/count/plugin", &std::fs::read(plugin("count-v2")).unwrap());
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(20), || scratch.lines("out.ndjson").iter().any(|l| l.contains(r#"\"v\":2"#))),
        "v2 running"
    );
    let (status, body) = post(port, "/stages/count/rollback", b"");
    assert_eq!(status, 200, "{body}");
    let output = wait_with_deadline(child, Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut previous: HashMap<String, u64> = HashMap::new();
    for line in scratch.json_lines("out.ndjson") {
        let value: serde_json::Value = serde_json::from_str(line["value"].as_str().unwrap()).unwrap();
        let key = value["key"].as_str().unwrap().to_string();
        let count = value["count"].as_u64().unwrap();
        if let Some(prev) = previous.insert(key.clone(), count) {
            assert!(count > prev, "count for {key} went from {prev} to {count}: state was lost in a swap");
        }
        last.insert(key, count);
    }
    assert_eq!(last, (0..3).map(|k| (format!("key-{k}"), 2000)).collect(), "counts continue across versions");
}

#[test]
fn weir_dev_rebuilds_and_swaps_an_edited_plugin() {
    let scratch = Scratch::new();
    let root = workspace();
    let crate_dir = scratch.path("devtag");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"devtag\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nweir-sdk = {{ path = \"{}\" }}\n\n[workspace]\n",
            root.join("sdk/rust").display()
        ),
    )
    .unwrap();
    // The workspace's lock file pins the same dependency versions, so the
    // shared target dir below already has them built.
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let source = |tag: &str| {
        format!(
            "use weir_sdk::{{Config, Message, Outcome, Processor}};\nstruct T;\nimpl Processor for T {{\n    \
             fn init(_: Config) -> Result<Self, String> {{ Ok(T) }}\n    \
             fn process(&mut self, m: Message) -> Outcome {{ Outcome::one(m.into_output().with_header(\"v\", \"{tag}\")) }}\n}}\n\
             weir_sdk::export_processor!(T);\n"
        )
    };
    std::fs::write(crate_dir.join("src/lib.rs"), source("a")).unwrap();
    let pipeline = scratch.write(
        "p.toml",
        r#"
        [[source]]
        name = "gen"
        uri = "gen://?rate=1000&keys=4"
        [[stage]]
        name = "tag"
        plugin = "devtag"
        [[sink]]
        name = "out"
        uri = "file://out.ndjson"
        "#,
    );
    let child = weir()
        .args(["dev", pipeline.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let has = |tag: &str| scratch.lines("out.ndjson").iter().any(|l| l.contains(&format!(r#""v":"{tag}""#)));
    assert!(wait_until(Duration::from_secs(180), || has("a")), "first version running");

    std::fs::write(crate_dir.join("src/lib.rs"), source("b")).unwrap();
    assert!(wait_until(Duration::from_secs(180), || has("b")), "edited version swapped in");

    // A broken edit: the build fails, the running version keeps running.
    std::fs::write(crate_dir.join("src/lib.rs"), "this is not rust").unwrap();
    let before = scratch.lines("out.ndjson").len();
    assert!(
        wait_until(Duration::from_secs(180), || scratch.lines("out.ndjson").len() > before + 2000),
        "still running"
    );

    terminate(&child);
    let output = wait_with_deadline(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stage `tag` swapped"), "one line per swap: {stderr}");
    assert!(stderr.contains("build failed"), "the build error is reported: {stderr}");
    let lines = scratch.json_lines("out.ndjson");
    let tail = &lines[lines.len() - 500..];
    assert!(tail.iter().all(|l| header(l, "v") == "b"), "the good version kept running after the broken edit");
    check_exactly_once_in_key_order(&lines);
}
