//! `memory://name`: in-process queues for tests and embedding.
//!
//! Input is pushed with [`input`]; the source reads until the queue is closed
//! and records what the pipeline acknowledged, so tests can check the
//! at-least-once watermark. Sink output is kept per name, with the boundaries
//! of each write. `memory://name?delay_ms=5` makes a sink slow (backpressure
//! tests).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Connector, Settings, Sink, SinkSpec, Source, SourceContext, SourceSpec, SpecError};
use crate::message::Message;

/// An input queue.
#[derive(Default)]
pub struct MemoryInput {
    queue: Mutex<InputState>,
    more: Notify,
}

#[derive(Default)]
struct InputState {
    messages: VecDeque<Message>,
    closed: bool,
    /// Messages handed to the pipeline so far (the next offset).
    read: u64,
    /// Contiguous acknowledged watermark: offsets below it are all done.
    acked: u64,
    /// Every acknowledged batch, as (first offset, end offset).
    acked_batches: Vec<(u64, u64)>,
}

impl MemoryInput {
    /// Appends messages.
    pub fn push(&self, messages: impl IntoIterator<Item = Message>) {
        self.queue.lock().messages.extend(messages);
        self.more.notify_waiters();
    }

    /// No more messages will come: the source ends once these are done.
    pub fn close(&self) {
        self.queue.lock().closed = true;
        self.more.notify_waiters();
    }

    /// The acknowledged watermark: every offset below it is done.
    pub fn acked(&self) -> u64 {
        self.queue.lock().acked
    }

    /// Messages handed to the pipeline so far.
    pub fn read(&self) -> u64 {
        self.queue.lock().read
    }

    /// Every acknowledged batch as `(first, end)` offsets, in order.
    pub fn acked_batches(&self) -> Vec<(u64, u64)> {
        self.queue.lock().acked_batches.clone()
    }
}

/// A sink's output.
#[derive(Default)]
pub struct MemoryOutput {
    writes: Mutex<Vec<Vec<Message>>>,
}

impl MemoryOutput {
    /// Every message written, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.writes.lock().iter().flatten().cloned().collect()
    }

    /// Each write call's batch.
    pub fn writes(&self) -> Vec<Vec<Message>> {
        self.writes.lock().clone()
    }

    /// The writes from the `skip`-th on (cheap polling of a growing output).
    pub fn writes_since(&self, skip: usize) -> Vec<Vec<Message>> {
        self.writes.lock().iter().skip(skip).cloned().collect()
    }

    /// Number of write calls so far.
    pub fn write_count(&self) -> usize {
        self.writes.lock().len()
    }

    /// Number of messages written.
    pub fn len(&self) -> usize {
        self.writes.lock().iter().map(Vec::len).sum()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
struct Hub {
    inputs: Mutex<HashMap<String, Arc<MemoryInput>>>,
    outputs: Mutex<HashMap<String, Arc<MemoryOutput>>>,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::default)
}

/// The input queue `memory://name` reads (created on first use).
pub fn input(name: &str) -> Arc<MemoryInput> {
    hub().inputs.lock().entry(name.to_string()).or_default().clone()
}

/// The output `memory://name` writes (created on first use).
pub fn output(name: &str) -> Arc<MemoryOutput> {
    hub().outputs.lock().entry(name.to_string()).or_default().clone()
}

/// The `memory://` connector (in-process queues, for tests and embedding).
pub const CONNECTOR: Connector = Connector {
    schemes: &["memory"],
    source: Some(|args| Ok(Box::new(MemorySourceSpec::parse(&args.settings, args.batch)?))),
    sink: Some(|args| Ok(Box::new(MemorySinkSpec::parse(&mut args.settings)?))),
};

fn parse_name(settings: &Settings) -> Result<String, SpecError> {
    if settings.path.is_empty() || settings.path.contains('/') {
        return Err(format!("memory:// needs a plain name, e.g. memory://in (got `{}`)", settings.path).into());
    }
    Ok(settings.path.clone())
}

impl SourceSpec for MemorySourceSpec {
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(MemorySource::new(self.clone())))
    }
}

#[async_trait]
impl SinkSpec for MemorySinkSpec {
    async fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MemorySink::new(self.clone())))
    }
}

/// A memory source: which queue, and the batch size.
#[derive(Debug, Clone)]
pub struct MemorySourceSpec {
    /// Queue name.
    pub name: String,
    /// Most messages per batch.
    pub batch: usize,
}

impl MemorySourceSpec {
    pub(crate) fn parse(settings: &Settings, batch: usize) -> Result<Self, SpecError> {
        Ok(MemorySourceSpec { name: parse_name(settings)?, batch })
    }
}

/// Reads a memory queue until it is closed.
pub struct MemorySource {
    spec: MemorySourceSpec,
}

impl MemorySource {
    /// A source for `spec`.
    pub fn new(spec: MemorySourceSpec) -> Self {
        MemorySource { spec }
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let input = input(&self.spec.name);
        let (tracker, mut released) = ctx.tracker::<(u64, u64)>();
        let record = |(first, end): (u64, u64)| {
            let mut state = input.queue.lock();
            state.acked = end;
            state.acked_batches.push((first, end));
        };
        loop {
            let notified = input.more.notified();
            let (batch, first, closed) = {
                let mut state = input.queue.lock();
                let n = state.messages.len().min(self.spec.batch);
                let batch: Vec<Message> = state.messages.drain(..n).collect();
                let first = state.read;
                state.read += n as u64;
                (batch, first, state.closed && state.messages.is_empty())
            };
            if !batch.is_empty() {
                let end = first + batch.len() as u64;
                if ctx.hand_over(&tracker, 0, (first, end), batch.into()).await.is_err() {
                    break;
                }
            } else if closed {
                break;
            } else {
                tokio::select! {
                    _ = notified => {}
                    _ = ctx.shutdown().cancelled() => break,
                    Some((_, position)) = released.recv() => record(position),
                }
            }
            while let Ok((_, position)) = released.try_recv() {
                record(position);
            }
            if ctx.shutdown().is_cancelled() {
                break;
            }
        }
        ctx.drain(&tracker, &mut released, |_, position| record(position)).await;
        Ok(())
    }
}

/// A memory sink: which output, and an optional per-write delay.
#[derive(Debug, Clone)]
pub struct MemorySinkSpec {
    /// Output name.
    pub name: String,
    /// Sleep before each write (a deliberately slow sink).
    pub delay: Duration,
}

impl MemorySinkSpec {
    pub(crate) fn parse(settings: &mut Settings) -> Result<Self, SpecError> {
        let name = parse_name(settings)?;
        let delay = Duration::from_millis(settings.take_parsed("delay_ms")?.unwrap_or(0));
        Ok(MemorySinkSpec { name, delay })
    }
}

/// Appends each batch to a [`MemoryOutput`].
pub struct MemorySink {
    spec: MemorySinkSpec,
    output: Arc<MemoryOutput>,
}

impl MemorySink {
    /// A sink for `spec`.
    pub fn new(spec: MemorySinkSpec) -> Self {
        let output = output(&spec.name);
        MemorySink { spec, output }
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        if !self.spec.delay.is_zero() {
            tokio::time::sleep(self.spec.delay).await;
        }
        self.output.writes.lock().push(batch.to_vec());
        Ok(())
    }
}
