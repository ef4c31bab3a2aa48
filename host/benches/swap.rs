//! Hot swap cost, measured (not a timed test).
//!
//! `cargo bench -p weir --bench swap` prints:
//! 1. latency from a new `.wasm` landing on disk (atomic rename into a
//!    `watch = true` stage's plugin path) to the first message processed by
//!    it, with a cold compile cache (first sight of the version) and a warm
//!    one (swapping back to a version seen before);
//! 2. throughput of gen → tag → sink with a swap every 50 ms vs no swaps.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use weir::config::PipelineConfig;
use weir::connectors::memory;
use weir::pipeline::Pipeline;
use weir::plugin::{Runtime, watch};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let build = |name: &str| weir::plugin::build::build(&root.join("tests/plugins").join(name)).expect("building");
    let (v1, v2) = (std::fs::read(build("tag-v1")).unwrap(), std::fs::read(build("tag-v2")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    // A private compile cache, so that "cold" really compiles.
    unsafe { std::env::set_var("WEIR_CACHE_DIR", dir.path().join("cache")) };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    println!(
        "## Swap latency: new .wasm on disk → first message processed by it (Rust tag plugin, gen at full speed)\n"
    );
    println!("| swap | cache | latency |");
    println!("|---:|---|---:|");
    let plugin_path = dir.path().join("tag.wasm");
    std::fs::write(&plugin_path, &v1).unwrap();
    let text = format!(
        r#"
        [[source]]
        name = "gen"
        uri = "gen://?keys=8"
        [[stage]]
        name = "tag"
        plugin = "{}"
        batch = {{ max_size = 256, max_wait_ms = 5 }}
        [[sink]]
        name = "out"
        uri = "memory://swap-latency"
        batch = {{ max_size = 256, max_wait_ms = 5 }}
        "#,
        plugin_path.display()
    );
    let runtime = Runtime::new().unwrap();
    let config = PipelineConfig::parse(&text, dir.path()).unwrap();
    let pipeline = Pipeline::prepare(&config, &runtime).unwrap();
    let hot = pipeline.hot_plugins().remove(0);
    let shutdown = CancellationToken::new();
    let output = memory::output("swap-latency");
    tokio.block_on(async {
        let _guard = watch::watch(hot.clone(), |_, _| {}).unwrap();
        let running = tokio::spawn(pipeline.run(shutdown.clone()));
        let mut latencies = Vec::new();
        for i in 0..21 {
            let (bytes, tag) = if i % 2 == 0 { (&v2, "2") } else { (&v1, "1") };
            let seen = output.write_count();
            let tmp = dir.path().join("tag.wasm.tmp");
            std::fs::write(&tmp, bytes).unwrap();
            let landed = Instant::now();
            std::fs::rename(&tmp, &plugin_path).unwrap();
            let latency = first_with(&output, seen, tag, landed).await;
            // Swap 1 is the first sight of v2 (compiled); swap 2 returns to v1,
            // loaded at start; from then on both are warm.
            let cache = if i == 0 { "cold (compile)" } else { "warm, first swap back" };
            if i < 2 {
                println!("| {} | {cache} | {:.1} ms |", i + 1, latency.as_secs_f64() * 1e3);
            } else {
                latencies.push(latency);
            }
        }
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| 3–21 | warm | median {:.1} ms, max {:.1} ms |",
            ms(latencies[latencies.len() / 2]),
            ms(*latencies.last().unwrap())
        );
        shutdown.cancel();
        let report = running.await.unwrap();
        assert!(report.success());
    });

    println!("\n## Throughput while swapping (gen → tag → null, 2,000,000 messages)\n");
    println!("| swaps | msg/s | swaps done |");
    println!("|---|---:|---:|");
    for swapping in [false, true] {
        let text = format!(
            r#"
            [[source]]
            name = "gen"
            uri = "gen://?count=2000000&size=100&keys=8"
            [[stage]]
            name = "tag"
            plugin = "{}"
            [[sink]]
            name = "out"
            uri = "null://"
            "#,
            plugin_path.display()
        );
        let config = PipelineConfig::parse(&text, dir.path()).unwrap();
        let pipeline = Pipeline::prepare(&config, &runtime).unwrap();
        let hot = pipeline.hot_plugins().remove(0);
        let started = Instant::now();
        let (report, swaps) = tokio.block_on(async {
            let done = CancellationToken::new();
            let swapper = tokio::task::spawn_blocking({
                let (hot, done, v1, v2) = (hot.clone(), done.clone(), v1.clone(), v2.clone());
                move || {
                    let mut swaps = 0;
                    while swapping && !done.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(50));
                        hot.swap_bytes(if swaps % 2 == 0 { &v2 } else { &v1 }).unwrap();
                        swaps += 1;
                    }
                    swaps
                }
            });
            let report = pipeline.run(CancellationToken::new()).await;
            done.cancel();
            (report, swapper.await.unwrap())
        });
        assert!(report.success());
        assert_eq!(report.sinks[0].1, 2_000_000);
        let rate = 2_000_000.0 / started.elapsed().as_secs_f64();
        println!("| {} | {rate:.0} | {swaps} |", if swapping { "every 50 ms" } else { "none" });
    }
    drop(Arc::new(()));
}

/// Waits for the first message tagged `tag` written after write `seen`.
async fn first_with(output: &memory::MemoryOutput, mut seen: usize, tag: &str, since: Instant) -> Duration {
    loop {
        let writes = output.writes_since(seen);
        seen += writes.len();
        if writes.iter().flatten().any(|m| m.header("v") == Some(tag.as_bytes())) {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(60), "version {tag} never ran");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}
