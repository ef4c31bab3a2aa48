//! `stdio://`: standard input as a bounded source, standard output as a sink.

use anyhow::Result;
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::lines::LineLimits;
use super::{Connector, Sink, SinkSpec, Source, SourceContext, SourceSpec, format, lines};
use crate::config::Format;
use crate::message::Message;

/// The `stdio://` connector: it takes no path and no settings.
pub const CONNECTOR: Connector = Connector {
    schemes: &["stdio"],
    source: Some(|args| {
        let limits = args.line_limits()?;
        Ok(Box::new(StdinSpec { format: args.format, limits }))
    }),
    sink: Some(|args| Ok(Box::new(StdoutSpec { format: args.format }))),
};

impl SourceSpec for StdinSpec {
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(StdinSource::new(self.clone())))
    }
}

/// How to write standard output.
#[derive(Debug, Clone)]
pub struct StdoutSpec {
    /// Line format.
    pub format: Format,
}

#[async_trait]
impl SinkSpec for StdoutSpec {
    async fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink::new(self.format)))
    }
}

/// How to read standard input.
#[derive(Debug, Clone)]
pub struct StdinSpec {
    /// Line format.
    pub format: Format,
    /// Batch size and longest line.
    pub limits: LineLimits,
}

/// Reads standard input until it closes.
pub struct StdinSource {
    spec: StdinSpec,
}

impl StdinSource {
    /// A source for `spec`.
    pub fn new(spec: StdinSpec) -> Self {
        StdinSource { spec }
    }
}

#[async_trait]
impl Source for StdinSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let reader = tokio::io::BufReader::with_capacity(64 * 1024, tokio::io::stdin());
        // Standard input cannot be read again: no positions to record.
        let tracker = ctx.tracker();
        lines::run(reader, self.spec.format, self.spec.limits, "stdin", &ctx, tracker, Default::default()).await
    }
}

/// Writes one line per message to standard output, one write per batch.
pub struct StdoutSink {
    format: Format,
    out: tokio::io::Stdout,
    buffer: Vec<u8>,
}

impl StdoutSink {
    /// A sink writing `format` lines.
    pub fn new(format: Format) -> Self {
        StdoutSink { format, out: tokio::io::stdout(), buffer: Vec::new() }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        format::encode_batch(self.format, batch, &mut self.buffer)?;
        self.out.write_all(&self.buffer).await?;
        self.out.flush().await?;
        Ok(())
    }
}
