//! Side-by-side throughput: WASM plugins vs the same logic as native Rust.
//!
//! `cargo bench -p weir --bench throughput` prints markdown tables:
//! 1. one plugin call per batch (passthrough), ns per message, WASM vs native;
//! 2. gen → passthrough → null pipelines, messages/s, WASM vs native stage;
//! 3. partition dispatch at concurrency 1, 2, 4;
//! 4. the at-least-once ack path per message.
//! Values are 100 bytes. Set WEIR_BENCH_MESSAGES to change pipeline runs.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use weir::config::PipelineConfig;
use weir::connectors::generator::{GenSpec, message};
use weir::pipeline::ack::{AckTracker, done_all};
use weir::pipeline::batch::Batch;
use weir::pipeline::{NativeFn, NativeStages, Pipeline};
use weir::plugin::{Instance, Runtime, StageContext};
use weir::{Message, Outcome, Output};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let wasm = weir::plugin::build::build(&root.join("plugins/passthrough")).expect("building passthrough");
    let runtime = Runtime::new().unwrap();
    let plugin = runtime.load_file(&wasm).unwrap();
    let messages: u64 = std::env::var("WEIR_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);

    println!("## Plugin call round trip (passthrough, 100-byte values, key + 1 header)\n");
    println!("| batch | WASM ns/msg | native ns/msg | WASM / native |");
    println!("|---:|---:|---:|---:|");
    let spec = GenSpec { count: None, rate: None, size: 100, keys: 16, batch: 256 };
    for batch_size in [1usize, 16, 64, 256, 1024] {
        let batch: Vec<Message> = (0..batch_size as u64).map(|i| message(&spec, i, 0)).collect();
        let mut instance = Instance::new(&plugin, Arc::new(StageContext::new("bench", Vec::new()))).unwrap();
        let wasm_ns = per_message(batch_size, || {
            black_box(instance.process(&batch).unwrap());
        });
        let native = native_passthrough();
        let native_ns = per_message(batch_size, || {
            black_box(native(&batch));
        });
        println!("| {batch_size} | {wasm_ns:.0} | {native_ns:.0} | {:.2}× |", wasm_ns / native_ns);
    }
    // Every list crossing the boundary costs a guest allocation going in and
    // a host allocation coming out: the same call with only a value shows it.
    let batch: Vec<Message> = (0..256).map(|i| Message::from_value(message(&spec, i, 0).value)).collect();
    let mut instance = Instance::new(&plugin, Arc::new(StageContext::new("bench", Vec::new()))).unwrap();
    let wasm_ns = per_message(256, || {
        black_box(instance.process(&batch).unwrap());
    });
    let native = native_passthrough();
    let native_ns = per_message(256, || {
        black_box(native(&batch));
    });
    println!("| 256, value only | {wasm_ns:.0} | {native_ns:.0} | {:.2}× |", wasm_ns / native_ns);

    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let natives: NativeStages = [("pass".to_string(), native_passthrough())].into_iter().collect();
    let scratch = tempfile::tempdir().unwrap();

    println!("\n## Pipeline gen → passthrough → null ({messages} messages, 100-byte values)\n");
    println!("| stage batch | WASM msg/s | native msg/s | WASM / native |");
    println!("|---:|---:|---:|---:|");
    for batch_size in [64usize, 256, 1024] {
        let run = |plugin: &str| {
            let text = format!(
                r#"
                [[source]]
                name = "gen"
                uri = "gen://?count={messages}&size=100&keys=16"
                batch_size = {batch_size}
                [[stage]]
                name = "pass"
                plugin = "{plugin}"
                batch = {{ max_size = {batch_size}, max_wait_ms = 10 }}
                [[sink]]
                name = "null"
                uri = "null://"
                batch = {{ max_size = {batch_size}, max_wait_ms = 10 }}
                "#
            );
            run_pipeline(&tokio, &runtime, &natives, scratch.path(), &text, messages)
        };
        let wasm_rate = run(&wasm.display().to_string());
        let native_rate = run("native:pass");
        println!("| {batch_size} | {:.0} | {:.0} | {:.2}× |", wasm_rate, native_rate, wasm_rate / native_rate);
    }

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
            run_pipeline(&tokio, &runtime, &natives, scratch.path(), &text, messages)
        };
        let wasm_rate = run(&wasm.display().to_string());
        let native_rate = run("native:pass");
        println!("| {concurrency} | {wasm_rate:.0} | {native_rate:.0} |");
    }

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

fn run_pipeline(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    natives: &NativeStages,
    dir: &Path,
    text: &str,
    messages: u64,
) -> f64 {
    let config = PipelineConfig::parse(text, dir).unwrap();
    let pipeline = Pipeline::prepare_with(&config, runtime, natives).unwrap();
    let started = Instant::now();
    let report = tokio.block_on(pipeline.run(CancellationToken::new()));
    let elapsed = started.elapsed();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.sinks[0].1, messages, "every message must reach the sink");
    messages as f64 / elapsed.as_secs_f64()
}
