//! `null://`: discards messages, counting them (benchmarks).
//! `null://?delay_ms=N` waits N ms per write: a deliberately slow sink for
//! backpressure tests.

use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use super::{Connector, Settings, Sink, SinkSpec, SpecError};
use crate::message::Message;

/// The `null://` connector (a sink only).
pub const CONNECTOR: Connector =
    Connector { schemes: &["null"], source: None, sink: Some(|args| Ok(Box::new(NullSink::parse(&mut args.settings)?))) };

#[async_trait]
impl SinkSpec for NullSink {
    async fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(self.clone()))
    }
}

/// Counts and discards, optionally slowly.
#[derive(Debug, Default, Clone)]
pub struct NullSink {
    delay: Duration,
    messages: u64,
}

impl NullSink {
    /// Parses what follows `null://`.
    pub(crate) fn parse(settings: &mut Settings) -> Result<Self, SpecError> {
        if !settings.path.is_empty() {
            return Err(format!("null:// takes no path (got `{}`)", settings.path).into());
        }
        let delay = Duration::from_millis(settings.take_parsed("delay_ms")?.unwrap_or(0));
        Ok(NullSink { delay, messages: 0 })
    }
}

#[async_trait]
impl Sink for NullSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        if !self.delay.is_zero() {
            tracing::debug!(messages = batch.len(), delay = ?self.delay, "null sink holding a batch");
            tokio::time::sleep(self.delay).await;
        }
        self.messages += batch.len() as u64;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        tracing::debug!(messages = self.messages, "null sink discarded messages");
        Ok(())
    }
}
