//! The admin API locked by default, through the real binary and a real HTTP
//! client: the token the mutating endpoints need, the listen rule checked at
//! load, the body limits, and old plugin versions released after swaps.

mod support;

use std::path::PathBuf;
use std::process::{Child, Output};
use std::sync::Arc;
use std::time::Duration;

use support::{
    ADMIN_TOKEN, Admin, Scratch, free_port, plugin, refusal, start_weir, terminate, text, wait_until,
    wait_with_deadline, with_custom_section,
};

/// A running pipeline file: gen → `tag` (tag-v1) → out.ndjson, with
/// `admin` as the body of its `[admin]` table.
fn pipeline(scratch: &Scratch, admin: &str) -> PathBuf {
    scratch.write(
        "pipeline.toml",
        &format!(
            "[[source]]\nname = \"gen\"\nuri = \"gen://?rate=2000&keys=4\"\n\n\
             [[stage]]\nname = \"tag\"\nplugin = {}\n\n\
             [[sink]]\nname = \"out\"\nuri = \"file://out.ndjson\"\n\n\
             [admin]\n{admin}\n",
            support::toml_str(plugin("tag-v1").to_str().unwrap())
        ),
    )
}

/// Starts the pipeline with `env` and waits for its admin API on `port`.
fn start(scratch: &Scratch, port: u16, admin: &str, env: &[(&str, &str)]) -> Child {
    let file = pipeline(scratch, admin);
    let child = start_weir(&["run", file.to_str().unwrap()], env);
    assert!(Admin::anonymous(port).wait_up(Duration::from_secs(60)), "admin API up on {port}");
    child
}

/// Stops a run started by [`start`] and checks it ended well.
fn stop(child: Child) -> Output {
    terminate(&child);
    let output = wait_with_deadline(child, Duration::from_secs(30));
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    output
}

/// Runs `weir run` on the pipeline with `env`, expecting it to stop at once.
fn load(scratch: &Scratch, admin: &str, env: &[(&str, &str)]) -> Output {
    let file = pipeline(scratch, admin);
    wait_with_deadline(start_weir(&["run", file.to_str().unwrap()], env), Duration::from_secs(60))
}

fn line_of(scratch: &Scratch, needle: &str) -> usize {
    let text = std::fs::read_to_string(scratch.path("pipeline.toml")).unwrap();
    text.lines().position(|l| l.contains(needle)).expect("needle in the pipeline file") + 1
}

fn stages(port: u16) -> serde_json::Value {
    Admin::anonymous(port).get("/stages").expect("GET /stages")[0].clone()
}

fn v2() -> Vec<u8> {
    std::fs::read(plugin("tag-v2")).unwrap()
}

#[test]
fn without_a_configured_token_mutating_endpoints_are_refused_with_403() {
    let scratch = Scratch::new();
    let port = free_port();
    let child = start(&scratch, port, &format!("listen = \"127.0.0.1:{port}\""), &[]);
    let running = stages(port)["version"].clone();
    for admin in [Admin::new(port), Admin::anonymous(port)] {
        for (path, body) in [("/stages/tag/plugin", v2()), ("/stages/tag/rollback", Vec::new())] {
            let reply = admin.request_post(path, &body);
            assert_eq!(reply.status, 403, "{path}: {reply:?}");
            let message = reply.body["error"].as_str().unwrap();
            assert!(message.contains("read-only"), "{message}");
            assert!(message.contains("WEIR_ADMIN_TOKEN"), "says how to enable them: {message}");
        }
    }
    // Read-only endpoints stay open.
    let health = Admin::anonymous(port).request_get("/health", b"");
    assert_eq!((health.status, health.body.as_str()), (200, Some("ok")));
    let stage = stages(port);
    assert_eq!(stage["version"], running, "nothing was swapped");
    assert!(stage["previous_version"].is_null());
    let (_, stderr) = text(&stop(child));
    assert!(stderr.contains("read-only: set WEIR_ADMIN_TOKEN"), "the start says so: {stderr}");
}

#[test]
fn a_missing_or_wrong_token_gets_401_and_the_right_one_swaps() {
    let scratch = Scratch::new();
    let port = free_port();
    let child = start(&scratch, port, &format!("listen = \"127.0.0.1:{port}\""), &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let running = stages(port)["version"].clone();

    let missing = Admin::anonymous(port).request_post("/stages/tag/plugin", &v2());
    assert_eq!(missing.status, 401, "{missing:?}");
    assert!(missing.challenge.as_deref().is_some_and(|c| c.starts_with("Bearer ")), "{missing:?}");
    assert!(missing.body["error"].as_str().unwrap().contains("Authorization: Bearer"), "{missing:?}");

    let impostor = Admin { port, token: Some(format!("{ADMIN_TOKEN}x")) };
    for (path, body) in [("/stages/tag/plugin", v2()), ("/stages/tag/rollback", Vec::new())] {
        let wrong = impostor.request_post(path, &body);
        assert_eq!(wrong.status, 401, "{path}: {wrong:?}");
        assert!(wrong.challenge.as_deref().is_some_and(|c| c.contains("invalid_token")), "{wrong:?}");
    }
    let prefix = Admin { port, token: Some(ADMIN_TOKEN[..20].to_string()) };
    assert_eq!(prefix.request_post("/stages/tag/rollback", b"").status, 401, "a prefix of the token is wrong");
    assert_eq!(stages(port)["version"], running, "nothing was swapped");

    let admin = Admin::new(port);
    let (status, body) = admin.post("/stages/tag/plugin", &v2());
    assert_eq!(status, 200, "{body}");
    let stage = stages(port);
    assert!(stage["version"].as_str().unwrap().starts_with(body["to"].as_str().unwrap()), "{stage}");
    assert!(
        wait_until(Duration::from_secs(20), || scratch.lines("out.ndjson").iter().any(|l| l.contains(r#""v":"2""#))),
        "v2 running"
    );
    let (status, body) = admin.post("/stages/tag/rollback", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(stages(port)["version"], running, "rolled back");
    stop(child);
}

#[test]
fn token_env_names_the_variable_the_token_comes_from() {
    let scratch = Scratch::new();
    let port = free_port();
    let secret = "another-admin-secret-abcdefghij";
    let child = start(
        &scratch,
        port,
        &format!("listen = \"127.0.0.1:{port}\"\ntoken_env = \"MY_WEIR_SECRET\""),
        &[("MY_WEIR_SECRET", &format!("{secret}\n")), ("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    // WEIR_ADMIN_TOKEN is not the one any more; the trailing newline is ignored.
    assert_eq!(Admin::new(port).request_post("/stages/tag/rollback", b"").status, 401);
    let reply = Admin { port, token: Some(secret.to_string()) }.request_post("/stages/tag/rollback", b"");
    assert_eq!(reply.status, 409, "authorised, and nothing to roll back to: {reply:?}");
    stop(child);
}

#[test]
fn bodies_over_the_limit_get_413() {
    let scratch = Scratch::new();
    let port = free_port();
    let admin_table = format!("listen = \"127.0.0.1:{port}\"\nmax_body_mb = 1");
    let child = start(&scratch, port, &admin_table, &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let running = stages(port)["version"].clone();
    let admin = Admin::new(port);

    let big = with_custom_section(&v2(), "padding", 3 << 19);
    let reply = admin.request_post("/stages/tag/plugin", &big);
    assert_eq!(reply.status, 413, "{reply:?}");
    let message = reply.body["error"].as_str().unwrap();
    assert!(message.contains("at most 1 MiB") && message.contains("max_body_mb"), "{message}");
    // The token is checked before the body is read.
    assert_eq!(Admin::anonymous(port).request_post("/stages/tag/plugin", &big).status, 401);

    // The endpoints that take no body refuse a large one.
    let junk = vec![b'x'; 100_000];
    let reply = Admin::anonymous(port).request_get("/stages", &junk);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("takes no body"), "{reply:?}");
    assert_eq!(admin.request_post("/stages/tag/rollback", &junk).status, 413);
    assert_eq!(Admin::anonymous(port).request_get("/health", &junk).status, 413);
    assert_eq!(stages(port)["version"], running, "nothing was swapped");

    // Under the limit, the same plugin goes through.
    let (status, body) = admin.post("/stages/tag/plugin", &with_custom_section(&v2(), "padding", 1 << 19));
    assert_eq!(status, 200, "{body}");
    stop(child);
}

#[test]
fn a_20_mb_component_is_accepted_under_the_default_limit() {
    let scratch = Scratch::new();
    let port = free_port();
    let child = start(&scratch, port, &format!("listen = \"127.0.0.1:{port}\""), &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    // As large as a Python component (~19 MB), larger than a JS one (~12 MB).
    let large = with_custom_section(&v2(), "padding", 20 << 20);
    let (status, body) = Admin::new(port).post("/stages/tag/plugin", &large);
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(20), || scratch.lines("out.ndjson").iter().any(|l| l.contains(r#""v":"2""#))),
        "the 20 MB version runs"
    );
    stop(child);
}

#[test]
fn an_unsafe_admin_table_is_refused_at_load() {
    let scratch = Scratch::new();
    let port = free_port();

    // Another address than loopback, without a token.
    for listen in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
        let output = load(&scratch, &format!("listen = \"{listen}\""), &[]);
        let message = refusal(&output);
        let at = format!("pipeline.toml:{}: ", line_of(&scratch, "listen ="));
        assert!(message.contains(&at), "names the line ({at}): {message}");
        assert!(message.contains("not a loopback address"), "{message}");
        assert!(message.contains("replace a stage's code"), "says why: {message}");
        assert!(message.contains("WEIR_ADMIN_TOKEN") && message.contains("127.0.0.1"), "says how: {message}");
    }

    // The token in the file itself.
    let output = load(&scratch, &format!("listen = \"127.0.0.1:{port}\"\ntoken = \"{ADMIN_TOKEN}\""), &[]);
    let message = refusal(&output);
    assert!(message.contains(&format!("pipeline.toml:{}: ", line_of(&scratch, "token ="))), "{message}");
    assert!(message.contains("does not go in the pipeline file"), "{message}");

    // A token too short to be a secret.
    let output = load(&scratch, &format!("listen = \"127.0.0.1:{port}\""), &[("WEIR_ADMIN_TOKEN", "hunter2")]);
    assert!(refusal(&output).contains("fewer than 16"), "{}", refusal(&output));

    // Body limits outside their range.
    for mb in [0, 4096] {
        let output = load(&scratch, &format!("listen = \"127.0.0.1:{port}\"\nmax_body_mb = {mb}"), &[]);
        let message = refusal(&output);
        assert!(message.contains(&format!("pipeline.toml:{}: ", line_of(&scratch, "max_body_mb"))), "{message}");
        assert!(message.contains("between 1 and 1024"), "{message}");
    }
}

#[test]
fn a_non_loopback_listen_with_a_token_starts_with_a_warning() {
    let scratch = Scratch::new();
    let port = free_port();
    let child = start(&scratch, port, &format!("listen = \"0.0.0.0:{port}\""), &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    assert_eq!(Admin::new(port).request_post("/stages/tag/rollback", b"").status, 409);
    let (_, stderr) = text(&stop(child));
    assert!(stderr.contains("plain HTTP"), "warns that the token crosses the network: {stderr}");
}

#[test]
fn swapped_out_versions_are_released() {
    let scratch = Scratch::new();
    let port = free_port();
    let child = start(&scratch, port, &format!("listen = \"127.0.0.1:{port}\""), &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    assert_eq!(stages(port)["live_versions"], 1);
    let admin = Admin::new(port);
    let v1 = std::fs::read(plugin("tag-v1")).unwrap();
    let mut versions = Vec::new();
    for i in 0..12 {
        let (status, body) = admin.post("/stages/tag/plugin", &with_custom_section(&v1, &format!("v{i}"), 1 << 20));
        assert_eq!(status, 200, "swap {i}: {body}");
        versions.push(stages(port)["version"].as_str().unwrap().to_string());
    }
    // The running version and the one kept for rollback; the ten before are
    // freed once the worker has moved on (it does before its next batch).
    let live = || stages(port)["live_versions"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(20), || live() == 2), "live versions: {}", live());
    let stage = stages(port);
    assert_eq!(stage["previous_version"].as_str(), Some(versions[10].as_str()), "{stage}");
    let (status, body) = admin.post("/stages/tag/rollback", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(stages(port)["version"].as_str(), Some(versions[10].as_str()));
    // A version freed earlier can be sent again: it is compiled (or read from
    // the disk cache) anew.
    let (status, body) = admin.post("/stages/tag/plugin", &with_custom_section(&v1, "v0", 1 << 20));
    assert_eq!(status, 200, "{body}");
    assert_eq!(stages(port)["version"].as_str(), Some(versions[0].as_str()));
    assert!(wait_until(Duration::from_secs(20), || live() == 2), "live versions: {}", live());
    stop(child);
}

/// The same through the library: a stage holds its running version and one
/// previous one; a version held elsewhere (a worker's) is counted until it
/// is let go.
#[test]
fn a_stage_keeps_at_most_one_previous_version() {
    use weir::plugin::swap::HotPlugin;
    use weir::plugin::{Runtime, StageContext};

    let runtime = Runtime::new().unwrap();
    let path = plugin("tag-v1");
    let v1 = std::fs::read(&path).unwrap();
    let first = runtime.load_bytes(&v1).unwrap();
    let hot = HotPlugin::new(runtime.clone(), Arc::new(StageContext::new("tag", vec![])), first, path);
    let held = hot.current();
    for i in 0..10 {
        hot.swap_bytes(&with_custom_section(&v1, &format!("v{i}"), 64)).unwrap();
    }
    assert_eq!(hot.status().live_versions, 3, "running, previous, and the one still held");
    // The runtime's own table of compiled versions holds none of them.
    assert_eq!(runtime.loaded_versions(), 3);
    drop(held);
    assert_eq!(hot.status().live_versions, 2, "running and previous");
    assert_eq!(runtime.loaded_versions(), 2, "the compiled code of the other nine is freed");
    hot.rollback().unwrap();
    hot.rollback().unwrap();
    assert_eq!(hot.status().live_versions, 2, "rollbacks swap the two");
    // A freed version loads again (from the disk cache).
    hot.swap_bytes(&with_custom_section(&v1, "v0", 64)).unwrap();
    assert_eq!(runtime.loaded_versions(), 2);
}

#[test]
fn metrics_count_what_the_pipeline_did() {
    // An HTTP collector → faulty (fails "bad", panics on "boom") → null,
    // with a dead letter: after one request of 10 events, /metrics shows
    // exactly what happened, per component.
    let scratch = Scratch::new();
    let (ingest, admin) = (free_port(), free_port());
    let text = format!(
        "[[source]]\nname = \"events\"\nuri = \"http://127.0.0.1:{ingest}/ingest\"\n\n\
         [[stage]]\nname = \"filter\"\nplugin = {plugin}\non_error = \"dead-letter\"\n\
         config = {{ fail_on = \"bad\", panic_on = \"boom\" }}\n\n\
         [[sink]]\nname = \"out\"\nuri = \"null://\"\nbatch = {{ max_size = 100, max_wait_ms = 0 }}\n\n\
         [dead_letter]\nuri = \"null://\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        plugin = support::toml_str(plugin("faulty").to_str().unwrap()),
    );
    let mut weir = scratch.start(&text);
    weir.wait_for_log(Duration::from_secs(60), "the collector", |l| l.contains("HTTP collector listening"));
    let body: String = ["ok", "bad", "ok", "boom", "ok", "bad", "ok", "ok", "bad", "ok"]
        .iter()
        .map(|v| format!("{{\"value\":\"{v}\"}}\n"))
        .collect();
    let reply = Admin::anonymous(ingest).request_post("/ingest", body.as_bytes());
    assert_eq!(reply.status, 200, "{reply:?}");
    let scrape = Admin::anonymous(admin).request_get("/metrics", b"");
    assert_eq!(scrape.status, 200, "/metrics needs no token: {scrape:?}");
    let metrics = scrape.body.as_str().expect("text").to_string();
    for line in [
        "weir_component_received_events_total{component=\"events\",kind=\"source\"} 10",
        "weir_component_processed_events_total{component=\"filter\",kind=\"stage\"} 6",
        "weir_component_dead_lettered_events_total{component=\"filter\",kind=\"stage\"} 4",
        "weir_component_sent_events_total{component=\"out\",kind=\"sink\"} 6",
        "weir_component_sent_events_total{component=\"dead_letter\",kind=\"dead_letter\"} 4",
        "weir_component_pending_events{component=\"out\",kind=\"sink\"} 0",
        "weir_in_flight_bytes 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    }
    let traps = metrics
        .lines()
        .find(|l| l.starts_with("weir_component_errors_total{component=\"filter\",kind=\"stage\",error_type=\"trap\"}"))
        .unwrap_or_else(|| panic!("no trap count in:\n{metrics}"));
    assert!(!traps.ends_with(" 0"), "the panic is counted as a trap: {traps}");
    assert!(metrics.contains("# TYPE weir_plugin_call_seconds histogram"), "{metrics}");
    let calls = metrics
        .lines()
        .find(|l| l.starts_with("weir_plugin_call_seconds_count{component=\"filter\"}"))
        .unwrap_or_else(|| panic!("no call count in:\n{metrics}"));
    assert!(!calls.ends_with(" 0"), "{calls}");
    weir.signal("-TERM");
    let (code, log, _) = weir.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
}
