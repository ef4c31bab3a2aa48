//! `null://`: discards messages, counting them (benchmarks).

use anyhow::Result;
use async_trait::async_trait;

use super::Sink;
use crate::message::Message;

/// Counts and discards.
#[derive(Debug, Default)]
pub struct NullSink {
    messages: u64,
}

#[async_trait]
impl Sink for NullSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        self.messages += batch.len() as u64;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        tracing::debug!(messages = self.messages, "null sink discarded messages");
        Ok(())
    }
}
