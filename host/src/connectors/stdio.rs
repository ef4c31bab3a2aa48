//! `stdio://`: standard input as a bounded source, standard output as a sink.

use anyhow::Result;
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::lines::LineLimits;
use super::{Params, Sink, Source, SourceContext, format, lines};
use crate::config::Format;
use crate::message::Message;

/// How to read standard input.
#[derive(Debug, Clone)]
pub struct StdinSpec {
    /// Line format.
    pub format: Format,
    /// Batch size and longest line.
    pub limits: LineLimits,
}

impl StdinSpec {
    pub(crate) fn parse(rest: &str, format: Format, limits: LineLimits) -> Result<Self, String> {
        Params::parse(rest, "stdio")?.finish()?;
        Ok(StdinSpec { format, limits })
    }
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
        lines::run(reader, self.spec.format, self.spec.limits, "stdin", &ctx).await
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
