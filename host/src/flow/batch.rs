//! Batches in flight, and the size/time batcher used before stages and sinks.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ack::AckToken;
use crate::message::Message;

/// Messages moving between pipeline steps, with the ack token of each.
/// Kept as two parallel vectors so `messages` can be handed to a plugin
/// as one slice without copying.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages.
    pub messages: Vec<Message>,
    /// `tokens[i]` tracks `messages[i]`.
    pub tokens: Vec<AckToken>,
    /// The route these outputs took, on their way to a routed sink.
    pub route: Option<Arc<str>>,
}

impl Batch {
    /// An empty batch with room for `n` messages.
    pub fn with_capacity(n: usize) -> Self {
        Batch { messages: Vec::with_capacity(n), tokens: Vec::with_capacity(n), route: None }
    }

    /// A batch of messages that all carry `token`.
    pub fn from_source(messages: Vec<Message>, token: AckToken) -> Self {
        let tokens = vec![token; messages.len()];
        Batch { messages, tokens, route: None }
    }

    /// Adds one message.
    pub fn push(&mut self, message: Message, token: AckToken) {
        self.messages.push(message);
        self.tokens.push(token);
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Appends `other`.
    pub fn append(&mut self, other: &mut Batch) {
        self.messages.append(&mut other.messages);
        self.tokens.append(&mut other.tokens);
    }

    /// A copy for one more destination: every token gains a piece.
    pub fn fan_out_copy(&self) -> Batch {
        for token in &self.tokens {
            token.add(1);
        }
        Batch { messages: self.messages.clone(), tokens: self.tokens.clone(), route: self.route.clone() }
    }
}

/// How a batcher closes batches: by size and/or age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// A batch is closed when it holds this many messages.
    pub max_size: usize,
    /// A batch is closed this long after its first message arrived.
    pub max_wait: Duration,
}

/// Accumulates messages into batches of at most `max_size`, closed early when
/// the oldest message has waited `max_wait`.
#[derive(Debug)]
pub struct Batcher {
    policy: BatchPolicy,
    open: Batch,
    opened_at: Option<Instant>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(policy: BatchPolicy) -> Self {
        Batcher { policy, open: Batch::with_capacity(policy.max_size.min(4096)), opened_at: None }
    }

    /// Adds one message; returns a batch when it is full.
    pub fn push(&mut self, message: Message, token: AckToken) -> Option<Batch> {
        if self.open.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        self.open.push(message, token);
        (self.open.len() >= self.policy.max_size).then(|| self.take())
    }

    /// Adds a whole batch, returning every full batch it completes. A batch
    /// that already has the right size passes through without copying.
    pub fn push_batch(&mut self, mut batch: Batch, full: &mut Vec<Batch>) {
        if self.open.is_empty() && batch.len() == self.policy.max_size {
            full.push(batch);
            return;
        }
        for (message, token) in batch.messages.drain(..).zip(batch.tokens.drain(..)) {
            if let Some(b) = self.push(message, token) {
                full.push(b);
            }
        }
    }

    /// When the open batch must be closed, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.policy.max_wait)
    }

    /// Whether the open batch is empty.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Closes and returns the open batch (possibly empty).
    pub fn take(&mut self) -> Batch {
        self.opened_at = None;
        std::mem::replace(&mut self.open, Batch::with_capacity(self.policy.max_size.min(4096)))
    }
}

/// Open batches by group: one [`Batcher`] per distinct group key, and one for
/// messages without a group. A key is copied only when its group first
/// appears and when its batch closes, never per message.
#[derive(Debug)]
pub struct Groups {
    policy: BatchPolicy,
    keyed: std::collections::HashMap<Vec<u8>, Batcher>,
    unkeyed: Batcher,
}

/// A closed batch and the group it belongs to.
pub type GroupBatch = (Option<Vec<u8>>, Batch);

impl Groups {
    /// No open batches.
    pub fn new(policy: BatchPolicy) -> Self {
        Groups { policy, keyed: Default::default(), unkeyed: Batcher::new(policy) }
    }

    /// Adds a message to the group `group_of` finds in it; returns the
    /// group's batch when it is full.
    pub fn push(
        &mut self,
        message: Message,
        token: AckToken,
        group_of: impl Fn(&Message) -> Option<&[u8]>,
    ) -> Option<GroupBatch> {
        let Some(group) = group_of(&message) else {
            return self.unkeyed.push(message, token).map(|b| (None, b));
        };
        if !self.keyed.contains_key(group) {
            self.keyed.insert(group.to_vec(), Batcher::new(self.policy));
        }
        let batcher = self.keyed.get_mut(group).expect("inserted above");
        let full = batcher.push(message, token)?;
        // The group's key, read back from the message that filled the batch.
        let key = full.messages.last().and_then(&group_of).map(<[u8]>::to_vec);
        Some((key, full))
    }

    /// Adds a whole batch to one group (`None`: no group), returning every
    /// batch it fills; a batch of exactly the right size passes through
    /// without copying.
    pub fn push_batch(&mut self, group: Option<&[u8]>, batch: Batch, full: &mut Vec<GroupBatch>) {
        let batcher = match group {
            None => &mut self.unkeyed,
            Some(key) => {
                if !self.keyed.contains_key(key) {
                    self.keyed.insert(key.to_vec(), Batcher::new(self.policy));
                }
                self.keyed.get_mut(key).expect("inserted above")
            }
        };
        let mut closed = Vec::new();
        batcher.push_batch(batch, &mut closed);
        full.extend(closed.into_iter().map(|b| (group.map(<[u8]>::to_vec), b)));
    }

    /// When the oldest open batch must close.
    pub fn deadline(&self) -> Option<Instant> {
        self.keyed.values().filter_map(Batcher::deadline).chain(self.unkeyed.deadline()).min()
    }

    /// Closes the batches whose time is up. Their groups are forgotten, so
    /// keys seen once do not accumulate.
    pub fn take_expired(&mut self, now: Instant) -> Vec<GroupBatch> {
        let mut ready = Vec::new();
        self.keyed.retain(|key, batcher| {
            let expired = batcher.deadline().is_some_and(|d| d <= now);
            if expired {
                ready.push((Some(key.clone()), batcher.take()));
            }
            !expired
        });
        if self.unkeyed.deadline().is_some_and(|d| d <= now) {
            ready.push((None, self.unkeyed.take()));
        }
        ready
    }

    /// Closes every open batch.
    pub fn take_all(&mut self) -> Vec<GroupBatch> {
        let mut all: Vec<GroupBatch> = self.keyed.drain().map(|(k, mut b)| (Some(k), b.take())).collect();
        all.push((None, self.unkeyed.take()));
        all.retain(|(_, b)| !b.is_empty());
        all
    }
}

/// Waits until `deadline`: at once when it has passed (a batch due now, e.g.
/// with `max_wait_ms = 0`, must not wait for the timer's next millisecond
/// tick), never without one.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) if deadline <= Instant::now() => {}
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
