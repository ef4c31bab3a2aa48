//! `redis://`: Redis Streams, read through a consumer group and written with
//! pipelined `XADD`.
//!
//! # Source
//!
//! `redis://[user:password@]host[:port]/stream[,stream2...]?group=G&consumer=C&start=earliest|latest|ID`
//!
//! | parameter / key  | default | meaning |
//! |------------------|---------|---------|
//! | `group`          | `weir-SOURCE` | consumer group (`SOURCE` = the source's name, as for Kafka); created (`XGROUP CREATE ... MKSTREAM`) when missing, reused when it exists |
//! | `consumer`       | see below | consumer name within the group |
//! | `start`          | `earliest` | where a *new* group starts: `earliest` (`0`), `latest` (`$`) or an entry ID (`1700000000000-0`, or a bare millisecond timestamp). An existing group keeps its position. |
//! | `claim_idle_ms`  | `30000` | entries left pending by another consumer for longer than this are taken over with `XAUTOCLAIM` (0 = never) |
//! | `block_ms`       | `500`   | how long one `XREADGROUP` waits for new entries (also the longest a shutdown waits for a read) |
//! | `db`             | `0`     | database number |
//!
//! `group`, `consumer`, `start` and `claim_idle_ms` may also be given as keys
//! of the `[[source]]` (not both ways at once); `batch_size` is the `COUNT` of
//! every read.
//!
//! On start the source first re-reads its own pending entries (`XREADGROUP
//! ... 0`: what a previous run of the same consumer read but did not
//! acknowledge), then reads new entries (`>`), and every `claim_idle_ms / 2`
//! sweeps the group with `XAUTOCLAIM` for entries a dead consumer left
//! behind. An entry is acknowledged (`XACK`, one call per stream for every
//! batch of released entries) only once every output derived from it has been
//! written, dead-lettered or filtered. Delivery is at-least-once: a crash
//! repeats at most what was in flight.
//!
//! **Consumer name.** The default is `HOST-SOURCE-HASH`: the machine's host
//! name, the source's name and 8 hex digits of a hash of the pipeline file's
//! canonical path (for `weir relay`, of the working folder and the input URI).
//! It is *stable*: the same pipeline restarted on the same host comes back as
//! the same consumer and so re-reads and finishes its own pending entries at
//! once. `host + pid` would be unique but not stable: every restart would be a
//! new consumer, the old one's pending entries would wait for `claim_idle_ms`
//! before anyone took them over, and the group would fill with dead
//! consumers. In containers the host name is the pod/container name (stable
//! for StatefulSets). Several processes on one host running the *same* file in
//! one group must each be given their own `consumer` (or they would re-read
//! each other's pending entries).
//!
//! # Sink
//!
//! `redis://[user:password@]host[:port]/stream?maxlen=N&db=D`: one pipelined
//! round trip of `XADD` per batch; `maxlen` (also the `[[sink]]` key) trims
//! the stream approximately (`MAXLEN ~ N`). A batch is accepted only when
//! every `XADD` succeeded; otherwise the write fails and the engine retries it
//! (entries of a partly written batch may then appear twice).
//!
//! # Field layout (both directions, all values raw bytes)
//!
//! | field      | message part |
//! |------------|--------------|
//! | `value`    | the value (always written) |
//! | `key`      | the key, when there is one |
//! | `ts`       | the timestamp, decimal milliseconds, when there is one |
//! | `h:NAME`   | header `NAME`, one field per header, in order |
//!
//! The source maps these back exactly, so weir → Redis → weir round-trips key,
//! value, headers (with duplicates and order) and timestamp, binary-safe.
//! Entries written by other producers: a missing `value` is an empty value;
//! any other field `F` becomes header `F` (as does a `ts` that is not a
//! number); an entry with a field name that is not UTF-8 is dead-lettered.
//! The origin of a message is the stream name and the entry ID.
//!
//! # Reconnecting
//!
//! When Redis goes away the source and the sink retry with backoff (100 ms
//! doubling to 5 s) and carry on when it returns; the source re-creates its
//! group if the server lost it. Acknowledgements that failed are kept and
//! sent again.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, RedisError, Value};
use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Params, Sink, Source, SourceContext};
use crate::config::{PipelineConfig, SinkConfig, SourceConfig, ranges};
use crate::message::{Header, Message, Origin};
use crate::pipeline::ack::{AckTracker, Released};

/// Default idle time after which another consumer's pending entries are claimed.
pub const DEFAULT_CLAIM_IDLE_MS: u64 = 30_000;
/// Default `BLOCK` of a read.
pub const DEFAULT_BLOCK_MS: u64 = 500;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the source keeps retrying its last acknowledgements at shutdown.
const FINAL_ACK_PATIENCE: Duration = Duration::from_secs(10);

/// Where a Redis server is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `[user:password@]host:port` as written (still percent-encoded).
    authority: String,
    host: String,
    port: u16,
    db: i64,
}

impl Endpoint {
    /// `user:password@host:port` and the `db` parameter.
    fn parse(authority: &str, params: &mut Params) -> Result<Self, String> {
        if authority.is_empty() {
            return Err("redis:// needs a host, e.g. redis://127.0.0.1:6379/events".into());
        }
        let url = ::url::Url::parse(&format!("redis://{authority}"))
            .map_err(|e| format!("`{authority}` is not a valid [user:password@]host[:port]: {e}"))?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("redis:// needs a host")?.to_string();
        let db = params.take_in_range("db", &ranges::REDIS_DB)?.unwrap_or(0);
        Ok(Endpoint { authority: authority.to_string(), host, port: url.port().unwrap_or(6379), db })
    }

    fn client(&self) -> Result<Client> {
        Client::open(format!("redis://{}/{}", self.authority, self.db))
            .with_context(|| format!("redis://{}", self.display()))
    }

    fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

async fn connect(client: &Client, response_timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Splits `host:port/path?query` into the endpoint and the decoded path.
fn split(rest: &str) -> Result<(Endpoint, String, Params), String> {
    let mut params = Params::parse(rest, "redis")?;
    let (authority, path) =
        params.path.split_once('/').map(|(a, p)| (a.to_string(), p.to_string())).ok_or_else(|| {
            format!("redis:// needs a stream name after the host, e.g. redis://127.0.0.1:6379/events (got `{rest}`)")
        })?;
    let endpoint = Endpoint::parse(&authority, &mut params)?;
    Ok((endpoint, percent_decode(&path), params))
}

/// Percent-decodes a path (stream names may be escaped).
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The beginning of the stream (`0`).
    Earliest,
    /// Only entries added from now on (`$`).
    Latest,
    /// After this entry ID.
    Id(String),
}

impl Start {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            id => {
                let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
                if ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok() {
                    Ok(Start::Id(format!("{ms}-{seq}")))
                } else {
                    Err(format!(
                        "start `{text}` is not `earliest`, `latest` or a stream entry ID (e.g. 1700000000000-0)"
                    ))
                }
            }
        }
    }

    fn as_id(&self) -> &str {
        match self {
            Start::Earliest => "0",
            Start::Latest => "$",
            Start::Id(id) => id,
        }
    }
}

/// A parsed `redis://` source.
#[derive(Debug, Clone)]
pub struct RedisSourceSpec {
    endpoint: Endpoint,
    /// Streams read.
    pub streams: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Consumer name.
    pub consumer: String,
    /// Where a new group starts.
    pub start: Start,
    /// Entries per read.
    pub batch: usize,
    /// Idle time before claiming others' pending entries; `None` = never.
    pub claim_idle: Option<Duration>,
    /// `BLOCK` of a read.
    pub block: Duration,
}

/// A query parameter or the same key of the `[[source]]`, not both.
fn either(params: &mut Params, key: &str, from_config: Option<String>) -> Result<Option<String>, String> {
    match (params.take(key), from_config) {
        (Some(_), Some(_)) => Err(format!("`{key}` is given both as a query parameter and as a key; keep one")),
        (a, b) => Ok(a.or(b)),
    }
}

impl RedisSourceSpec {
    pub(crate) fn parse(
        rest: &str,
        source: &SourceConfig,
        batch: usize,
        pipeline: &PipelineConfig,
    ) -> Result<Self, String> {
        let (endpoint, path, mut params) = split(rest)?;
        let mut streams = Vec::new();
        for stream in path.split(',') {
            if stream.is_empty() {
                return Err(format!("empty stream name in `{path}` (expected stream[,stream2...])"));
            }
            if streams.iter().any(|s| s == stream) {
                return Err(format!("stream `{stream}` is listed twice"));
            }
            streams.push(stream.to_string());
        }
        let group =
            either(&mut params, "group", source.group.clone())?.unwrap_or_else(|| format!("weir-{}", source.name));
        if group.is_empty() {
            return Err("`group` must not be empty".into());
        }
        let consumer = match either(&mut params, "consumer", source.consumer.clone())? {
            Some(c) if c.is_empty() => return Err("`consumer` must not be empty".into()),
            Some(c) => c,
            None => default_consumer(&source.name, source.uri.get_ref(), pipeline),
        };
        let start = match either(&mut params, "start", source.start.clone())? {
            Some(s) => Start::parse(&s)?,
            None => Start::Earliest,
        };
        let claim_idle_ms = match either(&mut params, "claim_idle_ms", source.claim_idle_ms.map(|n| n.to_string()))? {
            None => DEFAULT_CLAIM_IDLE_MS,
            Some(raw) => {
                let ms = raw.parse().map_err(|e| format!("`claim_idle_ms={raw}`: {e}"))?;
                ranges::check("claim_idle_ms", ms, &ranges::CLAIM_IDLE_MS)?
            }
        };
        // 0 would block forever.
        let block_ms: u64 = params.take_in_range("block_ms", &ranges::BLOCK_MS)?.unwrap_or(DEFAULT_BLOCK_MS);
        params.finish()?;
        Ok(RedisSourceSpec {
            endpoint,
            streams,
            group,
            consumer,
            start,
            batch,
            claim_idle: (claim_idle_ms > 0).then(|| Duration::from_millis(claim_idle_ms)),
            block: Duration::from_millis(block_ms),
        })
    }
}

/// The machine's host name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// `HOST-SOURCE-HASH` (see the module documentation).
fn default_consumer(source: &str, uri: &str, pipeline: &PipelineConfig) -> String {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let identity = match &pipeline.file {
        Some(file) => canonical(file).display().to_string(),
        // No file (`weir relay`): the working folder and the input URI.
        None => format!("{}\0{}", canonical(&pipeline.base_dir).display(), uri.split('?').next().unwrap_or(uri)),
    };
    let hash = blake3::hash(format!("{identity}\0{source}").as_bytes()).to_hex();
    format!("{}-{source}-{}", hostname(), &hash[..8])
}

/// A parsed `redis://` sink.
#[derive(Debug, Clone)]
pub struct RedisSinkSpec {
    endpoint: Endpoint,
    /// The stream written.
    pub stream: String,
    /// Approximate length cap (`MAXLEN ~`).
    pub maxlen: Option<u64>,
}

impl RedisSinkSpec {
    pub(crate) fn parse(rest: &str) -> Result<Self, String> {
        let (endpoint, stream, mut params) = split(rest)?;
        if stream.is_empty() || stream.contains(',') {
            return Err(format!("a redis:// sink writes one stream, e.g. redis://127.0.0.1:6379/out (got `{stream}`)"));
        }
        let maxlen = params.take_in_range("maxlen", &ranges::MAXLEN)?;
        params.finish()?;
        Ok(RedisSinkSpec { endpoint, stream, maxlen })
    }

    /// Applies the `[[sink]]` keys that concern Redis.
    pub(crate) fn apply(&mut self, sink: &SinkConfig) -> Result<(), String> {
        if let Some(maxlen) = sink.maxlen {
            if self.maxlen.is_some() {
                return Err("`maxlen` is given both as a query parameter and as a key; keep one".into());
            }
            self.maxlen = Some(maxlen);
        }
        if !sink.properties.is_empty() {
            return Err("key `properties` does not apply to a redis:// sink".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- encoding

/// Field names of the layout.
const F_VALUE: &[u8] = b"value";
const F_KEY: &[u8] = b"key";
const F_TS: &[u8] = b"ts";
const F_HEADER: &[u8] = b"h:";

/// Appends `message`'s fields to an `XADD` command.
fn encode(cmd: &mut Cmd, message: &Message) {
    cmd.arg(F_VALUE).arg(&message.value);
    if let Some(key) = &message.key {
        cmd.arg(F_KEY).arg(key);
    }
    if let Some(ts) = message.timestamp_ms {
        cmd.arg(F_TS).arg(ts.to_string());
    }
    for header in &message.headers {
        let mut name = Vec::with_capacity(F_HEADER.len() + header.name.len());
        name.extend_from_slice(F_HEADER);
        name.extend_from_slice(header.name.as_bytes());
        cmd.arg(name).arg(&header.value);
    }
}

/// Builds a message from an entry's fields.
fn decode(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Message, String> {
    let mut message = Message::from_value(Vec::new());
    for (name, value) in fields {
        if name == F_VALUE {
            message.value = value;
        } else if name == F_KEY {
            message.key = Some(value);
        } else if let Some(ts) = (name == F_TS).then(|| std::str::from_utf8(&value).ok()?.parse::<u64>().ok()).flatten()
        {
            message.timestamp_ms = Some(ts);
        } else {
            let header = name.strip_prefix(F_HEADER).unwrap_or(&name);
            let header = String::from_utf8(header.to_vec())
                .map_err(|_| format!("field name {:?} is not UTF-8", String::from_utf8_lossy(&name)))?;
            message.headers.push(Header { name: header, value });
        }
    }
    Ok(message)
}

/// One stream entry; `fields` is `None` when it was deleted while pending.
struct Entry {
    id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

fn bytes(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(anyhow!("unexpected reply element {other:?}")),
    }
}

fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(anyhow!("expected an array, got {other:?}")),
    }
}

fn entries(value: Value) -> Result<Vec<Entry>> {
    array(value)?
        .into_iter()
        .map(|entry| {
            let mut parts = array(entry)?.into_iter();
            let id = String::from_utf8(bytes(parts.next().ok_or_else(|| anyhow!("entry without an ID"))?)?)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(list) => {
                    let mut flat = array(list)?.into_iter();
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        fields.push((bytes(name)?, bytes(value)?));
                    }
                    Some(fields)
                }
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// An `XREADGROUP` reply: entries per stream name.
fn read_reply(value: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        other => array(other)?
            .into_iter()
            .map(|item| {
                let mut parts = array(item)?.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(name), Some(list)) => Ok((name, list)),
                    _ => Err(anyhow!("malformed XREADGROUP reply")),
                }
            })
            .collect::<Result<_>>()?,
    };
    pairs.into_iter().map(|(name, list)| Ok((String::from_utf8(bytes(name)?)?, entries(list)?))).collect()
}

// ------------------------------------------------------------------ source

/// Reads streams through a consumer group.
pub struct RedisSource {
    spec: RedisSourceSpec,
}

impl RedisSource {
    /// A source for `spec`.
    pub fn new(spec: RedisSourceSpec) -> Self {
        RedisSource { spec }
    }
}

/// Entry IDs handed to the pipeline and not yet acknowledged, per stream, so
/// that a claim sweep never takes an entry this process is still working on.
type InFlight = Arc<Mutex<Vec<HashSet<String>>>>;

/// Exponential backoff that gives up when the source must stop.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(FIRST_BACKOFF)
    }
    fn reset(&mut self) {
        self.0 = FIRST_BACKOFF;
    }
    /// Sleeps; `false` if `stop` fired meanwhile.
    async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.cancelled() => false,
        }
    }
}

/// Errors a retry cannot fix: the source gives up on them.
fn fatal(e: &RedisError) -> bool {
    matches!(e.code(), Some("WRONGTYPE" | "NOAUTH" | "WRONGPASS" | "NOPERM" | "ERR"))
}

/// What the read loop does next.
enum Phase {
    /// Re-reading this consumer's own pending entries, from these IDs
    /// (`None` once a stream's are all read).
    Pending(Vec<Option<String>>),
    /// Reading new entries.
    New,
}

#[async_trait]
impl Source for RedisSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let spec = Arc::new(self.spec);
        let client = spec.endpoint.client()?;
        let (tracker, released) = ctx.tracker::<Vec<String>>();
        let in_flight: InFlight = Arc::new(Mutex::new(vec![HashSet::new(); spec.streams.len()]));
        let finish = CancellationToken::new();
        let acker = tokio::spawn(acknowledge(
            client.clone(),
            spec.clone(),
            released,
            in_flight.clone(),
            finish.clone(),
            ctx.name().to_string(),
        ));
        tracing::info!(
            source = ctx.name(),
            "reading {} on {} as consumer `{}` of group `{}`",
            spec.streams.join(","),
            spec.endpoint.display(),
            spec.consumer,
            spec.group
        );
        let result =
            Reader { spec: &spec, client: &client, ctx: &ctx, tracker: &tracker, in_flight: &in_flight }.run().await;
        // Reading stopped: wait for what is in flight, then let the
        // acknowledger send the last XACKs and stop.
        tracker.wait_idle().await;
        finish.cancel();
        acker.await.context("the acknowledger task failed")?;
        result
    }
}

struct Reader<'a> {
    spec: &'a RedisSourceSpec,
    client: &'a Client,
    ctx: &'a SourceContext,
    tracker: &'a AckTracker<Vec<String>>,
    in_flight: &'a InFlight,
}

impl Reader<'_> {
    async fn run(&self) -> Result<()> {
        let spec = self.spec;
        let stop = self.ctx.shutdown().clone();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::new();
        let mut phase = Phase::Pending(vec![Some("0".to_string()); spec.streams.len()]);
        // The first claim sweep right after the pending entries.
        let mut next_sweep = Instant::now();
        let mut sweep: Option<Vec<Option<String>>> = None;
        let mut first_connect = true;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let mut c = match conn.clone() {
                Some(c) => c,
                None => match self.setup().await {
                    Ok(c) => {
                        if !first_connect {
                            tracing::info!(source = self.ctx.name(), "reconnected to {}", spec.endpoint.display());
                        }
                        first_connect = false;
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) if fatal(&e) => {
                        return Err(anyhow!("{}: {e}", spec.endpoint.display()));
                    }
                    Err(e) => {
                        tracing::warn!(
                            source = self.ctx.name(),
                            "cannot reach Redis at {}, retrying: {e}",
                            spec.endpoint.display()
                        );
                        if !backoff.sleep(&stop).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            // One step: a page of own pending entries, a page of a claim
            // sweep, or a blocking read of new entries.
            let step = async {
                match &mut phase {
                    Phase::Pending(cursors) => {
                        let got = self.read_pending(&mut c, cursors).await?;
                        if cursors.iter().all(Option::is_none) {
                            phase = Phase::New;
                        }
                        Ok::<_, RedisError>(got)
                    }
                    Phase::New => {
                        if let Some(idle) = spec.claim_idle {
                            if sweep.is_none() && Instant::now() >= next_sweep {
                                sweep = Some(vec![Some("0-0".to_string()); spec.streams.len()]);
                            }
                            if let Some(cursors) = sweep.as_mut() {
                                let got = self.claim(&mut c, cursors, idle).await?;
                                if cursors.iter().all(Option::is_none) {
                                    sweep = None;
                                    next_sweep = Instant::now()
                                        + (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
                                }
                                if !got.is_empty() {
                                    return Ok(got);
                                }
                            }
                        }
                        self.read_new(&mut c).await
                    }
                }
            };
            // Not abandoned on shutdown: a read lasts at most `block`, and
            // what it returned is then processed rather than left pending.
            let result = step.await;
            match result {
                Ok(batches) => {
                    backoff.reset();
                    for (index, entries) in batches {
                        if !self.emit(index, entries).await {
                            return Ok(());
                        }
                    }
                }
                Err(e) if fatal(&e) && !is_nogroup(&e) => {
                    return Err(anyhow!("{}: {e}", spec.endpoint.display()));
                }
                Err(e) => {
                    tracing::warn!(source = self.ctx.name(), "Redis read failed, reconnecting: {e}");
                    conn = None;
                    if !backoff.sleep(&stop).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Connects and makes sure every stream has the group.
    async fn setup(&self) -> Result<MultiplexedConnection, RedisError> {
        let spec = self.spec;
        let mut conn = connect(self.client, spec.block + Duration::from_secs(10)).await?;
        for stream in &spec.streams {
            let created: Result<Value, RedisError> = ::redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&spec.group)
                .arg(spec.start.as_id())
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => tracing::info!(
                    source = self.ctx.name(),
                    "created consumer group `{}` on stream `{stream}` at {}",
                    spec.group,
                    spec.start.as_id()
                ),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(conn)
    }

    /// A page of this consumer's own pending entries, from `cursors`.
    async fn read_pending(
        &self,
        conn: &mut MultiplexedConnection,
        cursors: &mut [Option<String>],
    ) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        let spec = self.spec;
        let wanted: Vec<usize> = (0..cursors.len()).filter(|&i| cursors[i].is_some()).collect();
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&spec.group).arg(&spec.consumer).arg("COUNT").arg(spec.batch).arg("STREAMS");
        for &i in &wanted {
            cmd.arg(&spec.streams[i]);
        }
        for &i in &wanted {
            cmd.arg(cursors[i].as_deref().unwrap_or("0"));
        }
        let reply: Value = cmd.query_async(conn).await?;
        let mut got = self.by_stream(reply)?;
        for &i in &wanted {
            match got.iter().find(|(index, _)| *index == i).and_then(|(_, e)| e.last()) {
                Some(last) => cursors[i] = Some(last.id.clone()),
                None => cursors[i] = None,
            }
        }
        got.retain(|(_, e)| !e.is_empty());
        let n: usize = got.iter().map(|(_, e)| e.len()).sum();
        if n > 0 {
            tracing::info!(source = self.ctx.name(), "re-reading {n} entries left pending by a previous run");
        }
        Ok(got)
    }

    /// A page of a claim sweep: entries idle longer than `idle`.
    async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        cursors: &mut [Option<String>],
        idle: Duration,
    ) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        let spec = self.spec;
        let mut got = Vec::new();
        for (i, cursor) in cursors.iter_mut().enumerate() {
            let Some(from) = cursor.clone() else { continue };
            let reply: Value = ::redis::cmd("XAUTOCLAIM")
                .arg(&spec.streams[i])
                .arg(&spec.group)
                .arg(&spec.consumer)
                .arg(idle.as_millis() as u64)
                .arg(&from)
                .arg("COUNT")
                .arg(spec.batch)
                .query_async(conn)
                .await?;
            let mut parts = array(reply).map_err(protocol)?.into_iter();
            let next = parts.next().map(bytes).transpose().map_err(protocol)?.unwrap_or_default();
            let next = String::from_utf8_lossy(&next).into_owned();
            *cursor = (next != "0-0" && !next.is_empty()).then_some(next);
            let claimed = entries(parts.next().unwrap_or(Value::Nil)).map_err(protocol)?;
            // Entries this process is still working on stay with it.
            let claimed: Vec<Entry> = {
                let in_flight = self.in_flight.lock();
                claimed.into_iter().filter(|e| !in_flight[i].contains(&e.id)).collect()
            };
            if !claimed.is_empty() {
                tracing::info!(
                    source = self.ctx.name(),
                    "claimed {} entries of `{}` idle for more than {idle:?}",
                    claimed.len(),
                    spec.streams[i]
                );
                got.push((i, claimed));
            }
        }
        Ok(got)
    }

    /// New entries (`>`), waiting up to `block`.
    async fn read_new(&self, conn: &mut MultiplexedConnection) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        let spec = self.spec;
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&spec.group)
            .arg(&spec.consumer)
            .arg("COUNT")
            .arg(spec.batch)
            .arg("BLOCK")
            .arg(spec.block.as_millis() as u64)
            .arg("STREAMS");
        for stream in &spec.streams {
            cmd.arg(stream);
        }
        for _ in &spec.streams {
            cmd.arg(">");
        }
        let reply: Value = cmd.query_async(conn).await?;
        let mut got = self.by_stream(reply)?;
        got.retain(|(_, e)| !e.is_empty());
        Ok(got)
    }

    fn by_stream(&self, reply: Value) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        read_reply(reply)
            .map_err(protocol)?
            .into_iter()
            .filter_map(|(name, entries)| self.spec.streams.iter().position(|s| *s == name).map(|i| (i, entries)))
            .map(Ok)
            .collect()
    }

    /// Hands entries of stream `index` to the pipeline; `false` if it no
    /// longer takes them.
    async fn emit(&self, index: usize, entries: Vec<Entry>) -> bool {
        let stream = &self.spec.streams[index];
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut messages = Vec::with_capacity(entries.len());
        let mut rejected = Vec::new();
        for entry in entries {
            // An entry deleted while pending has nothing to deliver: it is
            // only acknowledged (its ID is in the batch's position).
            let Some(fields) = entry.fields else { continue };
            let origin = Origin { name: stream.clone(), partition: None, offset: None, id: Some(entry.id.clone()) };
            // Only a field name that is not UTF-8 makes `decode` fail: find
            // it first so that the fields need not be copied.
            let bad = fields.iter().any(|(name, _)| std::str::from_utf8(name).is_err());
            let value = bad.then(|| fields.iter().find(|(n, _)| n == F_VALUE).map(|(_, v)| v.clone())).flatten();
            match decode(fields) {
                Ok(mut message) => {
                    message.origin = Some(origin);
                    messages.push(message);
                }
                Err(reason) => {
                    let message = Message::from_value(value.unwrap_or_default());
                    rejected.push((message, format!("{stream} entry {}: {reason}", entry.id)));
                }
            }
        }
        self.in_flight.lock()[index].extend(ids.iter().cloned());
        let token = self.tracker.register(index as u32, ids, messages.len() + rejected.len());
        for (message, reason) in rejected {
            tracing::warn!(source = self.ctx.name(), "{reason}");
            self.ctx.reject(message, reason, token.clone()).await;
        }
        self.ctx.emit(messages, token).await.is_ok()
    }
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

fn protocol(e: anyhow::Error) -> RedisError {
    RedisError::from((::redis::ErrorKind::Parse, "unexpected reply from Redis", format!("{e:#}")))
}

/// Sends `XACK` for every released batch of entry IDs, one call per stream
/// for all that were released meanwhile; keeps and retries them when Redis
/// is away. Stops once `finish` fired and everything released is sent (or
/// after [`FINAL_ACK_PATIENCE`] of failures: those entries stay pending and
/// are re-read by the next run).
async fn acknowledge(
    client: Client,
    spec: Arc<RedisSourceSpec>,
    mut released: Released<Vec<String>>,
    in_flight: InFlight,
    finish: CancellationToken,
    name: String,
) {
    let mut queue: Vec<Vec<String>> = vec![Vec::new(); spec.streams.len()];
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::new();
    let mut finishing_since: Option<Instant> = None;
    let never = CancellationToken::new();
    loop {
        if queue.iter().all(Vec::is_empty) {
            tokio::select! {
                biased;
                Some((stream, ids)) = released.recv() => queue[stream as usize].extend(ids),
                _ = finish.cancelled(), if finishing_since.is_none() => {
                    finishing_since = Some(Instant::now());
                }
                else => {}
            }
        }
        while let Ok((stream, ids)) = released.try_recv() {
            queue[stream as usize].extend(ids);
        }
        if finish.is_cancelled() && finishing_since.is_none() {
            finishing_since = Some(Instant::now());
        }
        if queue.iter().all(Vec::is_empty) {
            if finishing_since.is_some() {
                return;
            }
            continue;
        }
        let sent = async {
            if conn.is_none() {
                conn = Some(connect(&client, Duration::from_secs(10)).await?);
            }
            let c = conn.as_mut().expect("connected");
            let mut pipe = ::redis::pipe();
            for (index, ids) in queue.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
                pipe.cmd("XACK").arg(&spec.streams[index]).arg(&spec.group).arg(ids).ignore();
            }
            pipe.query_async::<()>(c).await
        }
        .await;
        match sent {
            Ok(()) => {
                backoff.reset();
                let mut in_flight = in_flight.lock();
                for (index, ids) in queue.iter_mut().enumerate() {
                    for id in ids.drain(..) {
                        in_flight[index].remove(&id);
                    }
                }
            }
            Err(e) => {
                conn = None;
                let pending: usize = queue.iter().map(Vec::len).sum();
                if finishing_since.is_some_and(|t| t.elapsed() > FINAL_ACK_PATIENCE) {
                    tracing::error!(
                        source = name,
                        "giving up acknowledging {pending} entries ({e}); they stay pending and are re-read on restart"
                    );
                    return;
                }
                tracing::warn!(source = name, "XACK of {pending} entries failed, retrying: {e}");
                backoff.sleep(&never).await;
            }
        }
    }
}

// -------------------------------------------------------------------- sink

/// Writes batches to a stream with pipelined `XADD`.
pub struct RedisSink {
    spec: RedisSinkSpec,
    client: Client,
    conn: Option<MultiplexedConnection>,
}

impl RedisSink {
    /// A sink for `spec`; it connects on its first write.
    pub fn new(spec: RedisSinkSpec) -> Result<Self> {
        let client = spec.endpoint.client()?;
        Ok(RedisSink { spec, client, conn: None })
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        let spec = &self.spec;
        let mut pipe = ::redis::pipe();
        for message in batch {
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg(&spec.stream);
            if let Some(maxlen) = spec.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg("*");
            encode(&mut cmd, message);
            pipe.add_command(cmd).ignore();
        }
        if self.conn.is_none() {
            // The error's text already holds its source's (`Connection
            // refused (os error 111)`): not chained, so it is said once.
            let conn = connect(&self.client, Duration::from_secs(30))
                .await
                .map_err(|e| anyhow!("connecting to Redis at {}: {e}", spec.endpoint.display()))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected");
        match pipe.query_async::<()>(conn).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Start afresh next time: the connection may be broken.
                self.conn = None;
                Err(anyhow!("XADD of {} entries to `{}` on {}: {e}", batch.len(), spec.stream, spec.endpoint.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &Message) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut cmd = ::redis::cmd("XADD");
        encode(&mut cmd, message);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .skip(1) // the command name
            .map(|a| match a {
                ::redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        args.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect()
    }

    #[test]
    fn layout_round_trips_binary_messages() {
        let message = Message {
            key: Some(vec![0xff, 0, 0xfe]),
            value: vec![0x80, b'\n', 0, 0xc3],
            headers: vec![
                Header { name: "a".into(), value: vec![0xff] },
                Header { name: "a".into(), value: vec![] },
                Header { name: "ts".into(), value: b"x".to_vec() },
            ],
            timestamp_ms: Some(1_700_000_000_123),
            origin: None,
        };
        let back = decode(fields(&message)).unwrap();
        assert_eq!(back.key, message.key);
        assert_eq!(back.value, message.value);
        assert_eq!(back.timestamp_ms, message.timestamp_ms);
        let headers = |m: &Message| m.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect::<Vec<_>>();
        assert_eq!(headers(&back), headers(&message));
        let bare = decode(fields(&Message::from_value(Vec::new()))).unwrap();
        assert!(bare.key.is_none() && bare.value.is_empty() && bare.headers.is_empty() && bare.timestamp_ms.is_none());
    }

    #[test]
    fn foreign_fields_become_headers() {
        let m = decode(vec![(b"temp".to_vec(), b"20".to_vec()), (b"ts".to_vec(), b"soon".to_vec())]).unwrap();
        assert_eq!(m.value, b"");
        assert_eq!(m.header("temp"), Some(&b"20"[..]));
        assert_eq!(m.header("ts"), Some(&b"soon"[..]));
        assert_eq!(m.timestamp_ms, None);
        assert!(decode(vec![(vec![0xff], b"1".to_vec())]).is_err());
    }

    #[test]
    fn start_positions() {
        assert_eq!(Start::parse("earliest").unwrap().as_id(), "0");
        assert_eq!(Start::parse("latest").unwrap().as_id(), "$");
        assert_eq!(Start::parse("1700000000000").unwrap().as_id(), "1700000000000-0");
        assert_eq!(Start::parse("5-3").unwrap().as_id(), "5-3");
        assert!(Start::parse("yesterday").is_err());
    }
}
