//! Side-by-side throughput on one pulsar-lite broker (started here on free
//! loopback ports, behind the tests' reframing proxy, see
//! `tests/support/pulsar.rs`): Pulsar topic → passthrough WASM plugin →
//! Pulsar topic with weir, vs a bare pulsar-rs loop doing the same work
//! (consume, produce with the same batching producer settings, acknowledge
//! each message once its send is acknowledged, flushing every `batch`
//! messages). 100-byte values with a key; the input topic is filled before
//! each timed run, and the time runs until every message is in the output
//! topic (counted by a consumer of the output).
//!
//! `cargo bench -p weir --bench pulsar` prints a markdown table.
//! WEIR_BENCH_MESSAGES sets the messages per run (default 100,000).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The tests' harness: the pulsar-lite broker and its reframing proxy.
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::producer::Message as PulsarMessage;
use pulsar::{Consumer, Producer, ProducerOptions, Pulsar, SubType, TokioExecutor};
use support::pulsar as pulsar_lite;
use tokio_util::sync::CancellationToken;
use weir::config::PipelineConfig;
use weir::pipeline::Pipeline;
use weir::plugin::Runtime;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let wasm = weir::plugin::build::build(&root.join("plugins/passthrough")).expect("building passthrough");
    let messages: u64 = std::env::var("WEIR_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let broker = pulsar_lite::PulsarLite::start();
    let (url, addr) = (broker.url(), broker.addr());
    let scratch = tempfile::tempdir().unwrap();

    println!(
        "## Pulsar → passthrough → Pulsar ({messages} messages, 100-byte values, pulsar-lite {})\n",
        pulsar_lite::PULSAR_LITE
    );
    println!("| batch | weir msg/s | bare pulsar-rs loop msg/s | weir / bare |");
    println!("|---:|---:|---:|---:|");
    for batch in [256usize, 1024] {
        let (input, output) = (format!("bench-weir-in-{batch}"), format!("bench-weir-out-{batch}"));
        let weir_rate = tokio.block_on(async {
            let pulsar = client(&url).await;
            fill(&pulsar, &input, messages).await;
            let mut counter = subscribe(&pulsar, &output, "count").await;
            let text = format!(
                r#"
                [[source]]
                name = "in"
                uri = "pulsar://{addr}/public/default/{input}?subscription=bench"
                batch_size = {batch}
                [[stage]]
                name = "pass"
                plugin = "{}"
                batch = {{ max_size = {batch}, max_wait_ms = 2 }}
                [[sink]]
                name = "out"
                uri = "pulsar://{addr}/public/default/{output}"
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
            count(&mut counter, messages).await;
            let elapsed = started.elapsed();
            shutdown.cancel();
            let report = run.await.unwrap();
            assert!(report.success(), "{report:?}");
            messages as f64 / elapsed.as_secs_f64()
        });
        let (input, output) = (format!("bench-bare-in-{batch}"), format!("bench-bare-out-{batch}"));
        let bare_rate = tokio.block_on(async {
            let pulsar = client(&url).await;
            fill(&pulsar, &input, messages).await;
            let mut counter = subscribe(&pulsar, &output, "count").await;
            let started = Instant::now();
            let moved = tokio::spawn(bare_loop(pulsar.clone(), input, output, batch, messages));
            count(&mut counter, messages).await;
            let elapsed = started.elapsed();
            assert_eq!(moved.await.unwrap(), messages);
            messages as f64 / elapsed.as_secs_f64()
        });
        println!("| {batch} | {weir_rate:.0} | {bare_rate:.0} | {:.2}× |", weir_rate / bare_rate);
    }
}

async fn client(url: &str) -> Pulsar<TokioExecutor> {
    Pulsar::builder(url, TokioExecutor).build().await.expect("connecting to pulsar-lite")
}

/// weir's sink producer settings.
fn producer_options() -> ProducerOptions {
    ProducerOptions {
        batch_size: Some(1000),
        batch_byte_size: Some(4 * 1024 * 1024),
        batch_timeout: Some(Duration::from_millis(100)),
        block_queue_if_full: true,
        ..Default::default()
    }
}

async fn producer(pulsar: &Pulsar<TokioExecutor>, topic: &str) -> Producer<TokioExecutor> {
    pulsar
        .producer()
        .with_topic(format!("persistent://public/default/{topic}"))
        .with_options(producer_options())
        .build()
        .await
        .unwrap()
}

async fn subscribe(
    pulsar: &Pulsar<TokioExecutor>,
    topic: &str,
    subscription: &str,
) -> Consumer<Vec<u8>, TokioExecutor> {
    pulsar
        .consumer()
        .with_topic(format!("persistent://public/default/{topic}"))
        .with_subscription(subscription)
        .with_subscription_type(SubType::Shared)
        .with_batch_size(4096)
        .with_options(
            ConsumerOptions::default().with_initial_position(InitialPosition::Earliest).with_receiver_queue_size(4096),
        )
        .build()
        .await
        .unwrap()
}

fn message(i: u64) -> PulsarMessage {
    PulsarMessage { payload: vec![b'x'; 100], partition_key: Some(format!("key-{}", i % 16)), ..Default::default() }
}

/// Produces `n` messages to `topic` and waits for their receipts.
async fn fill(pulsar: &Pulsar<TokioExecutor>, topic: &str, n: u64) {
    let mut producer = producer(pulsar, topic).await;
    let mut receipts = Vec::with_capacity(n as usize);
    for i in 0..n {
        receipts.push(producer.send_non_blocking(message(i)).await.unwrap());
    }
    producer.send_batch().await.unwrap();
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

/// Counts (and acknowledges) `n` messages of the output topic.
async fn count(consumer: &mut Consumer<Vec<u8>, TokioExecutor>, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut seen = 0;
    while seen < n {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let m = next.expect("benchmark run did not finish").expect("stream").expect("message");
        consumer.ack(&m).await.unwrap();
        seen += 1;
    }
}

/// The bare client: consume, produce each message with its key, and every
/// `batch` messages flush and acknowledge what was sent once the broker
/// confirmed it.
async fn bare_loop(pulsar: Pulsar<TokioExecutor>, input: String, output: String, batch: usize, n: u64) -> u64 {
    let mut consumer = subscribe(&pulsar, &input, "bare").await;
    let mut producer = producer(&pulsar, &output).await;
    let mut moved = 0;
    while moved < n {
        let mut taken = Vec::with_capacity(batch);
        let mut receipts = Vec::with_capacity(batch);
        while taken.len() < batch && moved + (taken.len() as u64) < n {
            let m = consumer.next().await.expect("stream").expect("message");
            let out = PulsarMessage {
                payload: m.payload.data.clone(),
                partition_key: m.payload.metadata.partition_key.clone(),
                ..Default::default()
            };
            receipts.push(producer.send_non_blocking(out).await.unwrap());
            taken.push(m);
        }
        producer.send_batch().await.unwrap();
        for receipt in receipts {
            receipt.await.unwrap();
        }
        for m in &taken {
            consumer.ack(m).await.unwrap();
        }
        moved += taken.len() as u64;
    }
    moved
}
