//! Side-by-side throughput: WASM plugins vs the same logic as native Rust.
//!
//! `cargo bench -p weir --bench throughput` prints markdown tables:
//! 1. one plugin call per batch (passthrough), ns per message: in place,
//!    owned and record-world WASM vs native;
//! 2. gen → stage → null pipelines, messages/s, against no stage;
//! 3. partition dispatch at concurrency 1, 2, 4;
//! 4. the at-least-once ack path per message;
//! 5. the robustness checks and the metrics a batch pays, against a
//!    message's whole trip through `gen → passthrough → null`.
//!
//! Values are 100 bytes. Set WEIR_BENCH_MESSAGES to change pipeline runs.
//! Name sections to run only those: `cargo bench -p weir --bench throughput
//! -- call pipeline` (sections: call, pipeline, partition, ack, checks;
//! `profile-packed` / `profile-owned` / `profile-record` run only that call,
//! for a profiler).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use weir::config::PipelineConfig;
use weir::connectors::generator::{GenSpec, message};
use weir::flow::ack::{AckTracker, done_all};
use weir::flow::batch::Batch;
use weir::flow::budget::{InFlightBudget, weigh};
use weir::pipeline::{NativeFn, NativeStages, Pipeline};
use weir::plugin::build::{Abi, build_abi};
use weir::plugin::{Instance, Runtime, StageContext};
use weir::{Message, Outcome, Output};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = root.join("plugins/passthrough");
    let packed_wasm = build_abi(&dir, Abi::Packed).expect("building passthrough");
    let record_wasm = build_abi(&dir, Abi::Record).expect("building passthrough (record world)");
    let owned_wasm = build_abi(&root.join("tests/plugins/owned-passthrough"), Abi::Packed).expect("building owned");
    let runtime = Runtime::new().unwrap();
    let packed = runtime.load_file(&packed_wasm).unwrap();
    let record = runtime.load_file(&record_wasm).unwrap();
    let owned = runtime.load_file(&owned_wasm).unwrap();
    let messages: u64 = std::env::var("WEIR_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let section = |name: &str| named.is_empty() || named.iter().any(|n| n == name);

    let spec = GenSpec { count: None, rate: None, size: 100, keys: 16, batch: 256 };
    if section("call") {
        println!("## Plugin call round trip (passthrough, 100-byte values, key + 1 header)\n");
        println!("- in place: `plugins/passthrough` (packed world, `decide_in_place` keeps every message);");
        println!("- owned: the same through `process(message) -> Outcome::one(message)` (packed world);");
        println!("- record: `plugins/passthrough` built for the record world;");
        println!("- native: the same logic as a Rust closure copying each message.\n");
        println!(
            "| batch | in place ns/msg | owned ns/msg | record ns/msg | native ns/msg | in place / native | owned / native | record / owned |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for batch_size in [1usize, 16, 64, 256, 1024] {
            let batch: Vec<Message> = (0..batch_size as u64).map(|i| message(&spec, i, 0)).collect();
            let call_ns = |plugin: &weir::plugin::Plugin| {
                let mut instance = Instance::new(plugin, Arc::new(StageContext::new("bench", Vec::new()))).unwrap();
                per_message(batch_size, || {
                    black_box(instance.process(&batch).unwrap());
                })
            };
            let (packed_ns, owned_ns, record_ns) = (call_ns(&packed), call_ns(&owned), call_ns(&record));
            let native = native_passthrough();
            let native_ns = per_message(batch_size, || {
                black_box(native(&batch));
            });
            println!(
                "| {batch_size} | {packed_ns:.0} | {owned_ns:.0} | {record_ns:.0} | {native_ns:.0} | {:.2}× | {:.2}× | {:.1}× |",
                packed_ns / native_ns,
                owned_ns / native_ns,
                record_ns / owned_ns
            );
        }
    }

    // For profilers and instruction counters: one call kind at batch 256,
    // 20,000 times.
    for (name, plugin) in [("profile-packed", &packed), ("profile-owned", &owned), ("profile-record", &record)] {
        if named.iter().any(|n| n == name) {
            let batch: Vec<Message> = (0..256).map(|i| message(&spec, i, 0)).collect();
            let mut instance = Instance::new(plugin, Arc::new(StageContext::new("bench", Vec::new()))).unwrap();
            let started = Instant::now();
            for _ in 0..20_000 {
                black_box(instance.process(&batch).unwrap());
            }
            println!("{name}: {:.0} ns/msg", started.elapsed().as_nanos() as f64 / (20_000.0 * 256.0));
            return;
        }
    }

    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let keep: NativeFn = Arc::new(|batch: &[Message]| vec![Outcome::Keep; batch.len()]);
    let natives: NativeStages =
        [("pass".to_string(), native_passthrough()), ("keep".to_string(), keep)].into_iter().collect();
    let scratch = tempfile::tempdir().unwrap();

    if section("pipeline") {
        println!("\n## Pipeline gen → stage → null ({messages} messages, 100-byte values)\n");
        println!(
            "Ratios are against `gen → null` with no stage, measured in the same run. Native copy: a closure \
             copying each message (what the record world does); native keep: a closure answering `Keep` (the hop \
             alone).\n"
        );
        println!(
            "| stage batch | no stage msg/s | in place msg/s | owned msg/s | record msg/s | native copy msg/s | native keep msg/s | in place / none | owned / none | record / none | native copy / none | native keep / none |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for batch_size in [64usize, 256, 1024] {
            let run = |plugin: Option<&str>| {
                let stage = plugin.map_or(String::new(), |plugin| {
                format!(
                    "[[stage]]\nname = \"pass\"\nplugin = \"{plugin}\"\nbatch = {{ max_size = {batch_size}, max_wait_ms = 10 }}\n"
                )
            });
                let text = format!(
                    "[[source]]\nname = \"gen\"\nuri = \"gen://?count={messages}&size=100&keys=16\"\nbatch_size = {batch_size}\n\
                 {stage}[[sink]]\nname = \"null\"\nuri = \"null://\"\nbatch = {{ max_size = {batch_size}, max_wait_ms = 10 }}\n"
                );
                run_pipeline(&tokio, &runtime, &natives, scratch.path(), &text, messages, None)
            };
            let none = run(None);
            let packed_rate = run(Some(&packed_wasm.display().to_string()));
            let owned_rate = run(Some(&owned_wasm.display().to_string()));
            let record_rate = run(Some(&record_wasm.display().to_string()));
            let native_rate = run(Some("native:pass"));
            let keep_rate = run(Some("native:keep"));
            println!(
                "| {batch_size} | {none:.0} | {packed_rate:.0} | {owned_rate:.0} | {record_rate:.0} | {native_rate:.0} | {keep_rate:.0} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                packed_rate / none,
                owned_rate / none,
                record_rate / none,
                native_rate / none,
                keep_rate / none
            );
        }
    }
    let wasm = packed_wasm;

    if section("partition") {
        println!("\n## Partition dispatch (passthrough, batch 256, 2-core machine)\n");
        println!("| concurrency | WASM msg/s | native msg/s |");
        println!("|---:|---:|---:|");
        for concurrency in [1usize, 2, 4] {
            let run = |plugin: &str| {
                let text = format!(
                    r#"
                [[source]]
                name = "gen"
                uri = "gen://?count={messages}&size=100&keys=64"
                [[stage]]
                name = "pass"
                plugin = "{plugin}"
                concurrency = {concurrency}
                dispatch = "partition"
                [[sink]]
                name = "null"
                uri = "null://"
                "#
                );
                run_pipeline(&tokio, &runtime, &natives, scratch.path(), &text, messages, None)
            };
            let wasm_rate = run(&wasm.display().to_string());
            let native_rate = run("native:pass");
            println!("| {concurrency} | {wasm_rate:.0} | {native_rate:.0} |");
        }
    }

    if section("ack") {
        println!("\n## At-least-once ack path (per message, batch 256)\n");
        let batch: Vec<Message> = (0..256).map(|i| message(&spec, i, 0)).collect();
        let halted = Arc::new(AtomicBool::new(false));
        let (tracker, mut released) = AckTracker::<u64>::new(halted);
        let tracked_ns = per_message(256, || {
            let token = tracker.register(0, 1, 256);
            let b = Batch::from_source(batch.clone(), token);
            done_all(&b.tokens);
            while released.try_recv().is_ok() {}
        });
        let untracked_ns = per_message(256, || {
            black_box(batch.clone());
        });
        println!("| with tracking ns/msg | without ns/msg | tracking cost ns/msg |");
        println!("|---:|---:|---:|");
        println!("| {tracked_ns:.1} | {untracked_ns:.1} | {:.1} |", tracked_ns - untracked_ns);
    }

    if section("checks") {
        println!("\n## Robustness checks on the hot path (batch 256, 100-byte values)\n");
        println!(
            "The per-batch work the limits add: weighing a source batch and reserving it in the in-flight budget \
             (returned when its token drops). Output caps and reply validation are inside the plugin call and \
             already in its figures; state, counter and log caps apply only to those host calls.\n"
        );
        let batch: Vec<Message> = (0..256).map(|i| message(&spec, i, 0)).collect();
        let budget = InFlightBudget::new(256 << 20);
        let checks_ns = per_message(256, || {
            let reservation = budget.reserve(weigh(&batch)).now_or_never().expect("the budget has room");
            drop(black_box(reservation));
        });
        let text = format!(
            "[[source]]\nname = \"gen\"\nuri = \"gen://?count={messages}&size=100&keys=16\"\nbatch_size = 256\n\
             [[stage]]\nname = \"pass\"\nplugin = \"{}\"\nbatch = {{ max_size = 256, max_wait_ms = 10 }}\n\
             [[sink]]\nname = \"null\"\nuri = \"null://\"\nbatch = {{ max_size = 256, max_wait_ms = 10 }}\n",
            wasm.display()
        );
        let trip_ns = 1e9 / run_pipeline(&tokio, &runtime, &natives, scratch.path(), &text, messages, None);
        // Metrics (`GET /metrics`): with the recorder installed, a batch
        // pays two histogram samples (plugin call duration, batch size), a
        // clock pair and the busy-time, processed and filtered adds of the
        // stage worker, and a source's two counter adds over its weighed
        // bytes; the rest is read at scrape.
        weir::telemetry::install().expect("installing the recorder");
        let histogram = metrics::histogram!("weir_plugin_call_seconds", "component" => "bench");
        let sizes = metrics::histogram!("weir_component_batch_size", "component" => "bench");
        let counters: [std::sync::atomic::AtomicU64; 5] = Default::default();
        let metrics_ns = per_message(256, || {
            use std::sync::atomic::Ordering::Relaxed;
            let weight: usize = black_box(&batch).iter().map(Message::size).sum();
            counters[0].fetch_add(256, Relaxed);
            counters[1].fetch_add(weight as u64, Relaxed);
            sizes.record(black_box(&batch).len() as f64);
            let started = Instant::now();
            histogram.record(Duration::from_micros(50));
            counters[2].fetch_add(256, Relaxed);
            counters[3].fetch_add(0, Relaxed);
            counters[4].fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        });
        // The whole trip again, with the recorder installed and the
        // pipeline's counters registered for scraping.
        let with_metrics_ns = 1e9
            / run_pipeline(
                &tokio,
                &runtime,
                &natives,
                scratch.path(),
                &text,
                messages,
                Some(weir::telemetry::Telemetry::new()),
            );
        println!("| cost | ns/msg | gen → passthrough → null ns/msg | share of the trip |");
        println!("|---|---:|---:|---:|");
        println!("| limits (in-flight budget) | {checks_ns:.2} | {trip_ns:.1} | {:.2}% |", 100.0 * checks_ns / trip_ns);
        println!(
            "| metrics (recorder installed) | {metrics_ns:.2} | {trip_ns:.1} | {:.2}% |",
            100.0 * metrics_ns / trip_ns
        );
        println!(
            "\nWhole trip side by side: {trip_ns:.1} ns/msg without metrics, {with_metrics_ns:.1} ns/msg with \
             (with / without {:.3}×).",
            with_metrics_ns / trip_ns
        );
    }
}

/// What the passthrough plugin does, natively: one output per input, with
/// the input's key, value, headers and timestamp (copied, as the WASM call
/// copies them out of the instance).
fn native_passthrough() -> NativeFn {
    Arc::new(|batch: &[Message]| {
        batch
            .iter()
            .map(|m| {
                Outcome::Emit(vec![Output {
                    key: m.key.clone(),
                    value: m.value.clone(),
                    headers: m.headers.clone(),
                    timestamp_ms: m.timestamp_ms,
                    route: None,
                }])
            })
            .collect()
    })
}

/// Runs `f` (which handles `batch` messages) for about a second; ns/message.
fn per_message(batch: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..10 {
        f();
    }
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        f();
        calls += 1;
    }
    started.elapsed().as_nanos() as f64 / (calls as f64 * batch as f64)
}

/// Runs `text` to its end; messages per second. With `telemetry`, the
/// pipeline's counters are registered for `/metrics` as `weir run` does.
fn run_pipeline(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    natives: &NativeStages,
    dir: &Path,
    text: &str,
    messages: u64,
    telemetry: Option<Arc<weir::telemetry::Telemetry>>,
) -> f64 {
    let config = PipelineConfig::parse(text, dir).unwrap();
    let mut pipeline = Pipeline::prepare_with(&config, runtime, natives).unwrap();
    if let Some(telemetry) = telemetry {
        pipeline = pipeline.with_telemetry(telemetry);
    }
    let started = Instant::now();
    let report = tokio.block_on(pipeline.run(CancellationToken::new()));
    let elapsed = started.elapsed();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.sinks[0].1, messages, "every message must reach the sink");
    messages as f64 / elapsed.as_secs_f64()
}
