//! Kafka → passthrough plugin → Kafka with weir vs a bare rdkafka
//! consume → produce loop, side by side in one run on the same broker.
//!
//! `cargo bench -p weir --bench kafka` prints a markdown table of messages
//! per second and the ratio. Both sides use the same client settings (weir's
//! defaults: manual commits, an idempotent `acks=all` producer with the
//! murmur2 partitioner, `linger.ms=5`), the same 6-partition input of
//! 100-byte values, and are timed the same way: from the first message
//! appearing in the output topic to the last (an outside observer polls the
//! output's end offsets), so the consumer-group join is not counted.
//! The broker is nisshi when it is on PATH, else librdkafka's built-in
//! cluster. `WEIR_BENCH_KAFKA_MESSAGES` sets the message count (default
//! 200,000); `WEIR_BENCH_KAFKA_ROUNDS` the rounds (default 2).
//!
//! A second table compares weir at-least-once with exactly-once on
//! crabka-broker (a broker with working transactions; on PATH, else the
//! table is left out, saying so): the same
//! pipeline, timed from the first output to the group's committed offsets
//! covering the whole input (exactly-once outputs count only once
//! committed).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir::config::PipelineConfig;
use weir::pipeline::Pipeline;
use weir::plugin::Runtime;

const PARTITIONS: i32 = 6;

enum Backend {
    Nisshi(Child),
    Mock(#[allow(dead_code)] MockCluster<'static, DefaultProducerContext>),
}

fn main() {
    let messages: u64 = env("WEIR_BENCH_KAFKA_MESSAGES", 200_000);
    let rounds: u64 = env("WEIR_BENCH_KAFKA_ROUNDS", 2);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let wasm = weir::plugin::build::build(&root.join("plugins/passthrough")).expect("building passthrough");
    let (addr, mut backend) = start_broker();
    let broker_name = match backend {
        Backend::Nisshi(_) => "nisshi",
        Backend::Mock(_) => "librdkafka built-in cluster",
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    create_topic(&rt, &addr, "bench-in");
    produce_input(&rt, &addr, "bench-in", messages);

    let mut rows = Vec::new();
    for round in 0..rounds {
        let bare_out = format!("bench-bare-out-{round}");
        let weir_out = format!("bench-weir-out-{round}");
        create_topic(&rt, &addr, &bare_out);
        create_topic(&rt, &addr, &weir_out);

        let task = rt.spawn(bare_loop(addr.clone(), format!("bench-bare-{round}"), bare_out.clone(), messages));
        let bare = observe(&addr, &bare_out, messages);
        rt.block_on(task).unwrap();

        let text = passthrough_pipeline(&addr, &format!("bench-in?group=bench-weir-{round}"), &weir_out, &wasm, "");
        let weir = run_while(&rt, &text, || observe(&addr, &weir_out, messages));
        rows.push((round + 1, bare, weir));
    }

    println!(
        "## Kafka → passthrough → Kafka ({messages} messages, 100-byte values, {PARTITIONS} partitions, {broker_name})\n"
    );
    println!("| round | bare rdkafka loop msg/s | weir (WASM passthrough) msg/s | weir / bare |");
    println!("|---:|---:|---:|---:|");
    for (round, bare, weir) in &rows {
        let (b, w) = (rate(messages, *bare), rate(messages, *weir));
        println!("| {round} | {b:.0} | {w:.0} | {:.2}× |", w / b);
    }
    let best = |pick: fn(&(u64, Duration, Duration)) -> Duration| rows.iter().map(pick).min().unwrap();
    let (b, w) = (rate(messages, best(|r| r.1)), rate(messages, best(|r| r.2)));
    println!("| best | {b:.0} | {w:.0} | {:.2}× |", w / b);
    if let Backend::Nisshi(child) = &mut backend {
        let _ = child.kill();
        let _ = child.wait();
    }
    delivery_table(&rt, &wasm, env("WEIR_BENCH_EOS_MESSAGES", 1_000_000), rounds);
}

/// At-least-once vs exactly-once (transactions per checkpoint interval) on
/// crabka-broker.
fn delivery_table(rt: &tokio::runtime::Runtime, wasm: &Path, messages: u64, rounds: u64) {
    let Some((addr, mut child, _dir)) = start_crabka() else {
        println!("\n(crabka-broker is not on PATH: no exactly-once table)");
        return;
    };
    create_topic(rt, &addr, "eos-in");
    produce_input(rt, &addr, "eos-in", messages);
    // (delivery, checkpoint interval ms); at-least-once commits at most
    // 100 ms after the checkpoint that covers the offsets.
    let cases: [(&str, u64); 4] =
        [("at-least-once", 1000), ("exactly-once", 1000), ("at-least-once", 100), ("exactly-once", 100)];
    let mut rows = Vec::new();
    for round in 0..rounds {
        for (index, (delivery, interval)) in cases.iter().enumerate() {
            let (group, output) = (format!("eos-{round}-{index}"), format!("eos-out-{round}-{index}"));
            create_topic(rt, &addr, &output);
            let source = format!("eos-in?group={group}&commit_interval_ms=100");
            let state = format!("delivery = \"{delivery}\"\n[state]\ncheckpoint_interval_ms = {interval}\n");
            let text = passthrough_pipeline(&addr, &source, &output, wasm, &state);
            let took = run_while(rt, &text, || observe_committed(&addr, &output, &group, messages));
            rows.push((round + 1, *delivery, *interval, took));
        }
    }
    println!("\n## At-least-once vs exactly-once, Kafka → passthrough → Kafka ({messages} messages, crabka-broker)\n");
    println!(
        "| round | delivery | checkpoint interval | msg/s (first output → all offsets committed) | vs at-least-once |"
    );
    println!("|---:|---|---:|---:|---:|");
    for chunk in rows.chunks(cases.len()) {
        for (round, label, interval, took) in chunk {
            let base = chunk.iter().find(|r| r.1 == "at-least-once" && r.2 == *interval).map(|r| rate(messages, r.3));
            let r = rate(messages, *took);
            println!("| {round} | {label} | {interval} ms | {r:.0} | {:.2}× |", r / base.unwrap_or(r));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kafka `source` (topic and query) → passthrough plugin `wasm` → Kafka
/// `output`, with `top` (top-level keys and tables) prepended.
fn passthrough_pipeline(addr: &str, source: &str, output: &str, wasm: &Path, top: &str) -> String {
    format!(
        r#"
        {top}
        [[source]]
        name = "in"
        uri = "kafka://{addr}/{source}"
        batch_size = 1024
        [[stage]]
        name = "pass"
        plugin = "{plugin}"
        batch = {{ max_size = 1024, max_wait_ms = 5 }}
        [[sink]]
        name = "out"
        uri = "kafka://{addr}/{output}"
        batch = {{ max_size = 10000, max_wait_ms = 5 }}
        "#,
        plugin = wasm.display()
    )
}

/// Runs the pipeline `text` while `measure` runs, then stops it; it must
/// succeed.
fn run_while<T>(rt: &tokio::runtime::Runtime, text: &str, measure: impl FnOnce() -> T) -> T {
    let scratch = tempfile::tempdir().unwrap();
    let config = PipelineConfig::parse(text, scratch.path()).unwrap();
    let pipeline = Pipeline::prepare(&config, &Runtime::new().unwrap()).unwrap();
    let shutdown = CancellationToken::new();
    let run = rt.spawn(pipeline.run(shutdown.clone()));
    let measured = measure();
    shutdown.cancel();
    let report = rt.block_on(run).unwrap();
    assert!(report.success(), "{report:?}");
    measured
}

/// crabka-broker on 127.0.0.2 (its controller port is fixed), with its
/// folder; `None` when the binary is missing.
fn start_crabka() -> Option<(String, Child, tempfile::TempDir)> {
    let binary = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("crabka-broker")).find(|p| p.is_file()))?;
    let dir = tempfile::tempdir().unwrap();
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    std::fs::write(
        dir.path().join("meta.properties.json"),
        format!(r#"{{"directory_id":"{}","version":1}}"#, uuid.trim()),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.2:{port}");
    let child = Command::new(binary)
        .args(["--listen-addr", &addr, "--metrics-listen-addr", "none", "--log-dir"])
        .arg(dir.path())
        .env("CRABKA_TRANSACTION_VERSION", "0")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting crabka-broker");
    let probe = consumer(&addr, "bench-probe");
    let started = Instant::now();
    while probe.fetch_metadata(None, Duration::from_secs(1)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "crabka-broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((addr, child, dir))
}

/// From the first message in `output` until `group` committed all of the
/// input.
fn observe_committed(addr: &str, output: &str, group: &str, messages: u64) -> Duration {
    let probe = consumer(addr, "bench-probe");
    let committed = consumer(addr, group);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = None;
    loop {
        let now = Instant::now();
        if first.is_none() {
            let written: u64 = (0..PARTITIONS)
                .map(|p| probe.fetch_watermarks(output, p, Duration::from_secs(5)).map_or(0, |(_, h)| h as u64))
                .sum();
            if written > 0 {
                first = Some(now);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition("eos-in", p);
        }
        let done: u64 = committed.committed_offsets(tpl, Duration::from_secs(5)).map_or(0, |c| {
            c.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o as u64 } else { 0 }).sum()
        });
        if done >= messages
            && let Some(first) = first
        {
            return now - first;
        }
        assert!(now < deadline, "{group}: {done} of {messages} committed after 15 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rate(messages: u64, took: Duration) -> f64 {
    messages as f64 / took.as_secs_f64()
}

fn start_broker() -> (String, Backend) {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("nisshi").is_file()));
    if !on_path {
        let cluster = MockCluster::new(1).unwrap();
        return (cluster.bootstrap_servers(), Backend::Mock(cluster));
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new("nisshi")
        .args(["broker", &format!("--listener-url={url}"), &format!("--advertised-listener-url={url}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nisshi");
    let addr = format!("127.0.0.1:{port}");
    let probe = consumer(&addr, "bench-probe");
    let started = Instant::now();
    while probe.fetch_metadata(None, Duration::from_secs(1)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "nisshi did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (addr, Backend::Nisshi(child))
}

fn config(addr: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", addr);
    config
}

fn consumer(addr: &str, group: &str) -> BaseConsumer {
    config(addr).set("group.id", group).set("enable.auto.commit", "false").create().unwrap()
}

fn create_topic(rt: &tokio::runtime::Runtime, addr: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = config(addr).create().unwrap();
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    // A broker just started may refuse creation until its controller is up.
    let started = Instant::now();
    loop {
        let failure = match rt.block_on(admin.create_topics([&topic], &AdminOptions::new())) {
            Ok(results) => results.into_iter().find_map(|r| r.err()).map(|(t, e)| format!("{t}: {e}")),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => break,
            Some(f) if started.elapsed() > Duration::from_secs(30) => panic!("creating {f}"),
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let probe = consumer(addr, "bench-probe");
    let started = Instant::now();
    loop {
        let ready = probe.fetch_metadata(Some(name), Duration::from_secs(1)).is_ok_and(|m| {
            m.topics().iter().any(|t| {
                t.error().is_none()
                    && t.partitions().len() == PARTITIONS as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        });
        if ready {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "topic {name} did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The producer settings both sides use (weir's sink defaults).
fn producer(addr: &str) -> FutureProducer {
    config(addr)
        .set("client.id", "weir")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn produce_input(rt: &tokio::runtime::Runtime, addr: &str, topic: &str, messages: u64) {
    let producer = producer(addr);
    rt.block_on(async {
        let mut pending = VecDeque::new();
        for i in 0..messages {
            let key = format!("key-{}", i % 1000);
            let head = format!("{{\"seq\":{i},\"pad\":\"");
            let value = format!("{head}{}\"}}", "x".repeat(100 - head.len() - 2));
            let mut record = FutureRecord::to(topic).key(key.as_bytes()).payload(value.as_bytes());
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push_back(d);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        pending.pop_front().unwrap().await.unwrap().unwrap();
                    }
                    Err((e, _)) => panic!("{e}"),
                }
            }
        }
        for d in pending {
            d.await.unwrap().unwrap();
        }
    });
}

/// Polls `topic`'s end offsets: from the first output message to the
/// `messages`-th.
fn observe(addr: &str, topic: &str, messages: u64) -> Duration {
    let probe = consumer(addr, "bench-probe");
    let total = || -> u64 {
        (0..PARTITIONS)
            .map(|p| probe.fetch_watermarks(topic, p, Duration::from_secs(5)).map_or(0, |(_, high)| high as u64))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = None;
    loop {
        let n = total();
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some(now);
        }
        if n >= messages {
            return now - first.unwrap();
        }
        assert!(now < deadline, "{topic}: {n} of {messages} after 15 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bare loop: consume, produce each message, await every delivery,
/// commit the consumed offsets (once per second and at the end).
async fn bare_loop(addr: String, group: String, output: String, messages: u64) {
    let consumer: StreamConsumer = config(&addr)
        .set("group.id", &group)
        .set("client.id", "weir")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["bench-in"]).unwrap();
    let producer = producer(&addr);
    let mut pending: VecDeque<(i32, i64, DeliveryFuture)> = VecDeque::new();
    let mut delivered: HashMap<i32, i64> = HashMap::new();
    let mut last_commit = Instant::now();
    let commit = |delivered: &HashMap<i32, i64>, mode| {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in delivered {
            tpl.add_partition_offset("bench-in", *p, Offset::Offset(*next)).unwrap();
        }
        if tpl.count() > 0 {
            let _ = consumer.commit(&tpl, mode);
        }
    };
    for _ in 0..messages {
        let m = consumer.recv().await.unwrap();
        let (partition, offset) = (m.partition(), m.offset());
        let mut record = FutureRecord::<[u8], [u8]>::to(&output).payload(m.payload().unwrap_or_default());
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(headers) = m.headers() {
            record = record.headers(headers.detach());
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    pending.push_back((partition, offset, d));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    let (p, o, d) = pending.pop_front().unwrap();
                    d.await.unwrap().unwrap();
                    delivered.insert(p, o + 1);
                }
                Err((e, _)) => panic!("{e}"),
            }
        }
        // Settle finished deliveries (without waiting) and commit once a second.
        while let Some((p, o, d)) = pending.front_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(d).poll(&mut cx) {
                Poll::Ready(result) => {
                    result.unwrap().unwrap();
                    let (p, o) = (*p, *o);
                    pending.pop_front();
                    delivered.insert(p, o + 1);
                }
                Poll::Pending => break,
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            commit(&delivered, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    for (p, o, d) in pending {
        d.await.unwrap().unwrap();
        delivered.insert(p, o + 1);
    }
    commit(&delivered, CommitMode::Sync);
}
