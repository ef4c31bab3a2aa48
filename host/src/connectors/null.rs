//! `null://`: discards messages, counting them (benchmarks).
//! `null://?delay_ms=N` waits N ms per write: a deliberately slow sink for
//! backpressure tests.

use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use super::{Params, Sink};
use crate::message::Message;

/// Counts and discards, optionally slowly.
#[derive(Debug, Default, Clone)]
pub struct NullSink {
    delay: Duration,
    messages: u64,
}

impl NullSink {
    /// Parses what follows `null://`.
    pub(crate) fn parse(rest: &str) -> Result<Self, String> {
        let mut params = Params::parse(rest, "null")?;
        if !params.path.is_empty() {
            return Err(format!("null:// takes no path (got `{}`)", params.path));
        }
        let delay = Duration::from_millis(params.take_parsed("delay_ms")?.unwrap_or(0));
        params.finish()?;
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
