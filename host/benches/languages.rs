//! Per-language throughput, side by side: the same `enrich` processor written
//! in Rust, Python and JavaScript (`examples/*-enrich`), through the same
//! pipeline (gen → enrich → null) and as a bare plugin call.
//!
//! `cargo bench -p weir --bench languages` prints markdown tables. Needs the
//! plugin toolchains (`.ci/run` installs them). Values are ~100-byte JSON
//! objects from `gen://`; the processor parses each one, enriches it and
//! writes it back as JSON. Set WEIR_BENCH_MESSAGES to change pipeline runs.
//! A second table times an identity processor per language, packed world vs
//! record world.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use weir::Message;
use weir::config::PipelineConfig;
use weir::connectors::generator::{GenSpec, message};
use weir::pipeline::Pipeline;
use weir::plugin::build::Abi;
use weir::plugin::{Instance, Runtime, StageContext};

const LANGUAGES: [(&str, &str); 3] =
    [("Rust", "rust-enrich"), ("Python", "python-enrich"), ("JavaScript", "js-enrich")];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let messages: u64 = std::env::var("WEIR_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let runtime = Runtime::new().unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // gen:// values carry `key` (the user) and `status`, not `user`.
    let config = vec![("region".to_string(), "eu-west".to_string()), ("user_field".to_string(), "key".to_string())];
    let spec = GenSpec { count: None, rate: None, size: 100, keys: 16, batch: 256 };
    let batch: Vec<Message> = (0..256).map(|i| message(&spec, i, 0)).collect();

    let mut rows = Vec::new();
    for (lang, name) in LANGUAGES {
        let built = Instant::now();
        let wasm = weir::plugin::build::build(&root.join("examples").join(name)).expect("building the example");
        let build_time = built.elapsed();
        let size_mb = std::fs::metadata(&wasm).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
        let loaded = Instant::now();
        let plugin = runtime.load_file(&wasm).unwrap();
        let load_time = loaded.elapsed();
        let started = Instant::now();
        let mut instance = Instance::new(&plugin, Arc::new(StageContext::new("bench", config.clone()))).unwrap();
        let instantiate = started.elapsed();
        let outcomes = instance.process(&batch).unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, weir::Outcome::Emit(v) if v.len() == 1)), "{lang}: {outcomes:?}");
        let call_ns = per_message(256, || {
            black_box(instance.process(&batch).unwrap());
        });

        let text = format!(
            r#"
            [[source]]
            name = "gen"
            uri = "gen://?count={messages}&size=100&keys=16"
            [[stage]]
            name = "enrich"
            plugin = {plugin}
            batch = {{ max_size = 256, max_wait_ms = 10 }}
            config = {{ region = "eu-west", user_field = "key" }}
            [[sink]]
            name = "null"
            uri = "null://"
            "#,
            plugin = serde_json::to_string(&wasm.to_string_lossy()).unwrap(),
        );
        let rate = run_pipeline(&tokio, &runtime, scratch.path(), &text, messages);
        rows.push((lang, size_mb, build_time, load_time, instantiate, call_ns, rate));
    }

    let rust_rate = rows[0].6;
    println!("## Languages: the `enrich` example, gen → enrich → null ({messages} messages, ~100-byte JSON values)\n");
    println!(
        "| language | pipeline msg/s | vs Rust | plugin call µs/msg (batch 256) | component MB | instantiate + init ms | build s (0 = cached) | first load s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (lang, size_mb, build_time, load_time, instantiate, call_ns, rate) in rows {
        println!(
            "| {lang} | {rate:.0} | {:.2}× | {:.2} | {size_mb:.1} | {:.1} | {:.1} | {:.1} |",
            rate / rust_rate,
            call_ns / 1000.0,
            instantiate.as_secs_f64() * 1000.0,
            build_time.as_secs_f64(),
            load_time.as_secs_f64(),
        );
    }

    // The cost floor per language: an identity processor (`return message`),
    // built for the packed world (what the SDKs build) and the record world,
    // timed call by call on a batch of 256.
    println!("\n## Identity processor, one call per batch of 256 (µs per message)\n");
    println!("| language | packed µs/msg | record µs/msg | record / packed |");
    println!("|---|---:|---:|---:|");
    let identity: [(&str, &str); 3] = [
        ("Rust", "tests/plugins/owned-passthrough"),
        ("Python", "tests/plugins/identity-python"),
        ("JavaScript", "tests/plugins/identity-js"),
    ];
    for (lang, dir) in identity {
        let per_abi = |abi| {
            let wasm = weir::plugin::build::build_abi(&root.join(dir), abi).expect("building the identity plugin");
            let plugin = runtime.load_file(&wasm).unwrap();
            let mut instance = Instance::new(&plugin, Arc::new(StageContext::new("bench", Vec::new()))).unwrap();
            per_message(256, || {
                black_box(instance.process(&batch).unwrap());
            }) / 1000.0
        };
        let (packed, record) = (per_abi(Abi::Packed), per_abi(Abi::Record));
        println!("| {lang} | {packed:.2} | {record:.2} | {:.1}× |", record / packed);
    }
}

/// Runs `f` (which handles `batch` messages) for about a second; ns/message.
fn per_message(batch: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
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

fn run_pipeline(tokio: &tokio::runtime::Runtime, runtime: &Runtime, dir: &Path, text: &str, messages: u64) -> f64 {
    let config = PipelineConfig::parse(text, dir).unwrap();
    let pipeline = Pipeline::prepare(&config, runtime).unwrap();
    let started = Instant::now();
    let report = tokio.block_on(pipeline.run(CancellationToken::new()));
    let elapsed = started.elapsed();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.sinks[0].1, messages, "every message must reach the sink");
    messages as f64 / elapsed.as_secs_f64()
}
