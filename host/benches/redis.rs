//! Side-by-side throughput on the machine's Redis (127.0.0.1:6379, or
//! WEIR_BENCH_REDIS=host:port): Redis stream → passthrough WASM plugin →
//! Redis stream with weir, vs a bare redis-rs loop doing the same work with
//! the same batch size (XREADGROUP COUNT n, then one pipelined round trip of
//! n XADD + XACK). 100-byte values with a key; the input stream is filled
//! before each timed run. The time runs until every message is in the output
//! stream and acknowledged (nothing pending).
//!
//! `cargo bench -p weir --bench redis` prints a markdown table.
//! WEIR_BENCH_MESSAGES sets the messages per run (default 200,000).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;
use weir::config::PipelineConfig;
use weir::pipeline::Pipeline;
use weir::plugin::Runtime;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let wasm = weir::plugin::build::build(&root.join("plugins/passthrough")).expect("building passthrough");
    let addr = std::env::var("WEIR_BENCH_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let messages: u64 = std::env::var("WEIR_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    println!("## Redis → passthrough → Redis ({messages} messages, 100-byte values, Redis at {addr})\n");
    println!("| batch | weir msg/s | bare redis-rs loop msg/s | weir / bare |");
    println!("|---:|---:|---:|---:|");
    for batch in [256usize, 1024] {
        let tag = format!("weir-bench-{}-{batch}", std::process::id());
        let (input, output, group) = (format!("{tag}-in"), format!("{tag}-out"), format!("{tag}-g"));
        let weir_rate = tokio.block_on(async {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            fill(&mut conn, &input, messages).await;
            let text = format!(
                r#"
                [[source]]
                name = "in"
                uri = "redis://{addr}/{input}?group={group}&consumer=bench"
                batch_size = {batch}
                [[stage]]
                name = "pass"
                plugin = "{}"
                batch = {{ max_size = {batch}, max_wait_ms = 2 }}
                [[sink]]
                name = "out"
                uri = "redis://{addr}/{output}"
                batch = {{ max_size = {batch}, max_wait_ms = 2 }}
                "#,
                wasm.display()
            );
            let config = PipelineConfig::parse(&text, scratch.path()).unwrap();
            let runtime = Runtime::new().unwrap();
            let pipeline = Pipeline::prepare(&config, &runtime).unwrap();
            let shutdown = CancellationToken::new();
            let started = Instant::now();
            let run = tokio::spawn(pipeline.run(shutdown.clone()));
            wait_done(&mut conn, &input, &output, &group, messages).await;
            let elapsed = started.elapsed();
            shutdown.cancel();
            let report = run.await.unwrap();
            assert!(report.success(), "{report:?}");
            cleanup(&mut conn, &[&input, &output]).await;
            messages as f64 / elapsed.as_secs_f64()
        });
        let bare_rate = tokio.block_on(async {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            fill(&mut conn, &input, messages).await;
            let () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&input)
                .arg(&group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await
                .unwrap();
            let started = Instant::now();
            let moved = bare_loop(&mut conn, &input, &output, &group, batch).await;
            let elapsed = started.elapsed();
            assert_eq!(moved, messages);
            wait_done(&mut conn, &input, &output, &group, messages).await;
            cleanup(&mut conn, &[&input, &output]).await;
            messages as f64 / elapsed.as_secs_f64()
        });
        println!("| {batch} | {weir_rate:.0} | {bare_rate:.0} | {:.2}× |", weir_rate / bare_rate);
    }
}

/// Appends `n` entries (100-byte value, key) in weir's field layout.
async fn fill(conn: &mut MultiplexedConnection, stream: &str, n: u64) {
    let value = vec![b'x'; 100];
    for start in (0..n).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 1000).min(n) {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("value")
                .arg(&value)
                .arg("key")
                .arg(format!("key-{}", i % 16))
                .ignore();
        }
        let () = pipe.query_async(conn).await.unwrap();
    }
}

/// The bare client: read a batch, then write and acknowledge it in one
/// pipelined round trip, until the stream is exhausted.
async fn bare_loop(conn: &mut MultiplexedConnection, input: &str, output: &str, group: &str, batch: usize) -> u64 {
    let mut moved = 0;
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("bare")
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(input)
            .arg(">")
            .query_async(conn)
            .await
            .unwrap();
        let entries = match reply {
            Value::Array(mut streams) if !streams.is_empty() => match streams.remove(0) {
                Value::Array(mut parts) => match parts.remove(1) {
                    Value::Array(entries) => entries,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if entries.is_empty() {
            return moved;
        }
        let mut pipe = redis::pipe();
        let mut ack = redis::cmd("XACK");
        ack.arg(input).arg(group);
        for entry in &entries {
            let Value::Array(parts) = entry else { panic!("bad entry") };
            let (Value::BulkString(id), Value::Array(fields)) = (&parts[0], &parts[1]) else { panic!("bad entry") };
            let xadd = pipe.cmd("XADD").arg(output).arg("*");
            for field in fields {
                let Value::BulkString(bytes) = field else { panic!("bad field") };
                xadd.arg(bytes.as_slice());
            }
            xadd.ignore();
            ack.arg(id.as_slice());
        }
        pipe.add_command(ack).ignore();
        let () = pipe.query_async(conn).await.unwrap();
        moved += entries.len() as u64;
    }
}

/// Waits until `output` holds `n` entries and the group has nothing pending.
async fn wait_done(conn: &mut MultiplexedConnection, input: &str, output: &str, group: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let len: u64 = redis::cmd("XLEN").arg(output).query_async(conn).await.unwrap();
        if len >= n {
            let pending: Value = redis::cmd("XPENDING").arg(input).arg(group).query_async(conn).await.unwrap();
            if matches!(&pending, Value::Array(p) if p.first() == Some(&Value::Int(0))) {
                assert_eq!(len, n, "a clean run writes each message once");
                return;
            }
        }
        assert!(Instant::now() < deadline, "benchmark run did not finish ({len} of {n})");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn cleanup(conn: &mut MultiplexedConnection, keys: &[&str]) {
    let () = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
}
