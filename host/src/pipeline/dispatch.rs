//! Spreads a stage's input over its instances: round-robin (to the next free
//! instance), broadcast (to all), or partition (by a stable hash of the key or
//! a header, so one key always lands on one instance, in order). Batches are
//! formed here, per instance and per group when the stage groups them.
//! Once the pipeline is stopping, open batches are sent at once, whatever
//! their `max_wait_ms`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stage::Work;
use crate::config::GroupBy;
use crate::flow::batch::{Batch, BatchPolicy, Groups};

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

/// How a stage's dispatcher runs.
pub(crate) struct DispatchOptions {
    /// How batches are spread.
    pub mode: Mode,
    /// How batches are closed.
    pub policy: BatchPolicy,
    /// Batches per group.
    pub group_by: Option<GroupBy>,
    /// Fires when the pipeline stops: open batches are sent at once.
    pub shutdown: CancellationToken,
    /// Counts the messages handed to instances (once per instance for
    /// broadcast), to tell what is still in flight when a drain times out.
    pub dispatched: Arc<AtomicU64>,
}

/// Runs until `input` closes, then flushes and closes the instances' inputs.
pub(crate) async fn dispatch(
    mut input: mpsc::Receiver<Batch>,
    instances: Vec<mpsc::Sender<Work>>,
    options: DispatchOptions,
) {
    let DispatchOptions { mode, policy, group_by, shutdown, dispatched } = options;
    // Partition dispatch batches per instance; the others share one set.
    let sets = if matches!(mode, Mode::Partition(_)) { instances.len() } else { 1 };
    let groups = (0..sets).map(|_| Groups::new(policy)).collect();
    let mut dispatcher = Dispatcher { instances, mode, group_by, groups, seq: 0, next: 0, dispatched };
    let mut draining = false;
    loop {
        let deadline = dispatcher.groups.iter().filter_map(Groups::deadline).min();
        tokio::select! {
            batch = input.recv() => match batch {
                Some(batch) => {
                    dispatcher.accept(batch).await;
                    if draining {
                        dispatcher.flush_all().await;
                    }
                }
                None => break,
            },
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                dispatcher.flush_all().await;
            }
            _ = crate::flow::batch::until(deadline) => dispatcher.flush_expired().await,
        }
    }
    dispatcher.flush_all().await;
}

struct Dispatcher {
    instances: Vec<mpsc::Sender<Work>>,
    mode: Mode,
    group_by: Option<GroupBy>,
    /// Open batches: per instance for partition dispatch, else one set.
    groups: Vec<Groups>,
    seq: u64,
    next: usize,
    dispatched: Arc<AtomicU64>,
}

impl Dispatcher {
    async fn accept(&mut self, mut batch: Batch) {
        let mut full = Vec::new();
        match (&self.mode, &self.group_by) {
            (Mode::Partition(_), _) | (_, Some(_)) => {
                let n = self.instances.len();
                let group_by = self.group_by.as_ref();
                for (message, token) in batch.messages.drain(..).zip(batch.tokens.drain(..)) {
                    let instance = match &self.mode {
                        Mode::Partition(by) => partition_of(by.of(&message), n),
                        _ => 0,
                    };
                    // With `group_by`, a message without the key is its own
                    // (empty) group, so aggregators still see a batch key.
                    let closed =
                        self.groups[instance].push(message, token, |m| group_by.map(|by| by.of(m).unwrap_or_default()));
                    full.extend(closed.map(|(group, b)| (instance, group, b)));
                }
            }
            _ => {
                let mut closed = Vec::new();
                self.groups[0].push_batch(None, batch, &mut closed);
                full.extend(closed.into_iter().map(|(group, b)| (0, group, b)));
            }
        }
        for (instance, group, b) in full {
            self.send(instance, group, b).await;
        }
    }

    async fn flush_expired(&mut self) {
        let now = Instant::now();
        let ready: Vec<_> = (0..self.groups.len())
            .flat_map(|i| self.groups[i].take_expired(now).into_iter().map(move |(g, b)| (i, g, b)))
            .collect();
        for (instance, group, b) in ready {
            self.send(instance, group, b).await;
        }
    }

    async fn flush_all(&mut self) {
        let all: Vec<_> = (0..self.groups.len())
            .flat_map(|i| self.groups[i].take_all().into_iter().map(move |(g, b)| (i, g, b)))
            .collect();
        for (instance, group, b) in all {
            self.send(instance, group, b).await;
        }
    }

    async fn send(&mut self, instance: usize, group: Option<Vec<u8>>, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let copies = if matches!(self.mode, Mode::Broadcast) { self.instances.len() } else { 1 };
        self.dispatched.fetch_add((batch.len() * copies) as u64, Ordering::Relaxed);
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
