//! Spreads a stage's input over its instances: round-robin (to the next free
//! instance), broadcast (to all), or partition (by a stable hash of the key or
//! a header, so one key always lands on one instance, in order). Batches are
//! formed here, per instance and per group when the stage groups them.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batch::{Batch, BatchPolicy, Batcher};
use super::stage::Work;
use crate::config::GroupBy;

/// How a stage's input is spread over instances.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Each batch to the next instance with room.
    RoundRobin,
    /// Every batch to every instance.
    Broadcast,
    /// By hash of the key or a header.
    Partition(GroupBy),
}

/// The instance for `value` among `n`: stable for the life of the process.
pub fn partition_of(value: Option<&[u8]>, n: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    (hasher.finish() % n as u64) as usize
}

struct Slot {
    instance: usize,
    group: Option<Vec<u8>>,
}

/// Runs until `input` closes, then flushes and closes the instances' inputs.
pub(crate) async fn dispatch(
    mut input: mpsc::Receiver<Batch>,
    instances: Vec<mpsc::Sender<Work>>,
    mode: Mode,
    policy: BatchPolicy,
    group_by: Option<GroupBy>,
) {
    let mut dispatcher = Dispatcher { instances, mode, policy, group_by, batchers: HashMap::new(), seq: 0, next: 0 };
    loop {
        let deadline = dispatcher.batchers.values().filter_map(|(_, b)| b.deadline()).min();
        tokio::select! {
            batch = input.recv() => match batch {
                Some(batch) => dispatcher.accept(batch).await,
                None => break,
            },
            _ = sleep_until(deadline) => dispatcher.flush_expired().await,
        }
    }
    dispatcher.flush_all().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Dispatcher {
    instances: Vec<mpsc::Sender<Work>>,
    mode: Mode,
    policy: BatchPolicy,
    group_by: Option<GroupBy>,
    /// Open batches by (instance for partition dispatch, group).
    batchers: HashMap<(usize, Option<Vec<u8>>), (Slot, Batcher)>,
    seq: u64,
    next: usize,
}

impl Dispatcher {
    async fn accept(&mut self, mut batch: Batch) {
        let n = self.instances.len();
        let simple = self.group_by.is_none() && !matches!(self.mode, Mode::Partition(_));
        if simple {
            let mut full = Vec::new();
            let (_, batcher) = self
                .batchers
                .entry((0, None))
                .or_insert_with(|| (Slot { instance: 0, group: None }, Batcher::new(self.policy)));
            batcher.push_batch(batch, &mut full);
            for b in full {
                self.send(0, None, b).await;
            }
            return;
        }
        let mut full = Vec::new();
        for (message, token) in batch.messages.drain(..).zip(batch.tokens.drain(..)) {
            let instance = match &self.mode {
                Mode::Partition(by) => partition_of(by.of(&message), n),
                _ => 0,
            };
            let group = self.group_by.as_ref().map(|by| by.of(&message).map(<[u8]>::to_vec).unwrap_or_default());
            let policy = self.policy;
            let key = (instance, group);
            let (slot, batcher) = self
                .batchers
                .entry(key.clone())
                .or_insert_with(|| (Slot { instance: key.0, group: key.1.clone() }, Batcher::new(policy)));
            if let Some(b) = batcher.push(message, token) {
                full.push((slot.instance, slot.group.clone(), b));
            }
        }
        for (instance, group, b) in full {
            self.send(instance, group, b).await;
        }
    }

    async fn flush_expired(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        self.batchers.retain(|_, (slot, batcher)| {
            if batcher.deadline().is_some_and(|d| d <= now) {
                ready.push((slot.instance, slot.group.take(), batcher.take()));
                // Grouped batchers are dropped once flushed so that groups
                // (keys) seen once do not accumulate.
                return false;
            }
            true
        });
        for (instance, group, b) in ready {
            self.send(instance, group, b).await;
        }
    }

    async fn flush_all(&mut self) {
        let batchers: Vec<_> = self.batchers.drain().map(|(_, (slot, mut b))| (slot, b.take())).collect();
        for (slot, b) in batchers {
            if !b.is_empty() {
                self.send(slot.instance, slot.group, b).await;
            }
        }
    }

    async fn send(&mut self, instance: usize, group: Option<Vec<u8>>, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        match &self.mode {
            Mode::Partition(_) => {
                let seq = self.next_seq();
                let _ = self.instances[instance].send(Work { seq, batch, group }).await;
            }
            Mode::Broadcast => self.broadcast(batch, group).await,
            Mode::RoundRobin => {
                let seq = self.next_seq();
                self.send_to_free(Work { seq, batch, group }).await;
            }
        }
    }

    async fn broadcast(&mut self, batch: Batch, group: Option<Vec<u8>>) {
        let n = self.instances.len();
        let seq = self.next_seq();
        for i in 0..n - 1 {
            let _ = self.instances[i].send(Work { seq, batch: batch.fan_out_copy(), group: group.clone() }).await;
        }
        let _ = self.instances[n - 1].send(Work { seq, batch, group }).await;
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    /// The next instance in turn that has room; if none has, waits for the
    /// one whose turn it is.
    async fn send_to_free(&mut self, work: Work) {
        let n = self.instances.len();
        let mut work = work;
        for k in 0..n {
            let i = (self.next + k) % n;
            match self.instances[i].try_send(work) {
                Ok(()) => {
                    self.next = (i + 1) % n;
                    return;
                }
                Err(mpsc::error::TrySendError::Full(w)) | Err(mpsc::error::TrySendError::Closed(w)) => work = w,
            }
        }
        let i = self.next;
        self.next = (i + 1) % n;
        let _ = self.instances[i].send(work).await;
    }
}
