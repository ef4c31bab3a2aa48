//! Sources and sinks, one module per system.
//!
//! A [`Source`] drives itself: it reads batches, registers each with an
//! [`AckTracker`](crate::flow::ack::AckTracker) and hands it to the
//! pipeline through its [`SourceContext`]; it commits positions as the
//! tracker releases them, and on shutdown stops reading, waits for what is in
//! flight, commits and returns. A [`Sink`] writes whole batches.
//!
//! URIs are parsed into specs up front ([`SourceSpec`], [`SinkSpec`]), so a
//! bad URI is refused before anything starts. Each connector owns its URI
//! and keys: the registry below maps a URI scheme to the connector's
//! parsers, which take their settings from [`Settings`] (query parameters
//! and table keys alike) and refuse what they do not know by name.

pub mod broker;
mod error;
pub mod format;
pub mod lag;
mod lines;
mod settings;

use std::fmt;

use anyhow::Result;
use async_trait::async_trait;

use crate::config::{ConfigError, Format, PipelineConfig, SinkConfig, SourceConfig};
pub use crate::flow::source::Read;
pub use crate::flow::{SourceContext, Stopped};
use crate::message::Message;

pub use error::SpecError;
pub use lines::LineLimits;
pub use settings::Settings;

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

/// Default number of messages a source reads per batch.
pub const DEFAULT_SOURCE_BATCH: usize = 256;

/// Default longest message a source accepts (`max_message_bytes`): 8 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// A parsed, validated `[[source]]`, ready to open.
pub trait SourceSpec: fmt::Debug + Send + Sync {
    /// Opens the source.
    fn open(&self) -> Result<Box<dyn Source>>;

    /// On restart under `delivery = "exactly-once"`: whether the transaction
    /// named `transaction` of the last run committed `positions` (source,
    /// key, value as the source recorded them). Blocking; only sources that
    /// take part in transactions answer.
    fn transaction_committed(&self, transaction: &str, positions: &[(String, String, Vec<u8>)]) -> Result<bool> {
        let _ = (transaction, positions);
        anyhow::bail!("this source does not take part in transactions")
    }
}

/// A parsed, validated `[[sink]]` or `[dead_letter]`, ready to open.
#[async_trait]
pub trait SinkSpec: fmt::Debug + Send + Sync {
    /// Opens the sink (connects, opens the file, …).
    async fn open(&self) -> Result<Box<dyn Sink>>;

    /// Opens the sink in a pipeline with checkpoints (`None` without): a
    /// sink that takes part in exactly-once transactions finds the
    /// pipeline's there. The others open as [`SinkSpec::open`].
    async fn open_in(&self, checkpoints: Option<&crate::flow::checkpoint::Checkpoints>) -> Result<Box<dyn Sink>> {
        let _ = checkpoints;
        self.open().await
    }
}

/// What a connector's source parser is given.
pub struct SourceArgs<'a> {
    /// The source's name (default group names, consumer names).
    pub name: &'a str,
    /// The whole URI, as written.
    pub uri: &'a str,
    /// The URI's path and query parameters and the connector's own keys.
    pub settings: Settings,
    /// Line format (`format` key), for connectors that read lines.
    pub format: Format,
    /// Most messages per batch (`batch_size` key).
    pub batch: usize,
    /// The whole pipeline file (relative paths, identity).
    pub pipeline: &'a PipelineConfig,
}

impl SourceArgs<'_> {
    /// Batch size and the `max_message_bytes` setting, for connectors that
    /// read messages of unknown size.
    pub fn line_limits(&mut self) -> Result<LineLimits, SpecError> {
        let max_message_bytes = self
            .settings
            .take_in_range("max_message_bytes", &crate::config::ranges::MAX_MESSAGE_BYTES)?
            .map_or(DEFAULT_MAX_MESSAGE_BYTES, |n| n as usize);
        Ok(LineLimits { batch: self.batch, max_message_bytes })
    }
}

/// What a connector's sink parser is given.
pub struct SinkArgs<'a> {
    /// The whole URI, as written.
    pub uri: &'a str,
    /// The URI's path and query parameters and the connector's own keys.
    pub settings: Settings,
    /// Line format (`format` key).
    pub format: Format,
    /// The whole pipeline file (relative paths).
    pub pipeline: &'a PipelineConfig,
}

/// Parses a `[[source]]` of this connector.
pub type ParseSource = fn(&mut SourceArgs<'_>) -> Result<Box<dyn SourceSpec>, SpecError>;
/// Parses a `[[sink]]` of this connector.
pub type ParseSink = fn(&mut SinkArgs<'_>) -> Result<Box<dyn SinkSpec>, SpecError>;

/// One connector: the URI schemes it answers to and its parsers. A
/// connector module exports one as `CONNECTOR` and is listed in
/// [`registry!`]'s invocation below.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    /// URI schemes, e.g. `["http", "https"]`.
    pub schemes: &'static [&'static str],
    /// The source parser, when it can be a source.
    pub source: Option<ParseSource>,
    /// The sink parser, when it can be a sink.
    pub sink: Option<ParseSink>,
}

/// Declares the connector modules and the registry of their `CONNECTOR`s:
/// adding a connector is adding its folder and its name here.
macro_rules! registry {
    ($($connector:ident),* $(,)?) => {
        $(pub mod $connector;)*
        /// Every connector, in the order they are listed in errors.
        pub const CONNECTORS: &[&Connector] = &[$(&$connector::CONNECTOR),*];
    };
}

registry!(file, stdio, generator, memory, null, redis, kafka, pulsar, http);

/// Finds the connector for `uri` that can play `role`, and splits off its
/// settings.
fn lookup(uri: &str, role: &'static str) -> Result<(&'static Connector, Settings), SpecError> {
    let (scheme, rest) = uri
        .split_once("://")
        .filter(|(scheme, _)| !scheme.is_empty())
        .ok_or_else(|| SpecError::NotAUri { uri: uri.to_string() })?;
    let serves = |c: &&&Connector| if role == "source" { c.source.is_some() } else { c.sink.is_some() };
    match CONNECTORS.iter().filter(serves).find(|c| c.schemes.contains(&scheme)) {
        Some(connector) => Ok((connector, Settings::parse(rest, scheme, role)?)),
        None => Err(SpecError::UnknownScheme {
            scheme: scheme.to_string(),
            known: CONNECTORS
                .iter()
                .filter(serves)
                .flat_map(|c| c.schemes.iter().copied())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Parses and checks a `[[source]]`.
pub fn parse_source(source: &SourceConfig, pipeline: &PipelineConfig) -> Result<Box<dyn SourceSpec>, ConfigError> {
    let at = |e: SpecError| {
        let message = format!("source `{}`: {e}", source.name);
        match e.key() {
            Some(key) => pipeline.error_at_key(&source.uri, key, message),
            None => pipeline.error_at(&source.uri, message),
        }
    };
    let uri = source.uri.get_ref();
    let (connector, settings) = lookup(uri, "source").map_err(at)?;
    let settings = settings.with_keys(&source.connector).map_err(at)?;
    let mut args = SourceArgs {
        name: &source.name,
        uri,
        settings,
        format: source.format,
        batch: source.batch_size.unwrap_or(DEFAULT_SOURCE_BATCH),
        pipeline,
    };
    let parse = connector.source.expect("looked up as a source");
    let spec = parse(&mut args).map_err(at)?;
    args.settings.finish().map_err(at)?;
    Ok(spec)
}

/// Parses and checks a `[[sink]]`.
pub fn parse_sink(sink: &SinkConfig, pipeline: &PipelineConfig) -> Result<Box<dyn SinkSpec>, ConfigError> {
    let at = |e: SpecError| {
        let message = format!("sink `{}`: {e}", sink.name);
        match e.key() {
            Some(key) => pipeline.error_at_key(&sink.uri, key, message),
            None => pipeline.error_at(&sink.uri, message),
        }
    };
    parse_sink_uri(sink.uri.get_ref(), sink.format, &sink.connector, pipeline).map_err(at)
}

/// Parses a sink URI with its connector keys (`[dead_letter]` has none).
pub fn parse_sink_uri(
    uri: &str,
    format: Format,
    keys: &toml::Table,
    pipeline: &PipelineConfig,
) -> Result<Box<dyn SinkSpec>, SpecError> {
    let (connector, settings) = lookup(uri, "sink")?;
    let mut args = SinkArgs { uri, settings: settings.with_keys(keys)?, format, pipeline };
    let parse = connector.sink.expect("looked up as a sink");
    let spec = parse(&mut args)?;
    args.settings.finish()?;
    Ok(spec)
}
