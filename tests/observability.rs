//! `GET /metrics` read with a real Prometheus text parser while a pipeline
//! runs: exact counts for a known input, traps by reason, instances, batch
//! sizes, plugin versions and swaps, through the real binary.

mod support;

use std::time::Duration;

use support::{ADMIN_TOKEN, Admin, Metrics, Scratch, free_port, plugin};

/// The values the collector receives: `drop` is filtered out by the first
/// stage; of the rest, `bad` fails (dead-lettered) and `boom` panics
/// (trapped, isolated, then dead-lettered) in the second.
const KEEP_OK: &str = "{\"k\":\"keep\",\"v\":\"ok\"}";
const DROP: &str = "{\"k\":\"drop\",\"v\":\"ok\"}";
const BAD: &str = "{\"k\":\"keep\",\"v\":\"bad\"}";
const BOOM: &str = "{\"k\":\"keep\",\"v\":\"boom\"}";

/// One request body: 8 ok, 6 dropped, 4 bad, 2 boom (20 messages).
fn body() -> Vec<u8> {
    let values = [[KEEP_OK; 8].as_slice(), &[DROP; 6], &[BAD; 4], &[BOOM; 2]].concat();
    values.iter().map(|v| format!("{}\n", serde_json::json!({ "value": v }))).collect::<String>().into_bytes()
}

#[test]
fn metrics_add_up_for_a_known_input_during_the_run() {
    let scratch = Scratch::new();
    let (ingest, admin) = (free_port(), free_port());
    let text = format!(
        "[[source]]\nname = \"events\"\nuri = \"http://127.0.0.1:{ingest}/ingest\"\n\n\
         [[stage]]\nname = \"keep\"\nplugin = {filter}\nconfig = {{ field = \"k\", equals = \"keep\" }}\n\n\
         [[stage]]\nname = \"faulty\"\nplugin = {faulty}\non_error = \"dead-letter\"\n\
         config = {{ fail_on = \"bad\", panic_on = \"boom\" }}\n\n\
         [[stage]]\nname = \"tag\"\nplugin = {tag}\n\n\
         [[sink]]\nname = \"out\"\nuri = \"null://\"\nbatch = {{ max_size = 100, max_wait_ms = 0 }}\n\n\
         [dead_letter]\nuri = \"null://\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        filter = support::toml_str(plugin("json-filter").to_str().unwrap()),
        faulty = support::toml_str(plugin("faulty").to_str().unwrap()),
        tag = support::toml_str(plugin("tag-v1").to_str().unwrap()),
    );
    let mut weir = scratch.start_with_env(&text, &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    weir.wait_for_log(Duration::from_secs(60), "the collector", |l| l.contains("HTTP collector listening"));

    // Two requests, a scrape after each: the counts are exact, and add up.
    for round in 1..=2u32 {
        let reply = Admin::anonymous(ingest).request_post("/ingest", &body());
        assert_eq!(reply.status, 200, "{reply:?}");
        let m = Metrics::scrape(admin);
        let n = f64::from(round);
        let stage = |name| [("component", name), ("kind", "stage")];
        let received = m.value("weir_component_received_events_total", &[("component", "events")]);
        let filtered = m.value("weir_component_filtered_events_total", &stage("keep"));
        let dead = m.value("weir_component_dead_lettered_events_total", &stage("faulty"));
        let sent = m.value("weir_component_sent_events_total", &[("component", "out"), ("kind", "sink")]);
        assert_eq!((received, filtered, dead, sent), (20.0 * n, 6.0 * n, 6.0 * n, 8.0 * n), "{}", m.text);
        assert_eq!(received, sent + filtered + dead, "in = out + filtered + dead-lettered");
        let dlq = m.value("weir_component_sent_events_total", &[("component", "dead_letter")]);
        assert_eq!(dlq, dead, "the dead letter wrote what the stage sent it");

        // Each boom panics on its own: every trap is counted as a panic.
        let panics = m.value("weir_component_traps_total", &[("component", "faulty"), ("reason", "panic")]);
        assert!(panics >= 2.0 * n, "at least one trap per boom: {panics}\n{}", m.text);
        for reason in ["deadline", "memory", "other"] {
            assert_eq!(m.value("weir_component_traps_total", &[("component", "faulty"), ("reason", reason)]), 0.0);
        }
        let errors = m.value("weir_component_errors_total", &[("component", "faulty"), ("error_type", "trap")]);
        assert_eq!(errors, panics, "traps by reason sum to the trap errors");

        // Every message of every batch is counted once in the batch sizes.
        assert!(m.histogram_count("weir_plugin_call_seconds", &[("component", "keep")]) > 0.0, "{}", m.text);
        let sizes = |name| m.value("weir_component_batch_size_sum", &[("component", name)]);
        assert_eq!((sizes("keep"), sizes("faulty"), sizes("tag")), (20.0 * n, 14.0 * n, 8.0 * n), "{}", m.text);

        // Nothing is left in the stages; one instance each (concurrency 1).
        for name in ["keep", "faulty", "tag"] {
            assert_eq!(m.value("weir_component_in_flight_events", &stage(name)), 0.0, "{name}");
            let utilization = m.value("weir_component_utilization", &stage(name));
            assert!((0.0..=1.0).contains(&utilization), "{name}: {utilization}");
        }
        assert_eq!(m.value("weir_component_instances", &stage("keep")), 1.0, "{}", m.text);
        // Answered, so written: no batch waits in any channel.
        for (name, kind) in [("keep", "stage"), ("faulty", "stage"), ("tag", "stage"), ("out", "sink")] {
            let labels = [("component", name), ("kind", kind)];
            assert_eq!(m.value("weir_component_buffered_batches", &labels), 0.0, "{name}\n{}", m.text);
        }
        assert_eq!(m.value("weir_component_buffered_batches", &[("component", "dead_letter")]), 0.0, "{}", m.text);
    }

    // Plugin versions and swaps: tag-v1 runs; a refused upload and a swap
    // to tag-v2 are counted, and the info gauge follows the version.
    let running = Admin::anonymous(admin).get("/stages").expect("GET /stages");
    let tag = running.as_array().unwrap().iter().find(|s| s["name"] == "tag").expect("stage tag").clone();
    let v1 = tag["version"].as_str().unwrap().to_string();
    let m = Metrics::scrape(admin);
    let info =
        m.scrape.samples.iter().find(|s| s.metric == "weir_plugin_info" && s.labels.get("component") == Some("tag"));
    let v1_label = info.and_then(|s| s.labels.get("version")).unwrap_or_else(|| panic!("no version:\n{}", m.text));
    assert!(v1.starts_with(v1_label), "{v1} vs {v1_label}");
    assert_eq!(m.value("weir_plugin_swaps_total", &[("component", "tag")]), 0.0);

    let (status, reply) = Admin::new(admin).post("/stages/tag/plugin", b"not a component");
    assert_eq!(status, 422, "{reply}");
    let v2 = std::fs::read(plugin("tag-v2")).unwrap();
    let (status, reply) = Admin::new(admin).post("/stages/tag/plugin", &v2);
    assert_eq!(status, 200, "{reply}");
    let m = Metrics::scrape(admin);
    assert_eq!(m.value("weir_plugin_swaps_total", &[("component", "tag")]), 1.0, "{}", m.text);
    assert_eq!(m.value("weir_plugin_swaps_refused_total", &[("component", "tag")]), 1.0, "{}", m.text);
    assert_eq!(m.value("weir_plugin_info", &[("component", "tag"), ("version", v1_label)]), 0.0, "{}", m.text);
    let shown: Vec<_> = m
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "weir_plugin_info" && s.labels.get("component") == Some("tag"))
        .filter(|s| matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0))
        .collect();
    assert_eq!(shown.len(), 1, "one running version: {}", m.text);

    // Every series the Grafana dashboard queries is one weir serves (the
    // broker sources' lag series: in tests/redis.rs, with a Redis source).
    let queried = support::dashboard_series();
    assert!(queried.len() > 10, "{queried:?}");
    for name in queried.iter().filter(|name| !name.starts_with("weir_source_")) {
        assert!(m.serves(name), "{name}");
    }

    weir.signal("-TERM");
    let (code, log, _) = weir.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn traps_are_counted_by_reason() {
    // A message that spins is stopped by the deadline; one that allocates
    // forever by the memory cap. Each lands under its own reason.
    let scratch = Scratch::new();
    let (ingest, admin) = (free_port(), free_port());
    let text = format!(
        "[[source]]\nname = \"events\"\nuri = \"http://127.0.0.1:{ingest}/ingest\"\n\n\
         [[stage]]\nname = \"faulty\"\nplugin = {faulty}\non_error = \"skip\"\n\
         limits = {{ memory_mb = 32, deadline_ms = 200 }}\n\
         config = {{ loop_on = \"spin\", alloc_on = \"hog\" }}\n\n\
         [[sink]]\nname = \"out\"\nuri = \"null://\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        faulty = support::toml_str(plugin("faulty").to_str().unwrap()),
    );
    let mut weir = scratch.start(&text);
    weir.wait_for_log(Duration::from_secs(60), "the collector", |l| l.contains("HTTP collector listening"));
    let body = b"{\"value\":\"ok\"}\n{\"value\":\"spin\"}\n{\"value\":\"hog\"}\n{\"value\":\"ok\"}\n";
    let reply = Admin::anonymous(ingest).request_post("/ingest", body);
    assert_eq!(reply.status, 200, "{reply:?}");
    let m = Metrics::scrape(admin);
    let traps = |reason| m.value("weir_component_traps_total", &[("component", "faulty"), ("reason", reason)]);
    assert!(traps("deadline") >= 1.0, "{}", m.text);
    assert!(traps("memory") >= 1.0, "{}", m.text);
    assert_eq!(traps("panic"), 0.0, "{}", m.text);
    let skipped = m.value("weir_component_skipped_events_total", &[("component", "faulty")]);
    assert_eq!(skipped, 2.0, "{}", m.text);
    weir.signal("-TERM");
    let (code, log, _) = weir.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
}
