//! Runs a sink: batches its input by size and age (and by group, so that one
//! write receives one group), writes whole batches, and acknowledges them
//! only once the write succeeded. A failing write is logged (with the sink's
//! name and the error) and retried with backoff, `retries` times (or forever
//! when the sink says `retries = "forever"`); meanwhile backpressure holds
//! the pipeline back, and nothing is lost. When the retries run out the run
//! halts with the last error: nothing past what was written is acknowledged.
//! A batch the sink refuses outright ([`Refused`]) halts the run at once: a
//! retry would fail the same way forever.
//!
//! Once the pipeline is stopping, open batches are written at once,
//! whatever their `max_wait_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{GroupBy, SinkRetries};
use crate::connectors::{Refused, Rejected, Sink};
use crate::flow::ack::done_all;
use crate::flow::backoff::{self, Backoff};
use crate::flow::batch::{Batch, BatchPolicy, GroupBatch, Groups};
use crate::flow::control::Control;
use crate::flow::dead_letter::DeadLetter;

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Messages written.
    pub written: AtomicU64,
    /// Write calls.
    pub writes: AtomicU64,
    /// Failed write attempts (retried).
    pub failed_writes: AtomicU64,
    /// Messages received and neither written nor given up yet.
    pub pending: AtomicU64,
    /// The error of the last failed attempt, until a write succeeds.
    pub last_error: Mutex<Option<String>>,
}

/// How a sink retries a failed write.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt, or forever.
    pub retries: SinkRetries,
    /// The first backoff; it doubles up to [`backoff::MAX`] (or itself, if
    /// longer).
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { retries: SinkRetries::default(), backoff: Duration::from_millis(100) }
    }
}

/// Attempts logged one by one before the log is limited to one line a second.
const LOGGED_ATTEMPTS: u32 = 5;

/// Runs an opened sink until its input closes. `label` names it in messages
/// (`sink \`out\``, `[dead_letter]`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    name: Arc<str>,
    label: String,
    mut sink: Box<dyn Sink>,
    mut input: mpsc::Receiver<Batch>,
    policy: BatchPolicy,
    group_by: Option<GroupBy>,
    retry: RetryPolicy,
    stats: Arc<SinkStats>,
    control: Control,
    dead_letter: Option<DeadLetter>,
) -> Result<()> {
    let mut groups = Groups::new(policy);
    let shutdown = control.shutdown().clone();
    let mut writer = Writer {
        name: &name,
        label: &label,
        sink: sink.as_mut(),
        stats: &stats,
        control: &control,
        retry,
        dead_letter: dead_letter.as_ref(),
        given_up: false,
    };
    // Stopping: open batches are written at once, and so is whatever arrives.
    let mut draining = false;
    loop {
        let deadline = groups.deadline();
        tokio::select! {
            batch = input.recv() => match batch {
                None => break,
                Some(batch) => {
                    stats.pending.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for (_, full) in group(&mut groups, batch, group_by.as_ref()) {
                        writer.write(full).await;
                    }
                    if draining {
                        for (_, rest) in groups.take_all() {
                            writer.write(rest).await;
                        }
                    }
                }
            },
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                for (_, rest) in groups.take_all() {
                    writer.write(rest).await;
                }
            }
            _ = crate::flow::batch::until(deadline) => {
                for (_, expired) in groups.take_expired(Instant::now()) {
                    writer.write(expired).await;
                }
            }
        }
    }
    for (_, rest) in groups.take_all() {
        writer.write(rest).await;
    }
    let given_up = writer.given_up;
    match sink.close().await {
        // The run already failed with this sink's error: closing it cleanly
        // matters no more.
        Err(e) if given_up => {
            tracing::warn!(sink = &*name, "{label}: closing: {e:#}");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{label}: closing: {e:#}")),
        Ok(()) => Ok(()),
    }
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
    label: &'a str,
    sink: &'a mut dyn Sink,
    stats: &'a SinkStats,
    control: &'a Control,
    retry: RetryPolicy,
    /// Where rejected batches go (`None` for the dead letter itself).
    dead_letter: Option<&'a DeadLetter>,
    /// A batch was refused or its retries ran out: nothing after it may be
    /// written (it would leave a gap in the output).
    given_up: bool,
}

impl Writer<'_> {
    /// Writes until the sink accepts the batch, then acknowledges it; or
    /// gives up (halting the run) when the retries run out.
    async fn write(&mut self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if self.given_up {
            // Unacknowledged: delivered again by the next run.
            self.stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
            return;
        }
        let mut backoff = Backoff::new(self.retry.backoff, backoff::MAX);
        let mut failures = 0u32;
        let mut last_logged: Option<Instant> = None;
        let mut unlogged = 0u32;
        loop {
            let error = match self.sink.write(&batch.messages).await {
                Ok(()) => {
                    self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
                    self.stats.writes.fetch_add(1, Ordering::Relaxed);
                    self.stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
                    if failures > 0 {
                        *self.stats.last_error.lock() = None;
                        tracing::info!(
                            sink = self.name,
                            "{}: write of {n} messages succeeded after {failures} failed attempts",
                            self.label
                        );
                    }
                    done_all(&batch.tokens);
                    return;
                }
                Err(e) => e,
            };
            self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
            failures = failures.saturating_add(1);
            if let Some(refused) = error.downcast_ref::<Refused>() {
                self.give_up(n, format!("{}: {refused}", self.label));
                return;
            }
            if let Some(rejected) = error.downcast_ref::<Rejected>() {
                let reason = format!("{}: {rejected}", self.label);
                self.stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
                match self.dead_letter {
                    Some(dead_letter) => {
                        tracing::warn!(sink = self.name, "{reason}; {n} messages go to the dead letter");
                        // The dead letter's write acknowledges them.
                        dead_letter.send_async(batch, vec![reason; n], self.name).await;
                    }
                    None => self.give_up(0, reason),
                }
                return;
            }
            let text = format!("{error:#}");
            *self.stats.last_error.lock() = Some(text.clone());
            if self.control.is_halted() {
                tracing::error!(
                    sink = self.name,
                    "{}: write of {n} messages failed after the pipeline halted, giving up: {text}",
                    self.label
                );
                self.given_up = true;
                self.stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
                return;
            }
            let attempts = match self.retry.retries {
                SinkRetries::Bounded(retries) if failures > retries => {
                    self.give_up(
                        n,
                        format!("{}: write of {n} messages failed {failures} times, giving up: {text}", self.label),
                    );
                    return;
                }
                SinkRetries::Bounded(retries) => format!("attempt {failures} of {}", retries.saturating_add(1)),
                SinkRetries::Forever => format!("attempt {failures}, retrying forever"),
            };
            // Every attempt is logged, at most one line a second after the
            // first few (a zero backoff would otherwise flood the log).
            let now = Instant::now();
            if failures <= LOGGED_ATTEMPTS || last_logged.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                let skipped =
                    if unlogged > 0 { format!(" ({unlogged} more failed attempts not shown)") } else { String::new() };
                tracing::warn!(
                    sink = self.name,
                    "{}: write of {n} messages failed ({attempts}){skipped}, retrying in {:?}: {text}",
                    self.label,
                    backoff.peek()
                );
                last_logged = Some(now);
                unlogged = 0;
            } else {
                unlogged += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                // Halted meanwhile (elsewhere, or the drain timed out).
                _ = self.control.halt_signal().cancelled() => {
                    self.given_up = true;
                    self.stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Stops writing for good and halts the run with `reason`.
    fn give_up(&mut self, n: usize, reason: String) {
        self.given_up = true;
        self.stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
        self.control.halt(reason);
    }
}
