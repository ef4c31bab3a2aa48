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

mod fields;
mod lag;
mod sink;
mod source;
mod unconfirmed;

use std::path::Path;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError};
use anyhow::{Context, Result};

pub use sink::RedisSink;
pub use source::RedisSource;

use super::{Connector, Settings, Sink, SinkSpec, Source, SourceArgs, SourceSpec, SpecError, broker};
use crate::config::{PipelineConfig, ranges};

/// The `redis://` connector.
pub const CONNECTOR: Connector = Connector {
    schemes: &["redis"],
    source: Some(|args| Ok(Box::new(RedisSourceSpec::parse(args)?))),
    sink: Some(|args| Ok(Box::new(RedisSinkSpec::parse(&mut args.settings)?))),
};

impl SourceSpec for RedisSourceSpec {
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(RedisSource::new(self.clone())))
    }
}

#[async_trait::async_trait]
impl SinkSpec for RedisSinkSpec {
    async fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(RedisSink::new(self.clone())?))
    }
}

/// Default idle time after which another consumer's pending entries are claimed.
pub const DEFAULT_CLAIM_IDLE_MS: u64 = 30_000;
/// Default `BLOCK` of a read.
pub const DEFAULT_BLOCK_MS: u64 = 500;

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
    fn parse(authority: &str, params: &mut Settings) -> Result<Self, SpecError> {
        if authority.is_empty() {
            return Err("redis:// needs a host, e.g. redis://127.0.0.1:6379/events".into());
        }
        let url = ::url::Url::parse(&format!("redis://{authority}"))
            .map_err(|e| format!("`{authority}` is not a valid [user:password@]host[:port]: {e}"))?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("redis:// needs a host")?.to_string();
        let db = params.take_in_range("db", &ranges::REDIS_DB)?.unwrap_or(0);
        Ok(Endpoint { authority: authority.to_string(), host, port: url.port().unwrap_or(6379), db })
    }

    pub(super) fn client(&self) -> Result<Client> {
        Client::open(format!("redis://{}/{}", self.authority, self.db))
            .with_context(|| format!("redis://{}", self.display()))
    }

    pub(super) fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub(super) async fn connect(client: &Client, response_timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Splits `host:port/path?query` into the endpoint and the decoded path.
fn split(params: &mut Settings) -> Result<(Endpoint, String), SpecError> {
    let rest = params.path.clone();
    let (authority, path) =
        params.path.split_once('/').map(|(a, p)| (a.to_string(), p.to_string())).ok_or_else(|| {
            format!("redis:// needs a stream name after the host, e.g. redis://127.0.0.1:6379/events (got `{rest}`)")
        })?;
    let endpoint = Endpoint::parse(&authority, params)?;
    Ok((endpoint, percent_decode(&path)))
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

/// Where a new consumer group starts: a position is an entry ID.
pub type Start = broker::Start<String>;

/// An entry ID (`ms-seq`, or a bare millisecond timestamp meaning `ms-0`).
fn entry_id(text: &str) -> Option<String> {
    let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
    (ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()).then(|| format!("{ms}-{seq}"))
}

/// The ID `XGROUP CREATE` takes for `start`.
pub(super) fn start_id(start: &Start) -> &str {
    match start {
        Start::Earliest => "0",
        Start::Latest => "$",
        Start::At(id) => id,
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

impl RedisSourceSpec {
    pub(crate) fn parse(args: &mut SourceArgs<'_>) -> Result<Self, SpecError> {
        let params = &mut args.settings;
        let (endpoint, path) = split(params)?;
        let mut streams = Vec::new();
        for stream in path.split(',') {
            if stream.is_empty() {
                return Err(format!("empty stream name in `{path}` (expected stream[,stream2...])").into());
            }
            if streams.iter().any(|s| s == stream) {
                return Err(format!("stream `{stream}` is listed twice").into());
            }
            streams.push(stream.to_string());
        }
        let group = broker::take_group(params, "group", args.name)?;
        let consumer = match broker::take_consumer(params)? {
            Some(c) => c,
            None => default_consumer(args.name, args.uri, args.pipeline),
        };
        let start = Start::take(params, entry_id, "a stream entry ID (e.g. 1700000000000-0)")?;
        let claim_idle_ms = params.take_in_range("claim_idle_ms", &ranges::CLAIM_IDLE_MS)?.unwrap_or(DEFAULT_CLAIM_IDLE_MS);
        // 0 would block forever.
        let block_ms: u64 = params.take_in_range("block_ms", &ranges::BLOCK_MS)?.unwrap_or(DEFAULT_BLOCK_MS);
        Ok(RedisSourceSpec {
            endpoint,
            streams,
            group,
            consumer,
            start,
            batch: args.batch,
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
    pub(crate) fn parse(params: &mut Settings) -> Result<Self, SpecError> {
        let (endpoint, stream) = split(params)?;
        if stream.is_empty() || stream.contains(',') {
            return Err(
                format!("a redis:// sink writes one stream, e.g. redis://127.0.0.1:6379/out (got `{stream}`)").into()
            );
        }
        let maxlen = params.take_in_range("maxlen", &ranges::MAXLEN)?;
        Ok(RedisSinkSpec { endpoint, stream, maxlen })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(text: &str) -> Result<String, SpecError> {
        let mut settings = Settings::parse(&format!("h/s?start={text}"), "redis", "source")?;
        let start = Start::take(&mut settings, entry_id, "a stream entry ID")?;
        Ok(start_id(&start).to_string())
    }

    #[test]
    fn start_positions() {
        assert_eq!(start("earliest").unwrap(), "0");
        assert_eq!(start("latest").unwrap(), "$");
        assert_eq!(start("1700000000000").unwrap(), "1700000000000-0");
        assert_eq!(start("5-3").unwrap(), "5-3");
        assert!(start("yesterday").is_err());
    }
}
