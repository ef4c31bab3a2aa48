//! Runs a sink: batches its input by size and age (and by group, so that one
//! write receives one group), writes whole batches, and acknowledges them
//! only once the write succeeded. A failing write is retried with backoff;
//! meanwhile backpressure holds the pipeline back, and nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack::done_all;
use super::batch::{Batch, BatchPolicy, GroupBatch, Groups};
use super::control::Control;
use crate::config::GroupBy;
use crate::connectors::{Sink, SinkSpec};

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Messages written.
    pub written: AtomicU64,
    /// Write calls.
    pub writes: AtomicU64,
    /// Failed write attempts (retried).
    pub failed_writes: AtomicU64,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens and runs a sink until its input closes.
pub(crate) async fn run(
    name: Arc<str>,
    spec: SinkSpec,
    mut input: mpsc::Receiver<Batch>,
    policy: BatchPolicy,
    group_by: Option<GroupBy>,
    stats: Arc<SinkStats>,
    control: Control,
) -> Result<()> {
    let mut sink = spec.open().await.map_err(|e| anyhow::anyhow!("sink `{name}`: {e:#}"))?;
    let mut groups = Groups::new(policy);
    let mut writer = Writer { name: &name, sink: sink.as_mut(), stats: &stats, control: &control };
    loop {
        let deadline = groups.deadline();
        tokio::select! {
            batch = input.recv() => match batch {
                None => break,
                Some(batch) => {
                    for (_, full) in group(&mut groups, batch, group_by.as_ref()) {
                        writer.write(full).await;
                    }
                }
            },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                for (_, expired) in groups.take_expired(Instant::now()) {
                    writer.write(expired).await;
                }
            }
        }
    }
    for (_, rest) in groups.take_all() {
        writer.write(rest).await;
    }
    sink.close().await.map_err(|e| anyhow::anyhow!("sink `{name}`: closing: {e:#}"))
}

/// Adds `batch` to its group's open batch; returns the batches that filled up.
fn group(groups: &mut Groups, mut batch: Batch, group_by: Option<&GroupBy>) -> Vec<GroupBatch> {
    let mut full = Vec::new();
    match group_by {
        None => groups.push_batch(None, batch, &mut full),
        Some(GroupBy::Route) => {
            // Each incoming batch came through one route: it is one group.
            let route = batch.route.clone();
            groups.push_batch(route.as_deref().map(str::as_bytes), batch, &mut full);
        }
        Some(by) => {
            for (message, token) in batch.messages.drain(..).zip(batch.tokens.drain(..)) {
                full.extend(groups.push(message, token, |m| by.of(m)));
            }
        }
    }
    full
}

struct Writer<'a> {
    name: &'a str,
    sink: &'a mut dyn Sink,
    stats: &'a SinkStats,
    control: &'a Control,
}

impl Writer<'_> {
    /// Writes until the sink accepts the batch, then acknowledges it.
    async fn write(&mut self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.sink.write(&batch.messages).await {
                Ok(()) => {
                    self.stats.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.stats.writes.fetch_add(1, Ordering::Relaxed);
                    done_all(&batch.tokens);
                    return;
                }
                Err(e) => {
                    self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                    if self.control.is_halted() {
                        tracing::error!(sink = self.name, "write failed after halt, giving up: {e:#}");
                        return;
                    }
                    tracing::warn!(
                        sink = self.name,
                        "write of {} messages failed, retrying in {backoff:?}: {e:#}",
                        batch.len()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
