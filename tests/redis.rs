//! The Redis Streams connector against real Redis servers: the machine's own
//! on 127.0.0.1:6379 (unique stream and group names per test, deleted at the
//! end) and, for the restart test, a `redis-server` child on a free port.
//! Every test waits for conditions with deadlines and counts exactly.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Commands, Value};
use support::{
    LoggedWeir, Metrics, Scratch, counts_per_key, free_port, plugin, random_in, redis_server, run_weir, saved_counts,
    text, wait_until,
};

const SHARED: &str = "127.0.0.1:6379";
const LONG: Duration = Duration::from_secs(180);

/// A name no other test (or run) uses.
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("weir-test-{tag}-{}-{nanos}", std::process::id())
}

fn connect(addr: &str) -> redis::Connection {
    redis_server();
    redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("Redis at {addr} (run .ci/run or start redis-server): {e}"))
}

/// Deletes its keys when dropped.
struct Keys {
    addr: String,
    keys: Vec<String>,
}

impl Keys {
    fn new(addr: &str) -> Self {
        Keys { addr: addr.to_string(), keys: Vec::new() }
    }
    fn add(&mut self, tag: &str) -> String {
        let key = unique(tag);
        self.keys.push(key.clone());
        key
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Ok(mut conn) = redis::Client::open(format!("redis://{}/", self.addr)).and_then(|c| c.get_connection()) {
            for key in &self.keys {
                let _: Result<(), _> = conn.del(key);
            }
        }
    }
}

/// One stream entry's fields, in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn as_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        other => panic!("unexpected value {other:?}"),
    }
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Nil => Vec::new(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Every entry of a stream, as (ID, fields), in order.
fn read_stream(conn: &mut redis::Connection, stream: &str) -> Vec<(String, Fields)> {
    let mut out = Vec::new();
    let mut from = "-".to_string();
    loop {
        let page: Value =
            redis::cmd("XRANGE").arg(stream).arg(&from).arg("+").arg("COUNT").arg(10_000).query(conn).unwrap();
        let page = as_array(page);
        if page.is_empty() {
            return out;
        }
        for entry in page {
            let mut parts = as_array(entry).into_iter();
            let id = String::from_utf8(as_bytes(&parts.next().unwrap())).unwrap();
            let flat = as_array(parts.next().unwrap());
            let fields = flat.chunks(2).map(|c| (as_bytes(&c[0]), as_bytes(&c[1]))).collect();
            from = format!("({id}");
            out.push((id, fields));
        }
    }
}

/// Appends entries with pipelined XADD.
fn xadd_all(conn: &mut redis::Connection, stream: &str, entries: &[Fields]) {
    for chunk in entries.chunks(1000) {
        let mut pipe = redis::pipe();
        for fields in chunk {
            let cmd = pipe.cmd("XADD").arg(stream).arg("*");
            for (name, value) in fields {
                cmd.arg(name.as_slice()).arg(value.as_slice());
            }
            cmd.ignore();
        }
        let () = pipe.query(conn).unwrap();
    }
}

/// Entry `i` of a test stream, in weir's field layout.
fn entry(i: u64) -> Fields {
    vec![
        (b"value".to_vec(), format!("value-{i}").into_bytes()),
        (b"key".to_vec(), format!("k{}", i % 13).into_bytes()),
        (b"ts".to_vec(), (1_700_000_000_000 + i).to_string().into_bytes()),
        (b"h:seq".to_vec(), i.to_string().into_bytes()),
    ]
}

fn field<'f>(fields: &'f Fields, name: &str) -> &'f [u8] {
    fields.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| v.as_slice()).unwrap_or_else(|| {
        panic!("field {name} missing in {fields:?}");
    })
}

fn seq_of(fields: &Fields) -> u64 {
    std::str::from_utf8(field(fields, "h:seq")).unwrap().parse().unwrap()
}

/// A group's state, from XINFO GROUPS.
#[derive(Debug, Default)]
struct GroupInfo {
    pending: u64,
    /// Entries delivered to the group so far (Redis 7).
    entries_read: u64,
    last_delivered: String,
    consumers: u64,
}

fn group_info(conn: &mut redis::Connection, stream: &str, group: &str) -> Option<GroupInfo> {
    let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query(conn).ok()?;
    for g in as_array(groups) {
        let flat = as_array(g);
        let map: HashMap<String, Value> =
            flat.chunks(2).map(|c| (String::from_utf8(as_bytes(&c[0])).unwrap(), c[1].clone())).collect();
        if as_bytes(&map["name"]) == group.as_bytes() {
            let num = |k: &str| String::from_utf8(as_bytes(&map[k])).unwrap().parse().unwrap();
            return Some(GroupInfo {
                pending: num("pending"),
                entries_read: match &map["entries-read"] {
                    Value::Nil => 0,
                    read => String::from_utf8(as_bytes(read)).unwrap().parse().unwrap(),
                },
                consumers: num("consumers"),
                last_delivered: String::from_utf8(as_bytes(&map["last-delivered-id"])).unwrap(),
            });
        }
    }
    None
}

fn last_id(conn: &mut redis::Connection, stream: &str) -> String {
    let last: Value = redis::cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(1).query(conn).unwrap();
    let mut entry = as_array(as_array(last).remove(0)).into_iter();
    String::from_utf8(as_bytes(&entry.next().unwrap())).unwrap()
}

/// Whether the group has delivered every entry of `stream` and has nothing
/// pending: the pipeline has acknowledged everything.
fn consumed(conn: &mut redis::Connection, stream: &str, group: &str) -> bool {
    let last = last_id(conn, stream);
    group_info(conn, stream, group).is_some_and(|g| g.pending == 0 && g.last_delivered == last)
}

fn xlen(conn: &mut redis::Connection, stream: &str) -> u64 {
    conn.xlen(stream).unwrap_or(0)
}

/// A pipeline: Redis stream → [plugin] → Redis stream.
fn redis_pipeline(addr: &str, input: &str, group: &str, output: &str, stage: &str, extra_source: &str) -> String {
    format!(
        r#"
        [[source]]
        name = "in"
        uri = "redis://{addr}/{input}"
        group = "{group}"
        {extra_source}

        {stage}

        [[sink]]
        name = "out"
        uri = "redis://{addr}/{output}"
        batch = {{ max_size = 500, max_wait_ms = 5 }}
        "#
    )
}

fn passthrough_stage() -> String {
    format!("[[stage]]\nname = \"pass\"\nplugin = \"{}\"\nconcurrency = 2\n", plugin("passthrough").display())
}

// ------------------------------------------------------------------- tests

/// 100,000 messages: file → (weir relay) → stream → (weir run: passthrough)
/// → second stream; exact content, nothing pending.
#[test]
fn end_to_end_file_to_stream_through_a_plugin_to_stream() {
    const N: u64 = 100_000;
    let scratch = Scratch::new();
    let mut keys = Keys::new(SHARED);
    let (input, output, group) = (keys.add("e2e-in"), keys.add("e2e-out"), unique("e2e-group"));
    let mut lines = String::new();
    for i in 0..N {
        lines += &format!(
            "{{\"key\":\"k{}\",\"value\":\"payload {i} é\",\"headers\":{{\"seq\":\"{i}\"}},\"timestamp_ms\":{}}}\n",
            i % 97,
            1_700_000_000_000 + i
        );
    }
    let file = scratch.write("in.ndjson", &lines);
    let out = run_weir(
        &["relay", "--input", &format!("file://{}", file.display()), "--output", &format!("redis://{SHARED}/{input}")],
        LONG,
    );
    assert!(out.status.success(), "relay file → redis failed: {:?}", text(&out));
    let mut conn = connect(SHARED);
    assert_eq!(xlen(&mut conn, &input), N);

    let pipeline = scratch.write("p.toml", &redis_pipeline(SHARED, &input, &group, &output, &passthrough_stage(), ""));
    let mut weir = LoggedWeir::run(&pipeline, &scratch, "e2e");
    weir.wait_for("all 100,000 acknowledged", || xlen(&mut conn, &output) >= N && consumed(&mut conn, &input, &group));
    weir.stop();

    let written = read_stream(&mut conn, &output);
    assert_eq!(written.len() as u64, N, "exactly one output per input in a clean run");
    let mut seen = vec![false; N as usize];
    for (_, fields) in &written {
        let i = seq_of(fields);
        assert!(!std::mem::replace(&mut seen[i as usize], true), "seq {i} written twice");
        let expected: Fields = vec![
            (b"value".to_vec(), format!("payload {i} é").into_bytes()),
            (b"key".to_vec(), format!("k{}", i % 97).into_bytes()),
            (b"ts".to_vec(), (1_700_000_000_000 + i).to_string().into_bytes()),
            (b"h:seq".to_vec(), i.to_string().into_bytes()),
        ];
        assert_eq!(fields, &expected, "entry {i} changed on the way");
    }
    let info = group_info(&mut conn, &input, &group).unwrap();
    assert_eq!(info.pending, 0, "XPENDING for the group must be 0");
    let summary: Value = redis::cmd("XPENDING").arg(&input).arg(&group).query(&mut conn).unwrap();
    assert_eq!(as_array(summary)[0], Value::Int(0));
}

/// kill -9 mid-run, start again: every message reaches the output at least
/// once (the restarted consumer re-reads its own pending entries).
#[test]
fn crash_and_restart_delivers_everything_at_least_once() {
    const N: u64 = 50_000;
    let scratch = Scratch::new();
    let mut keys = Keys::new(SHARED);
    let (input, output, group) = (keys.add("crash-in"), keys.add("crash-out"), unique("crash-group"));
    let mut conn = connect(SHARED);
    xadd_all(&mut conn, &input, &(0..N).map(entry).collect::<Vec<_>>());
    let stage = format!(
        "[[stage]]\nname = \"slow\"\nplugin = \"{}\"\nconfig = {{ delay_us_max = 40 }}\n",
        plugin("probe").display()
    );
    let pipeline =
        scratch.write("p.toml", &redis_pipeline(SHARED, &input, &group, &output, &stage, "batch_size = 100"));

    let mut first = LoggedWeir::run(&pipeline, &scratch, "crash-1");
    first.wait_for("a first part written", || xlen(&mut conn, &output) >= 5_000);
    first.kill9();
    let before = xlen(&mut conn, &output);
    let pending = group_info(&mut conn, &input, &group).unwrap().pending;
    assert!(before < N, "the run should have been interrupted mid-way ({before} of {N} written)");

    let mut second = LoggedWeir::run(&pipeline, &scratch, "crash-2");
    second.wait_for("everything acknowledged after the restart", || consumed(&mut conn, &input, &group));
    let log = second.log();
    second.stop();

    let written = read_stream(&mut conn, &output);
    let mut count = vec![0u32; N as usize];
    for (_, fields) in &written {
        count[seq_of(fields) as usize] += 1;
    }
    let missing = count.iter().filter(|&&c| c == 0).count();
    assert_eq!(missing, 0, "every message must reach the output at least once");
    let duplicates = written.len() as u64 - N;
    println!(
        "crash test: killed after {before} of {N} written, {pending} entries were pending; \
         after the restart {} written in all: {duplicates} duplicates",
        written.len()
    );
    assert!(duplicates <= pending, "duplicates ({duplicates}) are bounded by what was pending ({pending})");
    assert!(log.contains("left pending by a previous run") || pending == 0, "the restart re-reads its pending entries");
}

/// count-by-key over 100,000 entries, weir killed with SIGKILL at random
/// moments five times and started again: the saved count of every key is
/// exact, not "at least". A checkpoint makes the stage state and the entries
/// it covers durable together, and entries are acknowledged only after it;
/// a restart acknowledges what the last checkpoint covered first.
#[test]
fn keyed_counts_are_exact_after_repeated_kill_9() {
    const N: u64 = 100_000;
    const KEYS: u64 = 13;
    let scratch = Scratch::new();
    let mut keys = Keys::new(SHARED);
    let (input, group) = (keys.add("exact-in"), unique("exact-group"));
    let mut conn = connect(SHARED);
    xadd_all(&mut conn, &input, &(0..N).map(entry).collect::<Vec<_>>());
    let pipeline = scratch.write(
        "p.toml",
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "redis://{SHARED}/{input}"
            group = "{group}"
            batch_size = 200

            [[stage]]
            name = "count"
            plugin = "{plugin}"
            concurrency = 2
            dispatch = "partition"
            partition_by = "key"

            [[sink]]
            name = "out"
            uri = "null://"

            [state]
            checkpoint_interval_ms = 50
            "#,
            plugin = plugin("count-by-key").display()
        ),
    );
    let read = |conn: &mut redis::Connection| group_info(conn, &input, &group).map_or(0, |g| g.entries_read);
    let mut kills = Vec::new();
    for round in 0..5u64 {
        // Each run is killed a little further into the stream, at a random point.
        let target = (round * N / 6 + random_in(N / 12..N / 6)).min(N - 1);
        let mut weir = LoggedWeir::run(&pipeline, &scratch, &format!("exact-{round}"));
        weir.wait_for("the group to read further", || read(&mut conn) >= target);
        weir.kill9();
        kills.push(read(&mut conn));
    }
    let mut last = LoggedWeir::run(&pipeline, &scratch, "exact-last");
    last.wait_for("everything acknowledged", || consumed(&mut conn, &input, &group));
    last.stop();

    let counts = saved_counts(&pipeline, "count");
    let expected = counts_per_key(N, KEYS, "k");
    println!("killed with SIGKILL after the group had read {kills:?} of {N} entries");
    assert_eq!(counts, expected, "every key counted exactly once per entry across five kill -9 restarts");
}

/// A Redis server of the test's own, on a free port.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = OwnRedis { child: None, port, dir: tempfile::tempdir().unwrap() };
        server.spawn();
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let addr = self.addr();
        assert!(
            wait_until(Duration::from_secs(20), || {
                redis::Client::open(format!("redis://{addr}/"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            }),
            "own redis-server did not start"
        );
    }

    /// `SHUTDOWN SAVE`: the data survives in the server's folder.
    fn stop(&mut self) {
        let mut conn = connect(&self.addr());
        let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("SAVE").query(&mut conn);
        let mut child = self.child.take().unwrap();
        assert!(wait_until(Duration::from_secs(20), || child.try_wait().unwrap().is_some()), "redis did not stop");
    }

    /// [`OwnRedis::stop`], then the same server again on the same port.
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Redis goes away mid-run and comes back: source and sink reconnect and the
/// run completes with nothing lost.
#[test]
fn redis_restart_mid_run_loses_nothing() {
    const N: u64 = 20_000;
    let mut server = OwnRedis::start();
    let addr = server.addr();
    let scratch = Scratch::new();
    let (input, output, group) = ("in", "out", "g");
    let mut conn = connect(&addr);
    xadd_all(&mut conn, input, &(0..N / 2).map(entry).collect::<Vec<_>>());
    let stage = format!(
        "[[stage]]\nname = \"slow\"\nplugin = \"{}\"\nconfig = {{ delay_us_max = 100 }}\n",
        plugin("probe").display()
    );
    let pipeline = scratch.write("p.toml", &redis_pipeline(&addr, input, group, output, &stage, "batch_size = 100"));
    let mut weir = LoggedWeir::run(&pipeline, &scratch, "restart");
    weir.wait_for("a first part written", || xlen(&mut conn, output) >= 1_000);
    server.restart();
    let mut conn = connect(&addr);
    xadd_all(&mut conn, input, &(N / 2..N).map(entry).collect::<Vec<_>>());
    weir.wait_for("everything acknowledged after the restart", || consumed(&mut conn, input, group));
    let log = weir.log();
    weir.stop();
    assert!(log.contains("reconnected"), "the source should have reconnected; log:\n{log}");

    let written = read_stream(&mut conn, output);
    let mut count = vec![0u32; N as usize];
    for (_, fields) in &written {
        count[seq_of(fields) as usize] += 1;
    }
    assert_eq!(count.iter().filter(|&&c| c == 0).count(), 0, "nothing lost across the restart");
    println!("redis restart test: {} written for {N} inputs ({} duplicates)", written.len(), written.len() as u64 - N);
    let summary: Value = redis::cmd("XPENDING").arg(input).arg(group).query(&mut conn).unwrap();
    assert_eq!(as_array(summary)[0], Value::Int(0));
}

/// count-by-key with Redis away while batches finish and several
/// checkpoints pass, then weir killed with SIGKILL before any of their
/// `XACK`s got through: the restart acknowledges the entries of every
/// unacknowledged checkpoint, not only the last one, so no key is counted
/// twice.
#[test]
fn keyed_counts_stay_exact_when_acks_fail_across_checkpoints_before_a_kill_9() {
    const N: u64 = 5_000;
    const KEYS: u64 = 13;
    let mut server = OwnRedis::start();
    let addr = server.addr();
    let scratch = Scratch::new();
    let (input, group) = ("in", "g");
    xadd_all(&mut connect(&addr), input, &(0..N).map(entry).collect::<Vec<_>>());
    let admin = free_port();
    // One source batch per stage call and per sink write (13 keys: 13
    // outputs), a write every 100 ms, a checkpoint every 50 ms: a dozen
    // batches in flight finish one by one after Redis went away.
    let pipeline = scratch.write(
        "p.toml",
        &format!(
            r#"
            [[source]]
            name = "in"
            uri = "redis://{addr}/{input}"
            group = "{group}"
            batch_size = 50

            [[stage]]
            name = "count"
            plugin = "{plugin}"
            batch = {{ max_size = 50, max_wait_ms = 0 }}

            [[sink]]
            name = "out"
            uri = "null://?delay_ms=100"
            batch = {{ max_size = 13, max_wait_ms = 0 }}

            [state]
            checkpoint_interval_ms = 50

            [admin]
            listen = "127.0.0.1:{admin}"
            "#,
            plugin = plugin("count-by-key").display()
        ),
    );
    let sink = [("component", "out"), ("kind", "sink")];
    let written = || Metrics::try_scrape(admin).and_then(|m| m.get("weir_component_sent_events_total", &sink));
    let mut weir = LoggedWeir::run(&pipeline, &scratch, "away");
    weir.wait_for("a first part written", || written().is_some_and(|w| w >= 26.0));
    server.stop();
    // Batches in flight keep finishing without Redis, each released by a
    // checkpoint whose XACK fails. The acknowledger retries with all it
    // holds: a failed XACK of more entries than the first shows that
    // several checkpoints wait unacknowledged.
    let failed_xack_sizes = |log: &str| -> std::collections::BTreeSet<u64> {
        log.lines().filter_map(|l| l.split("XACK of ").nth(1)?.split(" entries failed").next()?.parse().ok()).collect()
    };
    let log = weir.log_path().to_owned();
    weir.wait_for("failed XACKs of a growing number of entries", || {
        failed_xack_sizes(&std::fs::read_to_string(&log).unwrap_or_default()).len() >= 2
    });
    weir.kill9();
    server.spawn();

    let mut conn = connect(&addr);
    let mut last = LoggedWeir::run(&pipeline, &scratch, "back");
    last.wait_for("everything acknowledged", || consumed(&mut conn, input, group));
    let log = last.stop();
    assert!(log.contains("the last checkpoint covered but Redis still held pending"), "{log}");
    assert_eq!(saved_counts(&pipeline, "count"), counts_per_key(N, KEYS, "k"), "every key counted exactly");
}

/// Two `weir run` processes in one group share the work.
#[test]
fn two_processes_in_one_group_share_the_work() {
    const N: u64 = 20_000;
    let mut keys = Keys::new(SHARED);
    let (input, group) = (keys.add("scale-in"), unique("scale-group"));
    let outputs = [keys.add("scale-out-a"), keys.add("scale-out-b")];
    let mut conn = connect(SHARED);
    // Both consumers exist before anything is written.
    let () =
        redis::cmd("XGROUP").arg("CREATE").arg(&input).arg(&group).arg("$").arg("MKSTREAM").query(&mut conn).unwrap();
    let scratches = [Scratch::new(), Scratch::new()];
    let mut runs: Vec<LoggedWeir> = (0..2)
        .map(|i| {
            // Two pipeline files at two paths: two default consumer names.
            let text = redis_pipeline(SHARED, &input, &group, &outputs[i], &passthrough_stage(), "batch_size = 50");
            let file = scratches[i].write("p.toml", &text);
            LoggedWeir::run(&file, &scratches[i], "scale")
        })
        .collect();
    runs[0]
        .wait_for("both consumers joined", || group_info(&mut conn, &input, &group).is_some_and(|g| g.consumers == 2));
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        xadd_all(&mut conn, &input, &chunk.iter().map(|&i| entry(i)).collect::<Vec<_>>());
    }
    runs[0].wait_for("everything acknowledged", || consumed(&mut conn, &input, &group));
    for run in runs {
        run.stop();
    }
    let mut count = vec![0u32; N as usize];
    let mut shares = Vec::new();
    for output in &outputs {
        let written = read_stream(&mut conn, output);
        shares.push(written.len());
        for (_, fields) in &written {
            count[seq_of(fields) as usize] += 1;
        }
    }
    println!("scale-out test: shares {shares:?} of {N}");
    assert!(count.iter().all(|&c| c == 1), "the union covers every input exactly once");
    assert!(shares.iter().all(|&s| s > 0), "each process processed a share: {shares:?}");
    assert_eq!(shares.iter().sum::<usize>() as u64, N);
}

/// Keys, values and headers that are not UTF-8 survive Redis → weir → Redis
/// byte for byte, and so do duplicate headers, empty values and timestamps.
#[test]
fn binary_keys_values_and_headers_round_trip() {
    let mut keys = Keys::new(SHARED);
    let (input, output, group) = (keys.add("bin-in"), keys.add("bin-out"), unique("bin-group"));
    let entries: Vec<Fields> = vec![
        vec![
            (b"value".to_vec(), vec![0xff, 0x00, 0xfe, b'\n', 0x80]),
            (b"key".to_vec(), vec![0xc3, 0x28, 0x00]),
            (b"ts".to_vec(), b"1700000000123".to_vec()),
            (b"h:bin".to_vec(), vec![0xf0, 0x90, 0x00, 0xff]),
            (b"h:bin".to_vec(), vec![]),
            ("h:naïve ✓".as_bytes().to_vec(), vec![0x01, 0x02]),
        ],
        vec![(b"value".to_vec(), vec![])],
        vec![(b"value".to_vec(), (0..=255u8).collect()), (b"key".to_vec(), vec![])],
    ];
    let mut conn = connect(SHARED);
    xadd_all(&mut conn, &input, &entries);
    let scratch = Scratch::new();
    let pipeline = scratch.write("p.toml", &redis_pipeline(SHARED, &input, &group, &output, &passthrough_stage(), ""));
    let mut weir = LoggedWeir::run(&pipeline, &scratch, "bin");
    weir.wait_for("all written", || xlen(&mut conn, &output) >= 3 && consumed(&mut conn, &input, &group));
    weir.stop();
    let written: Vec<Fields> = read_stream(&mut conn, &output).into_iter().map(|(_, f)| f).collect();
    assert_eq!(written, entries, "fields must round-trip byte for byte, in order");
}

/// Entries another consumer read and never acknowledged are claimed after
/// `claim_idle_ms` and processed.
#[test]
fn entries_left_by_a_dead_consumer_are_claimed() {
    const N: u64 = 300;
    let mut keys = Keys::new(SHARED);
    let (input, output, group) = (keys.add("claim-in"), keys.add("claim-out"), unique("claim-group"));
    let mut conn = connect(SHARED);
    let () =
        redis::cmd("XGROUP").arg("CREATE").arg(&input).arg(&group).arg("0").arg("MKSTREAM").query(&mut conn).unwrap();
    xadd_all(&mut conn, &input, &(0..N).map(entry).collect::<Vec<_>>());
    // A consumer that reads everything and dies.
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("dead")
        .arg("STREAMS")
        .arg(&input)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert_eq!(group_info(&mut conn, &input, &group).unwrap().pending, N);
    let scratch = Scratch::new();
    let text = redis_pipeline(SHARED, &input, &group, &output, "", "claim_idle_ms = 200");
    let pipeline = scratch.write("p.toml", &text);
    let mut weir = LoggedWeir::run(&pipeline, &scratch, "claim");
    weir.wait_for("the dead consumer's entries processed", || {
        xlen(&mut conn, &output) >= N && consumed(&mut conn, &input, &group)
    });
    let log = weir.log();
    weir.stop();
    assert!(log.contains("claimed"), "log:\n{log}");
    let written = read_stream(&mut conn, &output);
    let mut seqs: Vec<u64> = written.iter().map(|(_, f)| seq_of(f)).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
}

/// `/metrics` while a slow sink holds the group back: the stream's lag
/// (entries not yet delivered to the group) and pending count (delivered,
/// not yet acknowledged) rise above 0 and account for what the sink has not
/// written; once it caught up both are exactly 0, and so is the sink's
/// channel.
#[test]
fn lag_and_pending_rise_while_the_sink_is_slow_then_return_to_zero() {
    const N: u64 = 3_000;
    let scratch = Scratch::new();
    let mut keys = Keys::new(SHARED);
    let (input, group) = (keys.add("lag-in"), unique("lag-group"));
    let mut conn = connect(SHARED);
    xadd_all(&mut conn, &input, &(0..N).map(entry).collect::<Vec<_>>());
    let admin = free_port();
    // 50 entries per 100 ms: about six seconds of backlog.
    let text = format!(
        r#"
        [[source]]
        name = "in"
        uri = "redis://{SHARED}/{input}"
        group = "{group}"
        batch_size = 50

        [[sink]]
        name = "out"
        uri = "null://?delay_ms=100"
        batch = {{ max_size = 50, max_wait_ms = 0 }}

        [admin]
        listen = "127.0.0.1:{admin}"
        "#
    );
    let pipeline = scratch.write("p.toml", &text);
    let mut weir = LoggedWeir::run(&pipeline, &scratch, "lag");
    let source = [("component", "in"), ("kind", "source"), ("partition", input.as_str())];
    let sink = [("component", "out"), ("kind", "sink")];

    // While the sink is slow: entries wait undelivered and in flight, and
    // batches queue in front of the sink. A scrape right after the start
    // can see the first batch taken by the sink and none queued yet, so the
    // wait asks for all three at once.
    let mut slow = None;
    weir.wait_for("lag, pending and the sink's channel above 0", || {
        let m = Metrics::try_scrape(admin);
        let seen = m.as_ref().is_some_and(|m| {
            m.get("weir_source_lag_events", &source).is_some_and(|v| v > 0.0)
                && m.get("weir_source_pending_events", &source).is_some_and(|v| v > 0.0)
                && m.get("weir_component_buffered_batches", &sink).is_some_and(|v| v > 0.0)
        });
        if seen {
            slow = m;
        }
        seen
    });
    let m = slow.unwrap();
    let (lag, pending) = (m.value("weir_source_lag_events", &source), m.value("weir_source_pending_events", &source));
    let written = m.value("weir_component_sent_events_total", &sink);
    eprintln!("while the sink was slow: lag {lag}, pending {pending}, {written} of {N} written");
    // lag + pending = N - acknowledged at the poll, and nothing is
    // acknowledged before it is written (by this scrape).
    assert!(lag + pending <= N as f64 && lag + pending >= N as f64 - written, "{lag} + {pending}, {written} written");
    assert!(written < N as f64, "still behind: {written}");
    // The dashboard's lag panel queries series a Redis source serves.
    for name in support::dashboard_series().iter().filter(|name| name.starts_with("weir_source_")) {
        assert!(m.serves(name), "{name}:\n{}", m.text);
    }

    // Caught up: Redis says so, then the gauges say exactly 0.
    weir.wait_for("every entry acknowledged", || consumed(&mut conn, &input, &group));
    let mut last = String::new();
    let zero = wait_until(Duration::from_secs(30), || {
        let m = Metrics::scrape(admin);
        let zero = m.value("weir_source_lag_events", &source) == 0.0
            && m.value("weir_source_pending_events", &source) == 0.0
            && m.value("weir_component_buffered_batches", &sink) == 0.0;
        last = m.text;
        zero
    });
    assert!(zero, "the gauges did not return to 0:\n{last}");
    weir.stop();
}

/// `weir relay`: file → Redis, then Redis → stdout.
#[test]
fn relay_file_to_redis_and_redis_to_stdout() {
    const N: u64 = 1_000;
    let scratch = Scratch::new();
    let mut keys = Keys::new(SHARED);
    let (stream, group) = (keys.add("relay"), unique("relay-group"));
    let lines: String = (0..N).map(|i| format!("line {i}\n")).collect();
    let file = scratch.write("in.txt", &lines);
    let out = run_weir(
        &[
            "relay",
            "--input",
            &format!("file://{}", file.display()),
            "--output",
            &format!("redis://{SHARED}/{stream}?maxlen=100000"),
            "--format",
            "raw",
        ],
        LONG,
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let mut conn = connect(SHARED);
    let stored: Vec<Vec<u8>> =
        read_stream(&mut conn, &stream).iter().map(|(_, f)| field(f, "value").to_vec()).collect();
    assert_eq!(stored, (0..N).map(|i| format!("line {i}").into_bytes()).collect::<Vec<_>>());

    let input = format!("redis://{SHARED}/{stream}?group={group}");
    let mut relay = LoggedWeir::start(
        &["relay", "--input", &input, "--output", "stdio://", "--plugin", plugin("passthrough").to_str().unwrap()],
        &scratch,
        "relay",
    );
    relay.wait_for("everything relayed", || consumed(&mut conn, &stream, &group));
    relay.stop();
    let values: Vec<String> = scratch
        .lines("relay.out")
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .map(|v| v["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, (0..N).map(|i| format!("line {i}")).collect::<Vec<_>>());
}

/// Bad URIs and keys are refused before anything starts (exit 2), naming
/// the problem.
#[test]
fn bad_redis_configuration_is_refused() {
    let scratch = Scratch::new();
    let cases: BTreeMap<&str, (&str, &str)> = BTreeMap::from([
        ("no-stream", ("uri = \"redis://127.0.0.1:6379\"", "needs a stream name")),
        ("unknown-param", ("uri = \"redis://127.0.0.1:6379/s?grop=x\"", "unknown query parameter `grop`")),
        ("bad-start", ("uri = \"redis://127.0.0.1:6379/s?start=yesterday\"", "start `yesterday`")),
        ("twice", ("uri = \"redis://127.0.0.1:6379/s?group=a\"\ngroup = \"b\"", "`group` is given both")),
        ("group-on-stdio", ("uri = \"stdio://\"\ngroup = \"g\"", "key `group` does not apply")),
        ("claim-on-gen", ("uri = \"gen://?count=1\"\nclaim_idle_ms = 5", "key `claim_idle_ms` does not apply")),
    ]);
    for (name, (source, expected)) in cases {
        let file = scratch.write(
            &format!("{name}.toml"),
            &format!("[[source]]\nname = \"in\"\n{source}\n[[sink]]\nname = \"out\"\nuri = \"null://\"\n"),
        );
        let out = run_weir(&["run", file.to_str().unwrap()], Duration::from_secs(60));
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: expected `{expected}` in: {stderr}");
    }
    let out = run_weir(&["relay", "--input", "gen://?count=1", "--output", "redis://h:1/a,b"], Duration::from_secs(60));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("writes one stream"), "{stderr}");
}
