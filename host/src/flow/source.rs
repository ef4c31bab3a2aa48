//! What a running source is given: the way into the pipeline.
//!
//! Every source follows one protocol: register each batch it reads with an
//! [`AckTracker`] (one piece per message, so the batch is done when every
//! output derived from it is written, filtered or dead-lettered), send input
//! it cannot decode to the dead letter, hand the rest on under the in-flight
//! budget, and on shutdown wait for what is in flight before the last
//! commit. [`SourceContext::hand_over`] and [`SourceContext::drain`] are that
//! protocol, so no source repeats it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ack::{AckToken, AckTracker, Released};
use super::batch::Batch;
use super::budget::{InFlightBudget, Reservation, weigh};
use super::checkpoint::{Checkpoints, Encoder};
use super::control::Control;
use super::dead_letter::DeadLetter;
use crate::message::Message;

/// What a source read in one go: messages to hand on, and inputs it could not
/// decode, each with the reason (they go to the dead letter).
#[derive(Debug, Default)]
pub struct Read {
    /// Decoded messages.
    pub messages: Vec<Message>,
    /// Undecodable inputs, as raw values, with the reason.
    pub rejected: Vec<(Message, String)>,
}

impl From<Vec<Message>> for Read {
    fn from(messages: Vec<Message>) -> Self {
        Read { messages, rejected: Vec::new() }
    }
}

impl Read {
    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.rejected.is_empty()
    }

    /// Messages and rejected inputs together.
    pub fn len(&self) -> usize {
        self.messages.len() + self.rejected.len()
    }
}

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
    /// Bytes of its input a source of known size (a file) has read so far.
    pub input_read: AtomicU64,
    /// The size of that input in bytes; 0 when unknown (a stream, a pipe).
    pub input_size: AtomicU64,
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
    checkpoints: Option<Checkpoints>,
}

impl SourceContext {
    /// A context for source `name`, sending into `downstream`.
    pub fn new(
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
            checkpoints: None,
        }
    }

    /// The same context in a pipeline whose state is checkpointed.
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
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

    /// A tracker for a source with positions a restart can return to. In a
    /// checkpointed pipeline its positions reach the source only once a
    /// checkpoint made them durable together with the state they produced,
    /// and `encode` says how they are recorded (see [`SourceContext::restored`]);
    /// otherwise it is [`SourceContext::tracker`].
    pub fn checkpointed_tracker<P: Send + 'static>(&self, encode: Encoder<P>) -> (AckTracker<P>, Released<P>) {
        match &self.checkpoints {
            Some(checkpoints) => AckTracker::checkpointed(self.halted.clone(), checkpoints, self.name.clone(), encode),
            None => self.tracker(),
        }
    }

    /// Whether the pipeline delivers exactly once (its checkpoints end a
    /// transaction).
    pub fn exactly_once(&self) -> bool {
        self.checkpoints.as_ref().is_some_and(Checkpoints::exactly_once)
    }

    /// The exactly-once transaction the pipeline's sinks made (see
    /// [`Checkpoints::transaction`]), for a source whose positions it commits.
    pub fn transaction<T: super::checkpoint::Transaction>(&self) -> Option<std::sync::Arc<T>> {
        self.checkpoints.as_ref().and_then(Checkpoints::existing_transaction)
    }

    /// The positions recorded for this source by the last checkpoint of the
    /// previous run, as `encode` made them (key, value): the source
    /// re-applies them before it reads (the broker may have missed the
    /// commit that followed that checkpoint). Empty without checkpoints.
    pub fn restored(&self) -> &[(String, Vec<u8>)] {
        self.checkpoints.as_ref().map_or(&[], |c| c.restored(&self.name))
    }

    /// Registers what was read at `position` of `partition` with `tracker`,
    /// dead-letters the rejected inputs and hands the messages on. The
    /// position is released once all of it is done.
    pub async fn hand_over<P: Send + 'static>(
        &self,
        tracker: &AckTracker<P>,
        partition: u32,
        position: P,
        read: Read,
    ) -> Result<(), Stopped> {
        // A checkpoint under way holds new batches back at its gate.
        let _pass = match &self.checkpoints {
            Some(checkpoints) => tokio::select! {
                pass = checkpoints.pass() => Some(pass),
                _ = self.halt_signal.cancelled() => return Err(Stopped),
            },
            None => None,
        };
        let token = tracker.register(partition, position, read.len());
        for (message, reason) in read.rejected {
            tracing::warn!(source = self.name(), "{reason}");
            self.reject(message, reason, token.clone()).await;
        }
        self.emit(read.messages, token).await
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
