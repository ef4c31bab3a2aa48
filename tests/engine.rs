//! Pipeline engine semantics, in process: dispatch, ordering, batching,
//! routing, error policies, poison isolation, backpressure, shutdown.
//! Every test counts messages: nothing lost, nothing duplicated, and the
//! acknowledged watermark is what the semantics promise.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use support::{Scratch, plugin, wait_until};
use tokio_util::sync::CancellationToken;
use weir::Message;
use weir::config::PipelineConfig;
use weir::connectors::memory;
use weir::pipeline::{Pipeline, RunReport};
use weir::plugin::Runtime;

fn header(message: &Message, name: &str) -> String {
    String::from_utf8_lossy(message.header(name).unwrap_or_else(|| panic!("header {name} missing"))).to_string()
}

fn seq(message: &Message) -> u64 {
    header(message, "seq").parse().expect("numeric seq")
}

/// `n` messages with header `seq` = 0..n, key `k{seq % keys}`, value from `value`.
fn messages(n: u64, keys: u64, value: impl Fn(u64) -> String) -> Vec<Message> {
    (0..n)
        .map(|i| Message::from_value(value(i)).with_key(format!("k{}", i % keys)).with_header("seq", i.to_string()))
        .collect()
}

fn prepare(scratch: &Scratch, text: &str) -> Pipeline {
    let config = PipelineConfig::parse(text, scratch.dir.path()).unwrap_or_else(|e| panic!("config: {e}"));
    let runtime = Runtime::new().expect("runtime");
    Pipeline::prepare(&config, &runtime).unwrap_or_else(|e| panic!("prepare: {e}"))
}

/// Runs a pipeline over a closed memory input to its end.
async fn run(scratch: &Scratch, text: &str) -> RunReport {
    let pipeline = prepare(scratch, text);
    tokio::time::timeout(Duration::from_secs(120), pipeline.run(CancellationToken::new())).await.expect("run finished")
}

fn feed(name: &str, messages: Vec<Message>) -> std::sync::Arc<memory::MemoryInput> {
    let input = memory::input(name);
    input.push(messages);
    input.close();
    input
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_dispatch_keeps_per_key_order_on_disjoint_instances() {
    let scratch = Scratch::new();
    let input = feed("part-in", messages(10_000, 50, |i| format!("v{i}")));
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://part-in"
            [[stage]]
            name = "probe"
            plugin = "{}"
            concurrency = 4
            dispatch = "partition"
            partition_by = "key"
            batch = {{ max_size = 64, max_wait_ms = 5 }}
            [[sink]]
            name = "out"
            uri = "memory://part-out"
            "#,
            plugin("probe").display()
        ),
    )
    .await;
    assert!(report.success(), "{report:?}");
    let out = memory::output("part-out").messages();
    assert_eq!(out.len(), 10_000, "lost or duplicated messages");
    let mut last_seq: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut instance_of_key: HashMap<Vec<u8>, String> = HashMap::new();
    let mut keys_of_instance: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for m in &out {
        let key = m.key.clone().expect("key kept");
        let s = seq(m);
        if let Some(prev) = last_seq.insert(key.clone(), s) {
            assert!(s > prev, "key {:?}: seq {s} after {prev}", String::from_utf8_lossy(&key));
        }
        let instance = header(m, "instance");
        let owner = instance_of_key.entry(key.clone()).or_insert_with(|| instance.clone());
        assert_eq!(*owner, instance, "a key was processed by two instances");
        keys_of_instance.entry(instance).or_default().insert(key);
    }
    assert_eq!(last_seq.len(), 50);
    assert!(keys_of_instance.len() >= 3, "50 keys should spread over the 4 instances: {keys_of_instance:?}");
    let total: usize = keys_of_instance.values().map(BTreeSet::len).sum();
    assert_eq!(total, 50, "per-instance key sets must be disjoint");
    assert_eq!(input.acked(), 10_000, "everything written must be acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_round_robin_keeps_input_order_with_uneven_work() {
    let scratch = Scratch::new();
    let input = feed("ordered-in", messages(2_000, 7, |i| format!("value-{}", i * 7919 % 1000)));
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://ordered-in"
            [[stage]]
            name = "probe"
            plugin = "{}"
            concurrency = 4
            ordered = true
            batch = {{ max_size = 10, max_wait_ms = 5 }}
            config = {{ delay_us_max = 300 }}
            [[sink]]
            name = "out"
            uri = "memory://ordered-out"
            "#,
            plugin("probe").display()
        ),
    )
    .await;
    assert!(report.success(), "{report:?}");
    let out = memory::output("ordered-out").messages();
    let seqs: Vec<u64> = out.iter().map(seq).collect();
    assert_eq!(seqs, (0..2_000).collect::<Vec<_>>(), "output order must equal input order");
    let instances: BTreeSet<String> = out.iter().map(|m| header(m, "instance")).collect();
    assert!(instances.len() > 1, "work should have spread over several instances");
    assert_eq!(input.acked(), 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_gives_every_message_to_every_instance() {
    let scratch = Scratch::new();
    let input = feed("bcast-in", messages(500, 5, |i| format!("v{i}")));
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://bcast-in"
            [[stage]]
            name = "probe"
            plugin = "{}"
            concurrency = 3
            dispatch = "broadcast"
            [[sink]]
            name = "out"
            uri = "memory://bcast-out"
            "#,
            plugin("probe").display()
        ),
    )
    .await;
    assert!(report.success(), "{report:?}");
    let out = memory::output("bcast-out").messages();
    assert_eq!(out.len(), 1_500);
    let mut seen: HashMap<u64, BTreeSet<String>> = HashMap::new();
    for m in &out {
        assert!(seen.entry(seq(m)).or_default().insert(header(m, "instance")), "an instance saw a message twice");
    }
    assert_eq!(seen.len(), 500);
    assert!(seen.values().all(|instances| instances.len() == 3), "each message must reach all 3 instances");
    assert_eq!(input.acked(), 500, "acknowledged once all three copies are written");
}

/// A faulty stage whose bad messages are isolated and dead-lettered.
async fn isolate_poison(name: &str, config: &str, limits: &str, marker: &str, every: u64, total: u64, reason: &str) {
    let scratch = Scratch::new();
    let input = feed(
        &format!("{name}-in"),
        messages(total, 10, |i| if i % every == every / 2 { format!("{marker} #{i}") } else { format!("fine #{i}") }),
    );
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://{name}-in"
            [[stage]]
            name = "faulty"
            plugin = "{plugin}"
            on_error = "dead-letter"
            batch = {{ max_size = 256, max_wait_ms = 20 }}
            limits = {limits}
            config = {config}
            [[sink]]
            name = "out"
            uri = "memory://{name}-out"
            [dead_letter]
            uri = "memory://{name}-dlq"
            "#,
            plugin = plugin("faulty").display()
        ),
    )
    .await;
    assert!(report.success(), "{report:?}");
    let bad: BTreeSet<u64> = (0..total).filter(|i| i % every == every / 2).collect();
    let out = memory::output(&format!("{name}-out")).messages();
    let out_seqs: Vec<u64> = out.iter().map(seq).collect();
    let unique: BTreeSet<u64> = out_seqs.iter().copied().collect();
    assert_eq!(out_seqs.len(), unique.len(), "a good message was delivered twice");
    let expected_good: BTreeSet<u64> = (0..total).filter(|i| !bad.contains(i)).collect();
    assert_eq!(unique, expected_good, "every good message must reach the sink exactly once");
    let dlq = memory::output(&format!("{name}-dlq")).messages();
    let dlq_seqs: BTreeSet<u64> = dlq.iter().map(seq).collect();
    assert_eq!(dlq.len(), bad.len(), "each bad message dead-lettered exactly once");
    assert_eq!(dlq_seqs, bad);
    for m in &dlq {
        let error = header(m, "weir-error");
        assert!(error.contains(reason), "weir-error {error:?} should mention {reason:?}");
        assert_eq!(header(m, "weir-stage"), "faulty");
        assert!(String::from_utf8_lossy(&m.value).starts_with(marker), "the original value is kept");
    }
    assert!(report.stages[0].1.traps as usize >= bad.len(), "each bad message trapped at least once");
    assert_eq!(input.acked(), total, "the acknowledged watermark covers everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_messages_are_isolated_by_bisection() {
    isolate_poison("panic", r#"{ panic_on = "poison" }"#, "{}", "poison", 97, 3_000, "poison message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loops_are_cut_by_the_deadline_and_isolated() {
    isolate_poison("spin", r#"{ loop_on = "spin" }"#, "{ deadline_ms = 100 }", "spin", 500, 1_000, "deadline exceeded")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocations_hit_the_memory_cap_and_are_isolated() {
    isolate_poison("hog", r#"{ alloc_on = "hog" }"#, "{ memory_mb = 24 }", "hog", 400, 1_200, "memory cap exceeded")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_acknowledges_nothing_past_the_failure() {
    let scratch = Scratch::new();
    let input = feed("halt-in", messages(1_000, 3, |i| if i == 500 { "bad".into() } else { format!("ok {i}") }));
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://halt-in"
            batch_size = 10
            [[stage]]
            name = "faulty"
            plugin = "{}"
            on_error = "halt"
            batch = {{ max_size = 10, max_wait_ms = 5 }}
            config = {{ fail_on = "bad" }}
            [[sink]]
            name = "out"
            uri = "memory://halt-out"
            "#,
            plugin("faulty").display()
        ),
    )
    .await;
    let reason = report.halted.expect("the run must halt");
    assert!(reason.contains("asked to fail"), "{reason}");
    assert!(input.acked() <= 500, "acknowledged up to {} although message 500 failed", input.acked());
    let batches = input.acked_batches();
    assert!(batches.iter().all(|&(_, end)| end <= 500), "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_and_retry_policies() {
    let scratch = Scratch::new();
    let skip_in =
        feed("skip-in", messages(300, 3, |i| if i % 10 == 0 { format!("bad {i}") } else { format!("ok {i}") }));
    let retry_in =
        feed("retry-in", messages(300, 3, |i| if i % 10 == 0 { format!("bad {i}") } else { format!("ok {i}") }));
    let faulty = plugin("faulty");
    let skip = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://skip-in"
            [[stage]]
            name = "faulty"
            plugin = "{}"
            on_error = "skip"
            config = {{ fail_on = "bad" }}
            [[sink]]
            name = "out"
            uri = "memory://skip-out"
            "#,
            faulty.display()
        ),
    )
    .await;
    assert!(skip.success(), "{skip:?}");
    assert_eq!(skip.stages[0].1.skipped, 30);
    assert_eq!(memory::output("skip-out").len(), 270);
    assert_eq!(skip_in.acked(), 300, "skipped messages are acknowledged");

    let retry = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://retry-in"
            [[stage]]
            name = "faulty"
            plugin = "{}"
            on_error = "retry"
            retries = 2
            retry_backoff_ms = 1
            config = {{ fail_on = "bad" }}
            [[sink]]
            name = "out"
            uri = "memory://retry-out"
            [dead_letter]
            uri = "memory://retry-dlq"
            "#,
            faulty.display()
        ),
    )
    .await;
    assert!(retry.success(), "{retry:?}");
    assert_eq!(retry.stages[0].1.retries, 60, "30 failing messages, 2 retries each");
    assert_eq!(memory::output("retry-dlq").len(), 30, "exhausted retries go to the dead letter");
    assert_eq!(memory::output("retry-out").len(), 270);
    assert_eq!(retry_in.acked(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_to_named_sinks_and_unknown_routes() {
    let scratch = Scratch::new();
    let statuses = ["ok", "warn", "error", "lost"];
    let input = feed("route-in", messages(400, 4, |i| format!(r#"{{"status":"{}"}}"#, statuses[(i % 4) as usize])));
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://route-in"
            [[stage]]
            name = "router"
            plugin = "{}"
            on_error = "dead-letter"
            config = {{ field = "status", routes = "error,warn,lost", default_route = "ok" }}
            [[sink]]
            name = "default"
            uri = "memory://route-default"
            [[sink]]
            name = "errors"
            uri = "memory://route-errors"
            route = "error"
            [[sink]]
            name = "problems"
            uri = "memory://route-problems"
            route = ["error", "warn"]
            [[sink]]
            name = "ok"
            uri = "memory://route-ok"
            route = "ok"
            [dead_letter]
            uri = "memory://route-dlq"
            "#,
            plugin("route-by-field").display()
        ),
    )
    .await;
    assert!(report.success(), "{report:?}");
    let seqs = |name: &str| memory::output(name).messages().iter().map(seq).collect::<BTreeSet<u64>>();
    let with = |r: u64| (0..400).filter(|i| i % 4 == r).collect::<BTreeSet<u64>>();
    assert_eq!(seqs("route-ok"), with(0));
    assert_eq!(seqs("route-errors"), with(2));
    assert_eq!(seqs("route-problems"), with(1).union(&with(2)).copied().collect(), "a sink may take several routes");
    assert!(memory::output("route-default").is_empty(), "every output had a route");
    let dlq = memory::output("route-dlq").messages();
    assert_eq!(dlq.iter().map(seq).collect::<BTreeSet<u64>>(), with(3), "a route no sink has is a failure");
    assert!(header(&dlq[0], "weir-error").contains("`lost`"), "{}", header(&dlq[0], "weir-error"));
    assert_eq!(input.acked(), 400, "fan-out to two sinks is acknowledged once both wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_batches_group_by_key_and_default_sinks_fan_out() {
    let scratch = Scratch::new();
    let input = feed("group-in", messages(1_000, 7, |i| format!("v{i}")));
    let report = run(
        &scratch,
        r#"
        [[source]]
        name = "in"
        uri = "memory://group-in"
        [[sink]]
        name = "grouped"
        uri = "memory://group-out"
        batch = { max_size = 50, max_wait_ms = 20, group_by = "key" }
        [[sink]]
        name = "copy"
        uri = "memory://group-copy"
        "#,
    )
    .await;
    assert!(report.success(), "{report:?}");
    let writes = memory::output("group-out").writes();
    assert!(writes.iter().all(|w| w.len() <= 50 && w.iter().all(|m| m.key == w[0].key)), "one write, one group");
    assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), 1_000);
    assert_eq!(memory::output("group-copy").len(), 1_000, "every default sink gets every message");
    assert_eq!(input.acked(), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_map_and_aggregation_are_acknowledged_once_all_outputs_are_written() {
    let scratch = Scratch::new();
    let input = feed("flat-in", messages(200, 4, |i| format!("a{i}\nb{i}\nc{i}")));
    let report = run(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://flat-in"
            [[stage]]
            name = "split"
            plugin = "{}"
            [[stage]]
            name = "count"
            plugin = "{}"
            batch = {{ max_size = 1000, max_wait_ms = 10, group_by = "key" }}
            [[sink]]
            name = "out"
            uri = "memory://flat-out"
            "#,
            plugin("split-lines").display(),
            plugin("count-by-key").display()
        ),
    )
    .await;
    assert!(report.success(), "{report:?}");
    assert_eq!(report.stages[0].1.processed, 200);
    assert_eq!(report.stages[1].1.processed, 600, "three lines per message reach the aggregator");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for m in memory::output("flat-out").messages() {
        let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        last.insert(v["key"].as_str().unwrap().to_string(), v["count"].as_u64().unwrap());
    }
    assert_eq!(last, (0..4).map(|k| (format!("k{k}"), 150)).collect(), "600 lines over 4 keys");
    assert_eq!(input.acked(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_holds_the_source_back_and_shutdown_drains() {
    let scratch = Scratch::new();
    let input = memory::input("slow-in");
    input.push(messages(200_000, 16, |i| format!("{i:0>100}")));
    let pipeline = prepare(
        &scratch,
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "memory://slow-in"
            [[stage]]
            name = "pass"
            plugin = "{}"
            concurrency = 2
            [[sink]]
            name = "out"
            uri = "memory://slow-out?delay_ms=20"
            batch = {{ max_size = 100, max_wait_ms = 5 }}
            "#,
            plugin("passthrough").display()
        ),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));
    let output = memory::output("slow-out");
    let probe = tokio::task::spawn_blocking(move || wait_until(Duration::from_secs(30), || output.len() >= 3_000));
    assert!(probe.await.unwrap(), "the sink should be writing");
    let written = memory::output("slow-out").len() as u64;
    let in_flight = input.read() - written;
    // Bounded channels: a handful of batches per hop, never the 200k waiting.
    assert!(in_flight < 20_000, "source ran {in_flight} messages ahead of a slow sink");
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), running).await.expect("drained").unwrap();
    assert!(report.success(), "{report:?}");
    let read = input.read();
    assert!(read < 200_000, "the source stopped reading on shutdown");
    assert_eq!(memory::output("slow-out").len() as u64, read, "every message read was finished");
    assert_eq!(input.acked(), read, "and acknowledged before the run returned");
}
