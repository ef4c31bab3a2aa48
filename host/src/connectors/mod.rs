//! Sources and sinks, one module per system.
//!
//! A [`Source`] drives itself: it reads batches, registers each with an
//! [`AckTracker`](crate::pipeline::ack::AckTracker) and hands it to the
//! pipeline through its [`SourceContext`]; it commits positions as the
//! tracker releases them, and on shutdown stops reading, waits for what is in
//! flight, commits and returns. A [`Sink`] writes whole batches.
//!
//! URIs are parsed into specs up front ([`SourceSpec`], [`SinkSpec`]), so a
//! bad URI is refused before anything starts.

pub mod file;
pub mod format;
pub mod generator;
pub mod http;
pub mod kafka;
mod lines;
pub mod memory;
pub mod null;
mod params;
pub mod redis;
pub mod stdio;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Format, PipelineConfig, SinkConfig, SourceConfig};
use crate::message::Message;
use crate::pipeline::ack::{AckToken, AckTracker, Released};
use crate::pipeline::batch::Batch;
use crate::pipeline::budget::{InFlightBudget, Reservation, weigh};
use crate::pipeline::control::Control;
use crate::pipeline::dead_letter::DeadLetter;

pub use lines::LineLimits;
pub use params::Params;

/// A source of messages.
#[async_trait]
pub trait Source: Send {
    /// Reads until exhausted (bounded sources) or until `ctx` says stop;
    /// then waits for in-flight batches, commits and returns.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()>;
}

/// A destination of messages.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch, in one operation where the system allows. `Ok` means
    /// every message is durably accepted: it will be acknowledged upstream.
    async fn write(&mut self, batch: &[Message]) -> Result<()>;

    /// Flushes and releases resources at shutdown.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A batch a sink can never write as it is (retrying would fail the same
/// way), e.g. a raw value containing a newline: the run halts with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A batch the receiving system turned down for what it holds (an HTTP
/// endpoint's 4xx): retrying would not help, but the run goes on. Its
/// messages go to the dead letter with the reason (the run halts when there
/// is none).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// The source had to stop handing over batches (the pipeline halted).
#[derive(Debug, thiserror::Error)]
#[error("the pipeline is no longer accepting messages")]
pub struct Stopped;

/// What a source handed on, counted per batch (for `/metrics`).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Messages.
    pub events: AtomicU64,
    /// Bytes of keys, values and headers.
    pub bytes: AtomicU64,
}

/// What the pipeline gives a running source.
pub struct SourceContext {
    name: Arc<str>,
    downstream: mpsc::Sender<Batch>,
    shutdown: CancellationToken,
    halted: Arc<AtomicBool>,
    halt_signal: CancellationToken,
    dead_letter: DeadLetter,
    budget: InFlightBudget,
    stats: Arc<SourceStats>,
}

impl SourceContext {
    pub(crate) fn new(
        name: Arc<str>,
        downstream: mpsc::Sender<Batch>,
        control: &Control,
        dead_letter: DeadLetter,
        budget: InFlightBudget,
    ) -> Self {
        SourceContext {
            name,
            downstream,
            shutdown: control.shutdown().clone(),
            halted: control.halted_flag(),
            halt_signal: control.halt_signal().clone(),
            dead_letter,
            budget,
            stats: Arc::default(),
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the source handed on so far.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// A tracker for this source's batches; positions come back through the
    /// receiver once done, in order per partition.
    pub fn tracker<P: Send + 'static>(&self) -> (AckTracker<P>, Released<P>) {
        AckTracker::new(self.halted.clone())
    }

    /// Hands a batch to the pipeline, waiting while it is full (backpressure).
    pub async fn emit(&self, messages: Vec<Message>, token: AckToken) -> Result<(), Stopped> {
        if messages.is_empty() {
            return Ok(());
        }
        // Wait for room in the in-flight budget (backpressure in bytes).
        let bytes = weigh(&messages);
        token.hold(self.budget.reserve(bytes).await);
        self.hand_on(messages, token, bytes).await
    }

    /// Reserves room for `messages` in the pipeline's in-flight budget,
    /// waiting while it is spent. A source that must answer "busy" rather
    /// than wait (the HTTP collector) reserves first, under a timeout, and
    /// then hands the batches on with [`SourceContext::send`].
    pub async fn reserve(&self, messages: &[Message]) -> Reservation {
        self.budget.reserve(weigh(messages)).await
    }

    /// Hands a batch on without reserving budget: the caller reserved it.
    pub async fn send(&self, messages: Vec<Message>, token: AckToken) -> Result<(), Stopped> {
        if messages.is_empty() {
            return Ok(());
        }
        let bytes = weigh(&messages);
        self.hand_on(messages, token, bytes).await
    }

    /// Sends a batch of `bytes` downstream and counts it.
    async fn hand_on(&self, messages: Vec<Message>, token: AckToken, bytes: usize) -> Result<(), Stopped> {
        let events = messages.len() as u64;
        self.downstream.send(Batch::from_source(messages, token)).await.map_err(|_| Stopped)?;
        self.stats.events.fetch_add(events, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Fires when the source must stop reading (signal, halt, or the end of
    /// the run).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Whether the pipeline halted: nothing will be acknowledged any more.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Sends input the source cannot decode to the dead letter, or halts the
    /// pipeline when there is none. `token` is finished when it is written.
    pub async fn reject(&self, message: Message, reason: String, token: AckToken) {
        let mut batch = Batch::with_capacity(1);
        batch.push(message, token);
        self.dead_letter.send_async(batch, vec![reason], &self.name).await;
    }

    /// After reading stops: waits until every batch is done (or the pipeline
    /// halted), passing each released position to `commit`.
    pub async fn drain<P: Send + 'static>(
        &self,
        tracker: &AckTracker<P>,
        released: &mut Released<P>,
        mut commit: impl FnMut(u32, P),
    ) {
        loop {
            while let Ok((partition, position)) = released.try_recv() {
                commit(partition, position);
            }
            if tracker.outstanding() == 0 || self.halted() {
                return;
            }
            tokio::select! {
                Some((partition, position)) = released.recv() => commit(partition, position),
                _ = tracker.wait_idle() => {}
                // A halt leaves batches that will never finish: stop waiting.
                _ = self.halt_signal.cancelled() => return,
            }
        }
    }
}

/// A parsed, validated source URI.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `file:///path`: lines of a file.
    File(file::FileSourceSpec),
    /// `stdio://`: lines of standard input.
    Stdin(stdio::StdinSpec),
    /// `gen://`: synthetic messages.
    Gen(generator::GenSpec),
    /// `memory://name`: an in-process queue.
    Memory(memory::MemorySourceSpec),
    /// `redis://host:port/stream`: Redis Streams through a consumer group.
    Redis(redis::RedisSourceSpec),
    /// `kafka://host:port/topic`: a Kafka consumer-group member.
    Kafka(kafka::KafkaSourceSpec),
    /// `http://addr/path`: an HTTP collector taking POSTed lines.
    Http(http::HttpSourceSpec),
}

/// Default number of messages a source reads per batch.
pub const DEFAULT_SOURCE_BATCH: usize = 256;

/// Default longest message a source accepts (`max_message_bytes`): 8 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

impl SourceSpec {
    /// Parses and checks a `[[source]]`.
    pub fn parse(source: &SourceConfig, pipeline: &PipelineConfig) -> Result<Self, ConfigError> {
        let at = |m: String| pipeline.error_at(&source.uri, format!("source `{}`: {m}", source.name));
        let uri = source.uri.get_ref();
        let (scheme, rest) = split_uri(uri).map_err(at)?;
        let batch = source.batch_size.unwrap_or(DEFAULT_SOURCE_BATCH);
        let lines =
            LineLimits { batch, max_message_bytes: source.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES) };
        let spec = match scheme {
            "file" => SourceSpec::File(file::FileSourceSpec::parse(rest, source.format, lines, pipeline).map_err(at)?),
            "stdio" => SourceSpec::Stdin(stdio::StdinSpec::parse(rest, source.format, lines).map_err(at)?),
            "gen" => SourceSpec::Gen(generator::GenSpec::parse(rest, lines).map_err(at)?),
            "memory" => SourceSpec::Memory(memory::MemorySourceSpec::parse(rest, batch).map_err(at)?),
            "redis" => SourceSpec::Redis(redis::RedisSourceSpec::parse(rest, source, batch, pipeline).map_err(at)?),
            "kafka" => SourceSpec::Kafka(kafka::KafkaSourceSpec::parse(rest, kafka_keys(source), batch).map_err(at)?),
            "http" => SourceSpec::Http(http::HttpSourceSpec::parse(rest, source.format, lines).map_err(at)?),
            other => return Err(at(unknown_scheme(other, "file, stdio, gen, memory, redis, kafka, http"))),
        };
        // Keys a broker source takes; every other source refuses them.
        let broker = matches!(scheme, "redis" | "kafka");
        let unused = [
            ("group", source.group.is_some() && !broker),
            ("consumer", source.consumer.is_some() && !broker),
            ("start", source.start.is_some() && !broker),
            ("claim_idle_ms", source.claim_idle_ms.is_some() && scheme != "redis"),
            ("properties", !source.properties.is_empty() && scheme != "kafka"),
            (
                "max_message_bytes",
                source.max_message_bytes.is_some() && !matches!(scheme, "file" | "stdio" | "gen" | "http"),
            ),
        ];
        if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(at(format!("key `{key}` does not apply to a {scheme}:// source")));
        }
        Ok(spec)
    }

    /// Opens the source.
    pub fn open(&self) -> Result<Box<dyn Source>> {
        Ok(match self {
            SourceSpec::File(spec) => Box::new(file::FileSource::new(spec.clone())),
            SourceSpec::Stdin(spec) => Box::new(stdio::StdinSource::new(spec.clone())),
            SourceSpec::Gen(spec) => Box::new(generator::GenSource::new(spec.clone())),
            SourceSpec::Memory(spec) => Box::new(memory::MemorySource::new(spec.clone())),
            SourceSpec::Redis(spec) => Box::new(redis::RedisSource::new(spec.clone())),
            SourceSpec::Kafka(spec) => Box::new(kafka::KafkaSource::new(spec.clone())),
            SourceSpec::Http(spec) => Box::new(http::HttpCollector::new(spec.clone())),
        })
    }
}

/// A parsed, validated sink URI.
#[derive(Debug, Clone)]
pub enum SinkSpec {
    /// `file:///path`: appended lines.
    File(file::FileSinkSpec),
    /// `stdio://`: lines on standard output.
    Stdout(Format),
    /// `memory://name`: an in-process list.
    Memory(memory::MemorySinkSpec),
    /// `null://`: counts and discards.
    Null(null::NullSink),
    /// `redis://host:port/stream`: pipelined XADD.
    Redis(redis::RedisSinkSpec),
    /// `kafka://host:port/topic`: an idempotent producer.
    Kafka(kafka::KafkaSinkSpec),
    /// `http://…` or `https://…`: one ndjson POST per batch.
    Http(http::HttpSinkSpec),
}

impl SinkSpec {
    /// Parses and checks a `[[sink]]`.
    pub fn parse(sink: &SinkConfig, pipeline: &PipelineConfig) -> Result<Self, ConfigError> {
        let at = |m: String| pipeline.error_at(&sink.uri, format!("sink `{}`: {m}", sink.name));
        let mut spec = Self::parse_uri(sink.uri.get_ref(), sink.format, pipeline).map_err(at)?;
        if let SinkSpec::Redis(redis) = &mut spec {
            redis.apply(sink).map_err(at)?;
            return Ok(spec);
        }
        if let SinkSpec::Kafka(kafka) = &mut spec {
            *kafka = kafka.clone().with_properties(&sink.properties).map_err(at)?;
        }
        if sink.maxlen.is_some() {
            return Err(at("key `maxlen` does not apply to this sink".into()));
        }
        if !sink.properties.is_empty() && !matches!(spec, SinkSpec::Kafka(_)) {
            return Err(at("key `properties` does not apply to this sink".into()));
        }
        Ok(spec)
    }

    /// Parses a sink URI.
    pub fn parse_uri(uri: &str, format: Format, pipeline: &PipelineConfig) -> Result<Self, String> {
        let (scheme, rest) = split_uri(uri)?;
        Ok(match scheme {
            "file" => SinkSpec::File(file::FileSinkSpec::parse(rest, format, pipeline)?),
            "stdio" => {
                Params::parse(rest, "stdio")?.finish()?;
                SinkSpec::Stdout(format)
            }
            "memory" => SinkSpec::Memory(memory::MemorySinkSpec::parse(rest)?),
            "null" => SinkSpec::Null(null::NullSink::parse(rest)?),
            "redis" => SinkSpec::Redis(redis::RedisSinkSpec::parse(rest)?),
            "http" | "https" if format == Format::Ndjson => SinkSpec::Http(http::HttpSinkSpec::parse(uri)?),
            "http" | "https" => return Err("an http sink writes ndjson; remove `format = \"raw\"`".into()),
            "kafka" => SinkSpec::Kafka(kafka::KafkaSinkSpec::parse(rest)?),
            other => return Err(unknown_scheme(other, "file, stdio, memory, null, redis, kafka, http, https")),
        })
    }

    /// Opens the sink.
    pub async fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(match self {
            SinkSpec::File(spec) => Box::new(file::FileSink::open(spec).await?),
            SinkSpec::Stdout(format) => Box::new(stdio::StdoutSink::new(*format)),
            SinkSpec::Memory(spec) => Box::new(memory::MemorySink::new(spec.clone())),
            SinkSpec::Null(sink) => Box::new(sink.clone()),
            SinkSpec::Redis(spec) => Box::new(redis::RedisSink::new(spec.clone())?),
            SinkSpec::Kafka(spec) => Box::new(kafka::KafkaSink::open(spec)?),
            SinkSpec::Http(spec) => Box::new(http::HttpSink::new(spec)),
        })
    }
}

/// The keys of a `[[source]]` a Kafka source reads.
fn kafka_keys(source: &SourceConfig) -> kafka::SourceKeys<'_> {
    kafka::SourceKeys {
        name: &source.name,
        group: source.group.as_deref(),
        consumer: source.consumer.as_deref(),
        start: source.start.as_deref(),
        properties: Some(&source.properties),
    }
}

fn split_uri(uri: &str) -> Result<(&str, &str), String> {
    uri.split_once("://")
        .filter(|(scheme, _)| !scheme.is_empty())
        .ok_or_else(|| format!("`{uri}` is not a connector URI (expected scheme://..., e.g. file:///data/in.ndjson)"))
}

fn unknown_scheme(scheme: &str, known: &str) -> String {
    format!("unknown connector `{scheme}://` (available here: {known})")
}
