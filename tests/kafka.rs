//! The Kafka connector against real Kafka-protocol brokers.
//!
//! The end-to-end tests run the `weir` binary against nisshi (a Kafka-
//! compatible broker, found on PATH as `nisshi` or installed by the harness
//! when missing, started on a free port with in-memory storage). The
//! broker-fault test uses librdkafka's built-in cluster, which serves real
//! TCP too and can take a broker down and up. Every test counts messages exactly: nothing lost, and
//! duplicates (at-least-once) only where the semantics allow them.

mod support;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use support::{
    LoggedWeir, Metrics, Scratch, counts_per_key, free_port, nisshi, plugin, random_in, saved_counts, wait_until,
};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 6;

// ---------------------------------------------------------------- brokers

enum Backend {
    Nisshi(Child),
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// crabka-broker (transactions) and its log folder.
    Crabka(Child, #[allow(dead_code, reason = "held to delete the folder on drop")] tempfile::TempDir),
}

/// A running broker and a small runtime for the async client calls.
struct Broker {
    addr: String,
    backend: Backend,
    rt: tokio::runtime::Runtime,
    /// Reused consumers for look-ups, by group.
    lookups: RefCell<HashMap<String, Rc<BaseConsumer>>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.lookups.borrow_mut().clear();
        if let Backend::Nisshi(child) | Backend::Crabka(child, _) = &mut self.backend {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Broker {
    /// nisshi, installed first when it is missing (see `support::nisshi`).
    fn start() -> Broker {
        Broker::nisshi()
    }

    fn nisshi() -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(nisshi())
            .args(["broker", &format!("--listener-url={url}"), &format!("--advertised-listener-url={url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nisshi");
        let broker = Broker {
            addr: format!("127.0.0.1:{port}"),
            backend: Backend::Nisshi(child),
            rt: runtime(),
            lookups: Default::default(),
        };
        let consumer = broker.lookup(None);
        assert!(
            wait_until(Duration::from_secs(30), || consumer.fetch_metadata(None, Duration::from_secs(1)).is_ok()),
            "nisshi did not answer on {}",
            broker.addr
        );
        broker
    }

    /// crabka-broker on its own loopback address (its controller port is
    /// fixed, so brokers in parallel need different IPs); `None`, said
    /// loudly, when the binary is missing outside CI.
    fn crabka() -> Option<Broker> {
        static NEXT_IP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);
        let binary = support::crabka_broker()?;
        let ip = format!("127.0.0.{}", NEXT_IP.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = free_port();
        let dir = tempfile::tempdir().expect("broker folder");
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("a random UUID");
        let meta = format!(r#"{{"directory_id":"{}","version":1}}"#, uuid.trim());
        std::fs::write(dir.path().join("meta.properties.json"), meta).expect("writing meta.properties.json");
        let child = Command::new(binary)
            .args(["--listen-addr", &format!("{ip}:{port}"), "--metrics-listen-addr", "none", "--log-dir"])
            .arg(dir.path())
            .env("CRABKA_TRANSACTION_VERSION", "0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting crabka-broker");
        let broker = Broker {
            addr: format!("{ip}:{port}"),
            backend: Backend::Crabka(child, dir),
            rt: runtime(),
            lookups: Default::default(),
        };
        let consumer = broker.lookup(None);
        assert!(
            wait_until(Duration::from_secs(30), || consumer.fetch_metadata(None, Duration::from_secs(1)).is_ok()),
            "crabka-broker did not answer on {}",
            broker.addr
        );
        Some(broker)
    }

    fn mock() -> Broker {
        let cluster = MockCluster::new(1).expect("starting librdkafka's built-in cluster");
        Broker {
            addr: cluster.bootstrap_servers(),
            backend: Backend::Mock(cluster),
            rt: runtime(),
            lookups: Default::default(),
        }
    }

    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Nisshi(_) => "nisshi",
            Backend::Mock(_) => "built-in cluster",
            Backend::Crabka(..) => "crabka-broker",
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.addr);
        config
    }

    fn consumer(&self, group: Option<&str>) -> BaseConsumer {
        let mut config = self.config();
        config.set("enable.auto.commit", "false").set("enable.partition.eof", "false");
        config.set("group.id", group.unwrap_or("weir-test-reader"));
        config.create().expect("creating a test consumer")
    }

    /// A consumer for metadata and offset look-ups (of `group`), made once.
    fn lookup(&self, group: Option<&str>) -> Rc<BaseConsumer> {
        let name = group.unwrap_or("weir-test-reader").to_string();
        self.lookups.borrow_mut().entry(name).or_insert_with(|| Rc::new(self.consumer(group))).clone()
    }

    fn create_topic(&self, name: &str, partitions: i32) {
        match &self.backend {
            Backend::Mock(cluster) => cluster.create_topic(name, partitions, 1).expect("creating a topic"),
            Backend::Nisshi(_) | Backend::Crabka(..) => {
                let admin: AdminClient<DefaultClientContext> = self.config().create().expect("admin client");
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                // crabka-broker refuses creation until its controller is up.
                let mut failure = String::new();
                let created = wait_until(Duration::from_secs(30), || {
                    let results = self.rt.block_on(admin.create_topics([&topic], &AdminOptions::new()));
                    match results.map_err(|e| e.to_string()).and_then(|r| {
                        r.into_iter().find_map(|r| r.err()).map_or(Ok(()), |(t, e)| Err(format!("{t}: {e}")))
                    }) {
                        Ok(()) => true,
                        Err(e) if e.contains("TopicAlreadyExists") => true,
                        Err(e) => {
                            failure = e;
                            false
                        }
                    }
                });
                assert!(created, "creating topic {name}: {failure}");
            }
        }
        let consumer = self.lookup(None);
        let ready = wait_until(Duration::from_secs(30), || {
            consumer.fetch_metadata(Some(name), Duration::from_secs(1)).is_ok_and(|m| {
                m.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
        });
        assert!(ready, "topic {name} did not appear with {partitions} partitions");
    }

    /// Produces `records` (keyed, murmur2 like Java) and returns where each went.
    fn produce(&self, topic: &str, records: &mut [Record]) {
        let producer: FutureProducer = self
            .config()
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .create()
            .expect("test producer");
        let placed = self.rt.block_on(async {
            let mut placed = Vec::with_capacity(records.len());
            let mut pending: std::collections::VecDeque<(usize, DeliveryFuture)> = Default::default();
            for (index, r) in records.iter().enumerate() {
                let headers = r
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_slice()) }));
                let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(r.value.as_slice()).headers(headers);
                if let Some(key) = &r.key {
                    record = record.key(key.as_slice());
                }
                if let Some(ts) = r.timestamp {
                    record = record.timestamp(ts);
                }
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push_back((index, delivery));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            let (i, d) = pending.pop_front().expect("queue full with nothing pending");
                            placed.push((i, delivered(d).await));
                        }
                        Err((e, _)) => panic!("producing: {e}"),
                    }
                }
            }
            for (i, d) in pending {
                placed.push((i, delivered(d).await));
            }
            placed
        });
        // Delivery reports carry the placement; fill it in.
        for (i, (partition, offset)) in placed {
            records[i].partition = partition;
            records[i].offset = offset;
        }
    }

    fn end_offsets(&self, topic: &str) -> Option<Vec<i64>> {
        let consumer = self.lookup(None);
        (0..PARTITIONS)
            .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).ok().map(|(_, high)| high))
            .collect()
    }

    fn end(&self, topic: &str) -> Vec<i64> {
        self.end_offsets(topic).unwrap_or_else(|| panic!("reading the end offsets of {topic}"))
    }

    /// The group's committed offsets (-1: none), or None when the broker
    /// does not answer.
    fn committed(&self, group: &str, topic: &str) -> Option<Vec<i64>> {
        let consumer = self.lookup(Some(group));
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
        Some(
            (0..PARTITIONS)
                .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                })
                .collect(),
        )
    }

    /// What a consumer at `isolation` (`read_committed` or
    /// `read_uncommitted`) sees of `topic`: read until at least `expected`
    /// records arrived and nothing more came for two seconds (aborted
    /// records and transaction markers take offsets, so the end offsets say
    /// nothing of the count).
    fn read(&self, topic: &str, expected: usize, isolation: &str) -> Vec<Record> {
        let mut config = self.config();
        config.set("group.id", "weir-test-isolated-reader").set("isolation.level", isolation);
        let consumer: BaseConsumer = config.create().expect("read_committed consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assigning");
        let mut records = Vec::with_capacity(expected);
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut last_arrival = Instant::now();
        while records.len() < expected || last_arrival.elapsed() < Duration::from_secs(2) {
            assert!(Instant::now() < deadline, "read {} of {expected} committed records of {topic}", records.len());
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_arrival = Instant::now();
                    records.push(Record::from_kafka(&m));
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }

    /// Every record of `topic`, per partition in offset order.
    fn read_all(&self, topic: &str) -> Vec<Record> {
        let end = self.end(topic);
        let total: i64 = end.iter().sum();
        let consumer = self.consumer(None);
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assigning");
        let mut records = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(120);
        while (records.len() as i64) < total {
            assert!(Instant::now() < deadline, "read {} of {total} records of {topic}", records.len());
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => records.push(Record::from_kafka(&m)),
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }
}

/// Where a test message landed.
async fn delivered(delivery: DeliveryFuture) -> (i32, i64) {
    match delivery.await {
        Ok(Ok(d)) => (d.partition, d.offset),
        Ok(Err((e, _))) => panic!("test message not delivered: {e}"),
        Err(_) => panic!("test producer went away"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime")
}

// ---------------------------------------------------------------- messages

#[derive(Clone, Debug, PartialEq)]
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
}

impl Record {
    fn from_kafka(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default(),
            timestamp: m.timestamp().to_millis(),
        }
    }

    fn id(&self) -> u64 {
        let (_, v) = self.headers.iter().find(|(k, _)| k == "id").expect("header id");
        std::str::from_utf8(v).unwrap().parse().unwrap()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Messages `ids`, keyed over `keys` keys, with ~100-byte values, two
/// headers (one binary) and increasing timestamps.
fn inputs(ids: std::ops::Range<u64>, keys: u64, base_ts: i64) -> Vec<Record> {
    ids.map(|i| {
        let head = format!("{{\"id\":{i},\"pad\":\"");
        let value = format!("{head}{}\"}}", "x".repeat(100 - head.len() - 2));
        Record {
            partition: -1,
            offset: -1,
            key: Some(format!("key-{}", i % keys).into_bytes()),
            value: value.into_bytes(),
            headers: vec![("id".into(), i.to_string().into_bytes()), ("bin".into(), vec![0, 1, 255])],
            timestamp: Some(base_ts + i as i64),
        }
    })
    .collect()
}

/// Kafka's Java `Utils.murmur2`.
fn murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let mut h: i32 = (0x9747_b28c_u32 as i32) ^ data.len() as i32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() == 3 {
        h ^= (tail[2] as i32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as i32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as i32;
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The partition Kafka's Java producer picks for `key`.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn murmur2_matches_kafkas_java_test_vectors() {
    // From Kafka's UtilsTest.testMurmur2.
    for (input, expected) in [
        (&b"21"[..], -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ] {
        assert_eq!(murmur2(input), expected, "{}", String::from_utf8_lossy(input));
    }
}

/// Kafka → passthrough → Kafka. Short session timeouts so that a killed
/// member's partitions move on within seconds.
fn pipeline(broker: &Broker, input: &str, output: &str, group: &str) -> String {
    format!(
        r#"
        [[source]]
        name = "in"
        uri = "kafka://{addr}/{input}?group={group}&commit_interval_ms=200"
        batch_size = 500
        properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

        [[stage]]
        name = "pass"
        plugin = "{plugin}"
        concurrency = 2
        dispatch = "partition"
        partition_by = "key"

        [[sink]]
        name = "out"
        uri = "kafka://{addr}/{output}"
        batch = {{ max_size = 2000, max_wait_ms = 10 }}
        "#,
        addr = broker.addr,
        plugin = plugin("passthrough").display(),
    )
}

/// Kafka `input` (group `group`) → count-by-key → `sink`, checkpointed
/// every 50 ms, under `delivery`.
fn count_pipeline(broker: &Broker, delivery: &str, input: &str, group: &str, sink: &str) -> String {
    format!(
        r#"
        delivery = "{delivery}"

        [[source]]
        name = "in"
        uri = "kafka://{addr}/{input}?group={group}&commit_interval_ms=100"
        batch_size = 200
        properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

        [[stage]]
        name = "count"
        plugin = "{plugin}"
        concurrency = 2
        dispatch = "partition"
        partition_by = "key"

        [[sink]]
        name = "out"
        uri = "{sink}"

        [state]
        checkpoint_interval_ms = 50
        "#,
        addr = broker.addr,
        plugin = plugin("count-by-key").display(),
    )
}

/// Waits until the group has committed everything `topic` holds (look-ups
/// that fail while a broker reconnects are retried).
fn wait_committed(broker: &Broker, group: &str, topic: &str, logs: impl Fn() -> String, limit: Duration) {
    let done = wait_until(limit, || {
        broker.end_offsets(topic).is_some_and(|end| broker.committed(group, topic).is_some_and(|c| c == end))
    });
    if !done {
        panic!(
            "group {group} did not commit {:?} on {topic} (committed {:?}); logs:\n{}",
            broker.end_offsets(topic),
            broker.committed(group, topic),
            logs()
        );
    }
}

/// Counts outputs per input id; checks content against the inputs.
fn tally(inputs: &[Record], outputs: &[Record]) -> HashMap<u64, usize> {
    let by_id: HashMap<u64, &Record> = inputs.iter().map(|r| (r.id(), r)).collect();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for out in outputs {
        let id = out.id();
        let input = by_id.get(&id).unwrap_or_else(|| panic!("output {id} was never an input"));
        assert_eq!(out.key, input.key, "key of {id}");
        assert_eq!(out.value, input.value, "value of {id}");
        assert_eq!(out.headers, input.headers, "headers of {id}");
        assert_eq!(out.timestamp, input.timestamp, "timestamp of {id}");
        *seen.entry(id).or_default() += 1;
    }
    let missing: Vec<u64> = inputs.iter().map(Record::id).filter(|id| !seen.contains_key(id)).take(10).collect();
    assert!(missing.is_empty(), "lost {} inputs, e.g. {missing:?}", inputs.len() - seen.len());
    seen
}

/// Per key, each new message comes after the earlier ones (a duplicate may
/// repeat an earlier one); returns the number of duplicates.
fn check_per_key_order(outputs: &[Record]) -> usize {
    let mut last: HashMap<&[u8], u64> = HashMap::new();
    let mut partition_of: HashMap<&[u8], i32> = HashMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for out in outputs {
        let key = out.key.as_deref().expect("keyed");
        assert_eq!(*partition_of.entry(key).or_insert(out.partition), out.partition, "a key in two partitions");
        let id = out.id();
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        if let Some(prev) = last.insert(key, id) {
            assert!(id > prev, "key {}: {id} written after {prev}", String::from_utf8_lossy(key));
        }
    }
    duplicates
}

// ---------------------------------------------------------------- tests

#[test]
fn end_to_end_100k_messages_through_the_weir_binary() {
    let broker = Broker::start();
    broker.create_topic("e2e-in", PARTITIONS);
    broker.create_topic("e2e-out", PARTITIONS);
    let mut input = inputs(0..100_000, 1000, now_ms() - 3_600_000);
    broker.produce("e2e-in", &mut input);
    let scratch = Scratch::new();
    let file = scratch.write("pipeline.toml", &pipeline(&broker, "e2e-in", "e2e-out", "e2e"));

    let started = Instant::now();
    let weir = LoggedWeir::run(&file, &scratch, "e2e");
    wait_committed(&broker, "e2e", "e2e-in", || weir.log(), Duration::from_secs(600));
    let log = weir.stop();
    eprintln!("{}: 100000 messages through weir in {:?}", broker.name(), started.elapsed());

    let output = broker.read_all("e2e-out");
    assert_eq!(output.len(), 100_000, "exactly the inputs, once each");
    let seen = tally(&input, &output);
    assert!(seen.values().all(|n| *n == 1));
    for out in &output {
        let key = out.key.as_deref().unwrap();
        assert_eq!(out.partition, java_partition(key, PARTITIONS), "weir must partition like Kafka's Java client");
    }
    assert_eq!(check_per_key_order(&output), 0);
    assert_eq!(broker.committed("e2e", "e2e-in"), Some(broker.end("e2e-in")), "committed = end offsets");
    assert!(log.contains("assigned 6 partitions"), "{log}");
}

#[test]
fn kill_9_mid_run_then_restart_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic("crash-in", PARTITIONS);
    broker.create_topic("crash-out", PARTITIONS);
    let base = now_ms() - 3_600_000;
    let mut first = inputs(0..40_000, 500, base);
    broker.produce("crash-in", &mut first);
    let scratch = Scratch::new();
    let file = scratch.write("pipeline.toml", &pipeline(&broker, "crash-in", "crash-out", "crash"));

    let weir = LoggedWeir::run(&file, &scratch, "first");
    // Kill once some offsets are committed, with more still in flight.
    let committed_total =
        || broker.committed("crash", "crash-in").map_or(0, |c| c.iter().map(|o| o.max(&0)).sum::<i64>());
    let progressed = wait_until(Duration::from_secs(300), || committed_total() >= 8_000);
    assert!(progressed, "no progress; log:\n{}", weir.log());
    weir.kill9();
    let committed_at_kill = broker.committed("crash", "crash-in").expect("committed offsets");
    let end_at_kill = broker.end("crash-in");
    // More input arrives while weir is down.
    let mut second = inputs(40_000..60_000, 500, base);
    broker.produce("crash-in", &mut second);

    let again = LoggedWeir::run(&file, &scratch, "again");
    wait_committed(&broker, "crash", "crash-in", || again.log(), Duration::from_secs(600));
    again.stop();

    let all: Vec<Record> = first.into_iter().chain(second).collect();
    let output = broker.read_all("crash-out");
    let seen = tally(&all, &output);
    let duplicates = output.len() - all.len();
    let window: i64 = (0..PARTITIONS as usize).map(|p| end_at_kill[p] - committed_at_kill[p].max(0)).sum();
    eprintln!(
        "{}: kill -9 then restart: {} inputs, {} outputs, {duplicates} duplicates; uncommitted window at the kill: \
         {window} messages (committed {committed_at_kill:?} of {end_at_kill:?})",
        broker.name(),
        all.len(),
        output.len()
    );
    // Duplicates come only from the uncommitted window: messages at or past
    // the offset committed when the process died.
    let by_id: HashMap<u64, &Record> = all.iter().map(|r| (r.id(), r)).collect();
    for (id, count) in &seen {
        if *count > 1 {
            let input = by_id[id];
            assert!(
                input.offset >= committed_at_kill[input.partition as usize],
                "input {id} (partition {}, offset {}) was committed before the kill yet processed {count} times",
                input.partition,
                input.offset
            );
            assert_eq!(*count, 2, "input {id} processed {count} times after one crash");
        }
    }
    assert!(duplicates as i64 <= window, "{duplicates} duplicates exceed the uncommitted window of {window}");
    assert_eq!(broker.committed("crash", "crash-in"), Some(broker.end("crash-in")));
}

/// count-by-key over 100,000 messages, weir killed with SIGKILL at random
/// moments five times and started again: the saved count of every key is
/// exact. Offsets are committed only after the checkpoint that holds their
/// effects, and a restart starts each partition at the checkpoint's offset
/// when the group's commit is behind it.
#[test]
fn keyed_counts_are_exact_after_repeated_kill_9() {
    const N: u64 = 100_000;
    const KEYS: u64 = 50;
    let broker = Broker::start();
    broker.create_topic("exact-in", PARTITIONS);
    let mut records = inputs(0..N, KEYS, now_ms() - 3_600_000);
    broker.produce("exact-in", &mut records);
    let scratch = Scratch::new();
    let file =
        scratch.write("pipeline.toml", &count_pipeline(&broker, "at-least-once", "exact-in", "exact", "null://"));
    let committed_total =
        || broker.committed("exact", "exact-in").map_or(0, |c| c.iter().map(|o| o.max(&0)).sum::<i64>() as u64);
    let mut kills = Vec::new();
    for round in 0..5u64 {
        let target = (round * N / 6 + random_in(N / 12..N / 6)).min(N - 1);
        let weir = LoggedWeir::run(&file, &scratch, &format!("run-{round}"));
        let progressed = wait_until(Duration::from_secs(300), || committed_total() >= target);
        assert!(progressed, "no progress to {target} committed; log:\n{}", weir.log());
        weir.kill9();
        kills.push(committed_total());
    }
    let last = LoggedWeir::run(&file, &scratch, "last");
    wait_committed(&broker, "exact", "exact-in", || last.log(), Duration::from_secs(600));
    last.stop();

    let counts = saved_counts(&file, "count");
    let expected = counts_per_key(N, KEYS, "key-");
    eprintln!("{}: killed with SIGKILL at committed offsets {kills:?} of {N}", broker.name());
    assert_eq!(counts, expected, "every key counted exactly once per message across five kill -9 restarts");
}

/// Kafka → passthrough → Kafka with `delivery = "exactly-once"` on a broker
/// with working transactions, weir killed with SIGKILL four times while
/// transactions are open (one commits every 100 ms under a steady flow) and
/// started again: a `read_committed` reader of the output sees every input
/// exactly once, and the group's committed offsets are the input's end.
#[test]
fn exactly_once_kafka_to_kafka_survives_repeated_kill_9() {
    const N: u64 = 60_000;
    let Some(broker) = Broker::crabka() else { return };
    broker.create_topic("eos-in", PARTITIONS);
    broker.create_topic("eos-out", PARTITIONS);
    let mut records = inputs(0..N, 300, now_ms() - 3_600_000);
    broker.produce("eos-in", &mut records);
    let scratch = Scratch::new();
    let text = format!(
        "delivery = \"exactly-once\"\n{}\n[state]\ncheckpoint_interval_ms = 100\n",
        pipeline(&broker, "eos-in", "eos-out", "eos")
    );
    let file = scratch.write("pipeline.toml", &text);
    let (kills, settled) = run_killed_four_times(&broker, &scratch, &file, "eos", "eos-in");

    let output = broker.read("eos-out", N as usize, "read_committed");
    let seen = tally(&records, &output);
    let repeated: Vec<(u64, usize)> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, n)| (*id, *n)).take(10).collect();
    eprintln!(
        "{}: exactly-once, killed with SIGKILL at committed offsets {kills:?} of {N} (pending checkpoints at the \
         restarts: {settled:?}); a read_committed reader sees {} outputs",
        broker.name(),
        output.len(),
    );
    assert!(repeated.is_empty(), "inputs seen more than once by a read_committed reader: {repeated:?}");
    assert_eq!(output.len(), N as usize, "every input exactly once");
    assert_eq!(broker.committed("eos", "eos-in"), Some(broker.end("eos-in")));
}

/// count-by-key under `delivery = "exactly-once"`, killed with SIGKILL four
/// times: the saved counts are exact, and the committed outputs (a running
/// total per key) agree with them: per key the totals only go up, none is
/// repeated, and the last is the key's exact count. A checkpoint whose
/// transaction died is undone in the state store on restart.
#[test]
fn exactly_once_keyed_counts_match_their_committed_outputs_after_kill_9() {
    const N: u64 = 40_000;
    const KEYS: u64 = 50;
    let Some(broker) = Broker::crabka() else { return };
    broker.create_topic("eosc-in", PARTITIONS);
    broker.create_topic("eosc-out", PARTITIONS);
    broker.produce("eosc-in", &mut inputs(0..N, KEYS, now_ms() - 3_600_000));
    let scratch = Scratch::new();
    let file = scratch.write(
        "pipeline.toml",
        &count_pipeline(&broker, "exactly-once", "eosc-in", "eosc", &format!("kafka://{}/eosc-out", broker.addr)),
    );
    let (kills, settled) = run_killed_four_times(&broker, &scratch, &file, "eosc", "eosc-in");

    let expected = counts_per_key(N, KEYS, "key-");
    assert_eq!(saved_counts(&file, "count"), expected, "saved counts exact across four kill -9 restarts");
    let mut totals: HashMap<String, Vec<u64>> = HashMap::new();
    for output in broker.read("eosc-out", KEYS as usize, "read_committed") {
        let value: serde_json::Value = serde_json::from_slice(&output.value).expect("a count-by-key output");
        let key = value["key"].as_str().expect("key").to_string();
        totals.entry(key).or_default().push(value["count"].as_u64().expect("count"));
    }
    eprintln!(
        "{}: exactly-once count-by-key, killed at committed offsets {kills:?} of {N} (pending checkpoints at the \
         restarts: {settled:?})",
        broker.name()
    );
    for (key, count) in &expected {
        let seen = totals.get(key).unwrap_or_else(|| panic!("no committed output for {key}"));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "totals of {key} repeat or go back: {seen:?}");
        assert_eq!(seen.last(), Some(count), "the last committed total of {key}");
    }

    // As if weir died between writing a checkpoint and committing its
    // transaction: the store holds counts and offsets the broker never got.
    // The restart must find the transaction uncommitted and undo them.
    {
        let store = weir::store::StateStore::open(&scratch.path(".weir/state")).expect("the state store");
        let inflated: weir::store::Changes = vec![(b"count:key-0".to_vec(), Some(999_999u64.to_le_bytes().to_vec()))];
        let ahead: Vec<weir::store::PositionRecord> = broker
            .end("eosc-in")
            .iter()
            .enumerate()
            .map(|(p, end)| weir::store::PositionRecord {
                source: "in".into(),
                key: format!("eosc-in/{p}"),
                value: Some((end + 100).to_string().into_bytes()),
            })
            .collect();
        store.checkpoint_pending(&[("count", &inflated)], &ahead, "weir-eosc-never-committed").expect("writing");
    }
    // The settling happens before the pipeline starts: no need to wait for
    // the group (a broker may hold a new join until the last member's
    // rebalance timeout).
    let again = LoggedWeir::run(&file, &scratch, "undo");
    let undone = wait_until(Duration::from_secs(120), || again.log().contains("Kafka source started"));
    assert!(undone, "the restart did not come up; log:\n{}", again.log());
    let log = again.stop();
    assert!(
        log.contains("transaction `weir-eosc-never-committed` did not commit"),
        "the uncommitted checkpoint was not undone; log:\n{log}"
    );
    assert_eq!(saved_counts(&file, "count"), expected, "counts after undoing the uncommitted checkpoint");
}

/// Runs the pipeline `file` (consumer group `group` on `input`) four times,
/// each killed with SIGKILL once the group's committed offsets moved on by
/// a random share, then once more until everything is committed; returns
/// the committed totals at the kills and, per restart, how the last run's
/// pending checkpoint was settled.
fn run_killed_four_times(
    broker: &Broker,
    scratch: &Scratch,
    file: &Path,
    group: &str,
    input: &str,
) -> (Vec<u64>, Vec<&'static str>) {
    let settled = |log: &str| {
        if log.contains("did not commit: state and positions go back") {
            "undone"
        } else if log.contains("committed: keeping its checkpoint") {
            "kept"
        } else {
            "none pending"
        }
    };
    let mut settlements = Vec::new();
    let committed_total =
        || broker.committed(group, input).map_or(0, |c| c.iter().map(|o| o.max(&0)).sum::<i64>() as u64);
    let end: u64 = broker.end(input).iter().sum::<i64>() as u64;
    let mut kills = Vec::new();
    for round in 0..4 {
        let target = (committed_total() + random_in(2_000..8_000)).min(end - 1);
        let weir = LoggedWeir::run(file, scratch, &format!("run-{round}"));
        let progressed = wait_until(Duration::from_secs(300), || committed_total() >= target);
        assert!(progressed, "no progress to {target} committed; log:\n{}", weir.log());
        let log = weir.log();
        weir.kill9();
        kills.push(committed_total());
        settlements.push(settled(&log));
    }
    let last = LoggedWeir::run(file, scratch, "last");
    // Stopped only once running (a SIGTERM before the handler is set kills).
    let started = wait_until(Duration::from_secs(120), || last.log().contains("exactly-once: transactional id"));
    assert!(started, "no transactional producer; log:\n{}", last.log());
    wait_committed(broker, group, input, || last.log(), Duration::from_secs(600));
    settlements.push(settled(&last.stop()));
    // The first run has nothing to settle.
    settlements.remove(0);
    (kills, settlements)
}

#[test]
fn second_process_joins_then_first_leaves_without_loss() {
    let broker = Broker::start();
    broker.create_topic("scale-in", PARTITIONS);
    broker.create_topic("scale-out", PARTITIONS);
    let base = now_ms() - 3_600_000;
    let scratch = Scratch::new();
    let text = pipeline(&broker, "scale-in", "scale-out", "scale");
    let file = scratch.write("pipeline.toml", &text);
    // The second process on this host needs its own state folder: the state
    // store is locked by the process that runs it.
    let second_file = scratch.write("pipeline-2.toml", &format!("{text}\n[state]\ndir = \".weir/state-2\"\n"));
    let mut all = Vec::new();
    let mut produce = |ids: std::ops::Range<u64>| {
        let mut chunk = inputs(ids, 300, base);
        broker.produce("scale-in", &mut chunk);
        all.extend(chunk);
    };
    let out_total = || broker.end_offsets("scale-out").map_or(0, |e| e.iter().sum::<i64>());

    produce(0..20_000);
    let mut first = LoggedWeir::run(&file, &scratch, "first");
    assert!(wait_until(Duration::from_secs(300), || out_total() >= 5_000), "no progress; log:\n{}", first.log());
    produce(20_000..40_000);
    let second = LoggedWeir::run(&second_file, &scratch, "second");
    let joined = wait_until(Duration::from_secs(120), || {
        second
            .log()
            .lines()
            .any(|l| l.contains("assigned ") && l.contains(" partitions: ") && !l.contains("assigned 0 "))
    });
    assert!(joined, "the second process got no partitions; logs:\n{}\n-----\n{}", first.log(), second.log());
    produce(40_000..60_000);
    first.signal("-TERM");
    produce(60_000..80_000);
    let code = first.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "first process: {}", first.log());
    wait_committed(&broker, "scale", "scale-in", || second.log(), Duration::from_secs(600));
    second.stop();

    let output = broker.read_all("scale-out");
    let seen = tally(&all, &output);
    assert_eq!(seen.len(), all.len());
    let duplicates = check_per_key_order(&output);
    let first_log = first.log();
    assert!(first_log.contains("revoked "), "{first_log}");
    eprintln!("{}: rebalance: {} inputs, {} outputs, {duplicates} duplicates", broker.name(), all.len(), output.len());
    assert_eq!(broker.committed("scale", "scale-in"), Some(broker.end("scale-in")));
}

/// Log lines of pipelines run inside this test process (only the broker
/// fault test runs one), so that a failure can show what weir said.
static IN_PROCESS_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct InProcessLog;

impl std::io::Write for InProcessLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        IN_PROCESS_LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_in_process_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,weir::connectors=debug")
        .with_ansi(false)
        .with_writer(|| InProcessLog)
        .try_init();
}

fn in_process_log() -> String {
    String::from_utf8_lossy(&IN_PROCESS_LOG.lock().unwrap()).into_owned()
}

#[test]
fn broker_down_then_up_loses_nothing() {
    capture_in_process_log();
    let broker = Broker::mock();
    broker.create_topic("fault-in", PARTITIONS);
    broker.create_topic("fault-out", PARTITIONS);
    let mut input = inputs(0..30_000, 200, now_ms() - 3_600_000);
    broker.produce("fault-in", &mut input);
    let scratch = Scratch::new();
    let text = pipeline(&broker, "fault-in", "fault-out", "fault");
    let config = weir::config::PipelineConfig::parse(&text, scratch.dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let runtime = weir::plugin::Runtime::new().expect("runtime");
    let pipeline = weir::pipeline::Pipeline::prepare(&config, &runtime).unwrap_or_else(|e| panic!("prepare: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let shutdown = CancellationToken::new();
    let run = rt.spawn(pipeline.run(shutdown.clone()));

    let out_total = || broker.end_offsets("fault-out").map_or(0, |e| e.iter().sum::<i64>());
    assert!(
        wait_until(Duration::from_secs(300), || out_total() >= 3_000),
        "no progress before the fault; log:\n{}",
        in_process_log()
    );
    let Backend::Mock(cluster) = &broker.backend else { unreachable!() };
    cluster.broker_down(-1).unwrap();
    // The broker is observably down: a delivery with a short timeout fails.
    let probe: FutureProducer = broker.config().set("message.timeout.ms", "500").create().expect("probe producer");
    let failed = broker.rt.block_on(async {
        let record = FutureRecord::<[u8], [u8]>::to("fault-probe").payload(&b"x"[..]);
        probe.send_result(record).map_err(|(e, _)| e).unwrap().await.unwrap().is_err()
    });
    assert!(failed, "the broker still took a message while down");
    cluster.broker_up(-1).unwrap();

    wait_committed(&broker, "fault", "fault-in", in_process_log, Duration::from_secs(300));
    shutdown.cancel();
    let report = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), run).await })
        .unwrap_or_else(|_| panic!("the run did not end; log:\n{}", in_process_log()))
        .expect("the run did not panic");
    assert!(report.success(), "{report:?}; log:\n{}", in_process_log());
    let output = broker.read_all("fault-out");
    let seen = tally(&input, &output);
    eprintln!(
        "broker down/up: {} inputs, {} outputs ({} duplicates)",
        input.len(),
        output.len(),
        output.len() - seen.len()
    );
    // Still committed to the end after the run's last commit (a look-up the
    // mock broker does not answer in time under load is asked again).
    wait_committed(&broker, "fault", "fault-in", in_process_log, Duration::from_secs(60));
}

#[test]
fn bad_kafka_configuration_is_refused_before_start() {
    let scratch = Scratch::new();
    for (source, needle) in [
        (r#"uri = "kafka://127.0.0.1:1/t?start=yesterday""#, "start `yesterday`"),
        (r#"uri = "kafka://127.0.0.1:1""#, "needs brokers and a topic"),
        ("uri = \"kafka://127.0.0.1:1/t\"\nproperties = { \"enable.auto.commit\" = \"true\" }", "enable.auto.commit"),
        ("uri = \"kafka://127.0.0.1:1/t\"\nproperties = { \"no.such.thing\" = \"1\" }", "no.such.thing"),
        ("uri = \"kafka://127.0.0.1:1/t?group=a\"\ngroup = \"b\"", "given both"),
    ] {
        let text = format!("[[source]]\nname = \"in\"\n{source}\n[[sink]]\nname = \"out\"\nuri = \"null://\"\n");
        let config = weir::config::PipelineConfig::parse(&text, scratch.dir.path()).unwrap();
        let runtime = weir::plugin::Runtime::new().unwrap();
        let err = match weir::pipeline::Pipeline::prepare(&config, &runtime) {
            Ok(_) => panic!("{source}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{source}: {err}");
    }
    let text = "[[source]]\nname = \"in\"\nuri = \"gen://?count=1\"\n[[sink]]\nname = \"out\"\nuri = \"kafka://127.0.0.1:1/a,b\"\n";
    let config = weir::config::PipelineConfig::parse(text, scratch.dir.path()).unwrap();
    let err = weir::pipeline::Pipeline::prepare(&config, &weir::plugin::Runtime::new().unwrap()).err().unwrap();
    assert!(err.to_string().contains("one topic"), "{err}");
}

#[test]
fn relay_with_kafka_on_either_side() {
    let broker = Broker::start();
    broker.create_topic("relay-mid", PARTITIONS);
    let scratch = Scratch::new();
    let lines: Vec<String> = (0..5_000)
        .map(|i| {
            format!(r#"{{"key":"k{}","value":"v{i}","headers":{{"id":"{i}"}},"timestamp_ms":{}}}"#, i % 50, 1_000 + i)
        })
        .collect();
    let input = scratch.write("in.ndjson", &(lines.join("\n") + "\n"));
    let output = scratch.path("out.ndjson");

    // file → Kafka: bounded, so the relay ends by itself.
    let to_kafka = format!("kafka://{}/relay-mid", broker.addr);
    let relay_in = ["relay", "--input", &format!("file://{}", input.display()), "--output", &to_kafka];
    let mut first = LoggedWeir::start(&relay_in, &scratch, "to-kafka");
    let code = first.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{}", first.log());
    let mid = broker.read_all("relay-mid");
    assert_eq!(mid.len(), 5_000);
    for r in &mid {
        assert_eq!(r.partition, java_partition(r.key.as_deref().unwrap(), PARTITIONS));
        assert_eq!(format!("v{}", r.id()).into_bytes(), r.value);
    }

    // Kafka → plugin → file: runs until stopped.
    let from_kafka = format!("kafka://{}/relay-mid?group=relay", broker.addr);
    let plugin = plugin("passthrough");
    let file_out = format!("file://{}", output.display());
    let args = ["relay", "--input", &from_kafka, "--plugin", plugin.to_str().unwrap(), "--output", &file_out];
    let second = LoggedWeir::start(&args, &scratch, "from-kafka");
    wait_committed(&broker, "relay", "relay-mid", || second.log(), Duration::from_secs(300));
    second.stop();
    let mut out: Vec<(String, String, u64)> = scratch
        .json_lines("out.ndjson")
        .iter()
        .map(|v| {
            let id = v["headers"]["id"].as_str().unwrap().parse().unwrap();
            (v["key"].as_str().unwrap().to_string(), v["value"].as_str().unwrap().to_string(), id)
        })
        .collect();
    out.sort_by_key(|(_, _, id)| *id);
    let expected: Vec<(String, String, u64)> =
        (0..5_000).map(|i| (format!("k{}", i % 50), format!("v{i}"), i)).collect();
    assert_eq!(out, expected, "the file must hold every message once");
}

/// `/metrics` while a slow sink holds the group back: per partition, lag =
/// high watermark - committed offset rises above 0 and accounts for what
/// the sink has not written; once everything is committed, lag is exactly
/// 0 on every partition and the committed-offset gauges are the broker's
/// end offsets.
#[test]
fn lag_rises_while_the_sink_is_slow_then_returns_to_zero() {
    let broker = Broker::start();
    broker.create_topic("lag-in", PARTITIONS);
    let mut input = inputs(0..12_000, 60, now_ms());
    broker.produce("lag-in", &mut input);
    let end = broker.end("lag-in");
    let total: i64 = end.iter().sum();
    let admin = free_port();
    let scratch = Scratch::new();
    // At most 100 messages per 100 ms: over ten seconds of backlog.
    let text = format!(
        r#"
        [[source]]
        name = "in"
        uri = "kafka://{addr}/lag-in?group=lag&commit_interval_ms=200"
        batch_size = 100

        [[sink]]
        name = "out"
        uri = "null://?delay_ms=100"
        batch = {{ max_size = 100, max_wait_ms = 0 }}

        [admin]
        listen = "127.0.0.1:{admin}"
        "#,
        addr = broker.addr
    );
    let file = scratch.write("pipeline.toml", &text);
    let weir = LoggedWeir::run(&file, &scratch, "lag");
    let source = [("component", "in"), ("kind", "source")];
    let partition = |p: i32| format!("lag-in/{p}");
    let per_partition = |m: &Metrics, metric: &str| -> Vec<Option<f64>> {
        (0..PARTITIONS)
            .map(|p| m.get(metric, &[("component", "in"), ("kind", "source"), ("partition", &partition(p))]))
            .collect()
    };

    // Behind: every partition has a lag series, and where the group has
    // committed, lag = end - committed (else the position read, or the
    // start of the partition, stands in for the commit).
    let mut behind = None;
    let mut last = String::new();
    let seen = wait_until(Duration::from_secs(120), || {
        let Some(m) = Metrics::try_scrape(admin) else { return false };
        last = m.text.lines().filter(|l| l.contains("weir_source_")).collect::<Vec<_>>().join("\n");
        let complete = per_partition(&m, "weir_source_lag_events").iter().all(Option::is_some);
        let committed = per_partition(&m, "weir_source_committed_offset").iter().any(Option::is_some);
        let ok = complete && committed && m.sum("weir_source_lag_events", &source) > 0.0;
        if ok {
            behind = Some(m);
        }
        ok
    });
    assert!(seen, "no lag on all {PARTITIONS} partitions while the sink was slow:\n{last}\nlog:\n{}", weir.log());
    let m = behind.unwrap();
    assert_eq!(m.all("weir_source_lag_events", &source).len(), PARTITIONS as usize, "{}", m.text);
    let lags: Vec<f64> = per_partition(&m, "weir_source_lag_events").into_iter().map(Option::unwrap).collect();
    let committed = per_partition(&m, "weir_source_committed_offset");
    for p in 0..PARTITIONS as usize {
        match committed[p] {
            Some(c) => assert_eq!(lags[p], end[p] as f64 - c, "partition {p}:\n{}", m.text),
            None => assert!(lags[p] <= end[p] as f64, "partition {p}:\n{}", m.text),
        }
    }
    let written = m.value("weir_component_sent_events_total", &[("component", "out"), ("kind", "sink")]);
    let lag: f64 = lags.iter().sum();
    eprintln!(
        "{}: while the sink was slow: lag {lags:?}, committed {committed:?}, {written} of {total} written",
        broker.name()
    );
    assert!(lag > 0.0 && lag <= total as f64, "lag {lag} of {total}");
    assert!(written < total as f64, "still behind: {written} of {total} written");

    // Caught up: the broker says so, then the gauges say exactly so.
    wait_committed(&broker, "lag", "lag-in", || weir.log(), Duration::from_secs(300));
    let mut last = String::new();
    let caught_up = wait_until(Duration::from_secs(30), || {
        let m = Metrics::scrape(admin);
        let zero = per_partition(&m, "weir_source_lag_events").iter().all(|v| *v == Some(0.0));
        let at_end =
            per_partition(&m, "weir_source_committed_offset").iter().zip(&end).all(|(c, e)| *c == Some(*e as f64));
        last = m.text;
        zero && at_end
    });
    assert!(caught_up, "lag did not return to 0 with the end offsets {end:?} committed:\n{last}");
    weir.stop();
}
