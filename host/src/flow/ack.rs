//! At-least-once acknowledgement.
//!
//! A source registers each batch it reads with its [`AckTracker`] and gets an
//! [`AckToken`] that every message of the batch carries. The token counts the
//! pieces of work still outstanding: one per message at first; a flat-map
//! adds pieces, a filter, a sink write, a dead-letter write or a skip
//! finishes them. When the count reaches zero the batch is done.
//!
//! The tracker releases done batches to the source in order, per partition:
//! the committed position is the contiguous watermark, so a later batch
//! finishing first never moves it. Once the pipeline halts, nothing more is
//! released. A token that is dropped without finishing simply never
//! completes, so a bug or a crash can repeat work but never lose it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};

use super::budget::Reservation;
use super::checkpoint::{Checkpoints, Encoder, Holding, Taken};
use crate::store::PositionRecord;

/// Outstanding work of one source batch (or of one aggregated group).
#[derive(Clone)]
pub struct AckToken(Arc<AckNode>);

struct AckNode {
    pending: AtomicUsize,
    on_done: OnDone,
    /// The source batch's share of the in-flight budget, returned when the
    /// last copy of the token is dropped.
    reservation: OnceLock<Reservation>,
}

enum OnDone {
    /// Tell the source's tracker that batch `seq` of `partition` is done.
    Source { tracker: Arc<dyn Completer>, partition: u32, seq: u64 },
    /// Finish one piece of each of these tokens (an aggregator's outputs
    /// derive from every message of its input batch).
    Group(Vec<AckToken>),
    /// Tell one waiter (an HTTP request waiting for its messages to be
    /// written). Dropping the token unfinished drops the sender, which the
    /// waiter sees as "not written".
    Notify(Mutex<Option<oneshot::Sender<()>>>),
    /// Nothing to tell: messages injected without a source (tests, `weir test`).
    Nothing,
}

impl AckToken {
    /// A token that tracks nothing, for messages with no source to tell.
    pub fn untracked(pieces: usize) -> Self {
        AckToken(Arc::new(AckNode {
            pending: AtomicUsize::new(pieces),
            on_done: OnDone::Nothing,
            reservation: OnceLock::new(),
        }))
    }

    /// A token of `pieces` pieces whose completion fires the receiver; the
    /// receiver errs when the token is dropped unfinished.
    pub fn notifying(pieces: usize) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let token = AckToken(Arc::new(AckNode {
            pending: AtomicUsize::new(pieces.max(1)),
            on_done: OnDone::Notify(Mutex::new(Some(tx))),
            reservation: OnceLock::new(),
        }));
        if pieces == 0 {
            token.done(1);
        }
        (token, rx)
    }

    /// A token whose completion finishes one piece of each of `inputs`, once
    /// `pieces` pieces of its own are done. With zero pieces the inputs are
    /// finished at once.
    pub fn group(inputs: Vec<AckToken>, pieces: usize) -> Self {
        let token = AckToken(Arc::new(AckNode {
            pending: AtomicUsize::new(pieces.max(1)),
            on_done: OnDone::Group(inputs),
            reservation: OnceLock::new(),
        }));
        if pieces == 0 {
            token.done(1);
        }
        token
    }

    /// Adds `n` outstanding pieces (a message became `n + 1` outputs, or was
    /// copied to `n` more destinations).
    pub fn add(&self, n: usize) {
        if n > 0 {
            self.0.pending.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Finishes `n` pieces.
    pub fn done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.0.pending.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "ack token finished more pieces than it had");
        if before == n {
            match &self.0.on_done {
                OnDone::Source { tracker, partition, seq } => tracker.complete(*partition, *seq),
                OnDone::Group(inputs) => inputs.iter().for_each(|t| t.done(1)),
                OnDone::Notify(waiter) => {
                    if let Some(tx) = waiter.lock().take() {
                        let _ = tx.send(());
                    }
                }
                OnDone::Nothing => {}
            }
        }
    }

    /// Keeps `reservation` until the token's last copy is dropped. A token
    /// holds one reservation; a second one is returned at once.
    pub fn hold(&self, reservation: Reservation) {
        let _ = self.0.reservation.set(reservation);
    }

    /// Whether two tokens are the same batch's.
    pub fn same(&self, other: &AckToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Pieces still outstanding.
    pub fn pending(&self) -> usize {
        self.0.pending.load(Ordering::Acquire)
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AckToken(pending={})", self.pending())
    }
}

/// Finishes one piece for each run of identical tokens in `tokens` with a
/// single atomic operation per run (tokens of one source batch are adjacent).
pub fn done_all(tokens: &[AckToken]) {
    let mut rest = tokens;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|t| t.same(first)).count();
        first.done(run);
        rest = &rest[run..];
    }
}

trait Completer: Send + Sync {
    fn complete(&self, partition: u32, seq: u64);
}

/// Tracks a source's batches and hands back their positions, per
/// partition, in order, once done.
pub struct AckTracker<P> {
    inner: Arc<TrackerInner<P>>,
}

impl<P> Clone for AckTracker<P> {
    fn clone(&self) -> Self {
        AckTracker { inner: self.inner.clone() }
    }
}

struct TrackerInner<P> {
    partitions: Mutex<HashMap<u32, PartitionQueue<P>>>,
    outstanding: AtomicUsize,
    released: mpsc::UnboundedSender<(u32, P)>,
    halted: Arc<AtomicBool>,
    idle: Notify,
    /// Fires whenever positions are released (or on halt), for
    /// [`AckTracker::wait_partition_idle`].
    progress: Notify,
    /// With checkpoints: released positions wait here for a durable
    /// checkpoint before the source gets them.
    hold: Option<Hold<P>>,
}

/// The held positions of a checkpointed tracker.
struct Hold<P> {
    source: Arc<str>,
    /// Released positions, in release order; they still count as
    /// outstanding (the source has not got them).
    held: Mutex<Vec<(u32, P)>>,
    /// Positions held or taken by a checkpoint and not yet published: the
    /// part of `outstanding` that is no longer in flight.
    count: AtomicUsize,
    encode: Encoder<P>,
    checkpoints: Checkpoints,
}

struct PartitionQueue<P> {
    /// Sequence number of the front of `batches`.
    front_seq: u64,
    batches: VecDeque<(Option<P>, bool)>,
}

/// Receives done positions, in order per partition.
pub type Released<P> = mpsc::UnboundedReceiver<(u32, P)>;

impl<P: Send + 'static> AckTracker<P> {
    /// A tracker that stops releasing once `halted` is set.
    pub fn new(halted: Arc<AtomicBool>) -> (Self, Released<P>) {
        Self::build(halted, None)
    }

    /// A tracker whose released positions reach the source only once a
    /// checkpoint of `checkpoints` made them durable (with the state they
    /// produced); `encode` says how `source` records them.
    pub fn checkpointed(
        halted: Arc<AtomicBool>,
        checkpoints: &Checkpoints,
        source: Arc<str>,
        encode: Encoder<P>,
    ) -> (Self, Released<P>) {
        let hold = Hold {
            source,
            held: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            encode,
            checkpoints: checkpoints.clone(),
        };
        let (tracker, released) = Self::build(halted, Some(hold));
        checkpoints.register(Arc::new(Registered(tracker.inner.clone())));
        (tracker, released)
    }

    fn build(halted: Arc<AtomicBool>, hold: Option<Hold<P>>) -> (Self, Released<P>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = TrackerInner {
            partitions: Mutex::new(HashMap::new()),
            outstanding: AtomicUsize::new(0),
            released: tx,
            halted,
            idle: Notify::new(),
            progress: Notify::new(),
            hold,
        };
        (AckTracker { inner: Arc::new(inner) }, rx)
    }

    /// Registers a batch of `messages` messages read from `partition`, whose
    /// position (what the source needs to commit it) is `position`.
    pub fn register(&self, partition: u32, position: P, messages: usize) -> AckToken {
        let seq = {
            let mut partitions = self.inner.partitions.lock();
            let queue = partitions
                .entry(partition)
                .or_insert_with(|| PartitionQueue { front_seq: 0, batches: VecDeque::new() });
            queue.batches.push_back((Some(position), false));
            queue.front_seq + queue.batches.len() as u64 - 1
        };
        self.inner.outstanding.fetch_add(1, Ordering::AcqRel);
        let tracker: Arc<dyn Completer> = self.inner.clone();
        let token = AckToken(Arc::new(AckNode {
            pending: AtomicUsize::new(messages.max(1)),
            on_done: OnDone::Source { tracker, partition, seq },
            reservation: OnceLock::new(),
        }));
        if messages == 0 {
            token.done(1);
        }
        token
    }

    /// Batches registered and not yet done.
    pub fn outstanding(&self) -> usize {
        self.inner.outstanding.load(Ordering::Acquire)
    }

    /// Waits until every registered batch is done and its position
    /// released to the source (with checkpoints: made durable by one), or
    /// the pipeline halted.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.outstanding() == 0 || self.inner.halted.load(Ordering::Acquire) {
                return;
            }
            if let Some(hold) = &self.inner.hold
                && self.inner.in_flight() == 0
            {
                // Only held positions are left: ask for their checkpoint.
                hold.checkpoints.request();
            }
            notified.await;
        }
    }

    /// Wakes [`AckTracker::wait_idle`] callers to re-check (after a halt).
    pub fn wake(&self) {
        self.inner.idle.notify_waiters();
        self.inner.progress.notify_waiters();
    }

    /// Batches of `partition` registered and not yet released (with
    /// checkpoints: or released and held).
    pub fn outstanding_in(&self, partition: u32) -> usize {
        let queued = self.inner.partitions.lock().get(&partition).map_or(0, |queue| queue.batches.len());
        queued + self.held_in(partition)
    }

    fn held_in(&self, partition: u32) -> usize {
        self.inner.hold.as_ref().map_or(0, |hold| hold.held.lock().iter().filter(|(p, _)| *p == partition).count())
    }

    /// Waits until every registered batch of `partition` is done and its
    /// position released (or the pipeline halted). A source calls it before
    /// it gives a partition up, e.g. on a Kafka rebalance, so that it can
    /// commit the partition's final watermark first.
    pub async fn wait_partition_idle(&self, partition: u32) {
        loop {
            let notified = self.inner.progress.notified();
            if self.outstanding_in(partition) == 0 || self.inner.halted.load(Ordering::Acquire) {
                return;
            }
            if let Some(hold) = &self.inner.hold
                && self.outstanding_in(partition) == self.held_in(partition)
            {
                hold.checkpoints.request();
            }
            notified.await;
        }
    }
}

impl<P: Send + 'static> Completer for TrackerInner<P> {
    fn complete(&self, partition: u32, seq: u64) {
        if self.halted.load(Ordering::Acquire) {
            // Halt: acknowledge nothing more, whatever finishes now.
            self.idle.notify_waiters();
            self.progress.notify_waiters();
            return;
        }
        let mut partitions = self.partitions.lock();
        let Some(queue) = partitions.get_mut(&partition) else { return };
        let Some(index) = seq.checked_sub(queue.front_seq) else { return };
        if let Some(entry) = queue.batches.get_mut(index as usize) {
            entry.1 = true;
        }
        let mut released = 0;
        let mut pushed = 0;
        let mut held = self.hold.as_ref().map(|hold| hold.held.lock());
        while queue.batches.front().is_some_and(|(_, done)| *done) {
            let (position, _) = queue.batches.pop_front().expect("front exists");
            queue.front_seq += 1;
            released += 1;
            match (position, held.as_mut()) {
                // Held for the next checkpoint; still outstanding.
                (Some(position), Some(held)) => {
                    held.push((partition, position));
                    pushed += 1;
                }
                // The source may have stopped listening during shutdown; the
                // position is then simply not committed (at-least-once).
                (Some(position), None) => drop(self.released.send((partition, position))),
                (None, _) => {}
            }
        }
        if let Some(hold) = &self.hold {
            hold.count.fetch_add(pushed, Ordering::AcqRel);
        }
        drop(held);
        drop(partitions);
        if released == 0 {
            return;
        }
        let gone = released - pushed;
        if gone > 0 && self.outstanding.fetch_sub(gone, Ordering::AcqRel) == gone {
            self.idle.notify_waiters();
        }
        if pushed > 0 {
            // Into the hold: wake the idle waiters to ask for a checkpoint.
            self.idle.notify_waiters();
        }
        self.progress.notify_waiters();
    }
}

impl<P> TrackerInner<P> {
    /// Batches registered and neither released nor held.
    fn in_flight(&self) -> usize {
        let held = self.hold.as_ref().map_or(0, |hold| hold.count.load(Ordering::Acquire));
        self.outstanding.load(Ordering::Acquire).saturating_sub(held)
    }
}

/// A checkpointed tracker as the checkpoint coordinator holds it.
struct Registered<P>(Arc<TrackerInner<P>>);

impl<P: Send + 'static> Holding for Registered<P> {
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let notified = self.0.progress.notified();
                if self.0.in_flight() == 0 || self.0.halted.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        })
    }

    fn take(&self) -> Box<dyn Taken> {
        let hold = self.0.hold.as_ref().expect("only checkpointed trackers are registered");
        let positions = std::mem::take(&mut *hold.held.lock());
        let mut by_partition: Vec<(u32, Vec<&P>)> = Vec::new();
        for (partition, position) in &positions {
            match by_partition.iter_mut().find(|(p, _)| p == partition) {
                Some((_, list)) => list.push(position),
                None => by_partition.push((*partition, vec![position])),
            }
        }
        let records = by_partition
            .into_iter()
            .filter_map(|(partition, list)| (hold.encode)(partition, &list))
            .map(|(key, value)| PositionRecord { source: hold.source.to_string(), key, value })
            .collect();
        Box::new(TakenPositions { tracker: self.0.clone(), positions, records })
    }
}

/// Positions taken for a checkpoint; still outstanding until published.
struct TakenPositions<P> {
    tracker: Arc<TrackerInner<P>>,
    positions: Vec<(u32, P)>,
    records: Vec<PositionRecord>,
}

impl<P: Send + 'static> Taken for TakenPositions<P> {
    fn records(&self) -> Vec<PositionRecord> {
        self.records.clone()
    }

    fn publish(self: Box<Self>) {
        let tracker = self.tracker;
        let n = self.positions.len();
        if n == 0 {
            return;
        }
        for position in self.positions {
            // A source that already stopped commits nothing more; the
            // recorded position is re-applied by the next run.
            let _ = tracker.released.send(position);
        }
        if let Some(hold) = &tracker.hold {
            hold.count.fetch_sub(n, Ordering::AcqRel);
        }
        if tracker.outstanding.fetch_sub(n, Ordering::AcqRel) == n {
            tracker.idle.notify_waiters();
        }
        tracker.progress.notify_waiters();
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (AckTracker<u64>, Released<u64>, Arc<AtomicBool>) {
        let halted = Arc::new(AtomicBool::new(false));
        let (t, r) = AckTracker::new(halted.clone());
        (t, r, halted)
    }

    #[test]
    fn a_notifying_token_fires_when_done_and_errs_when_dropped_unfinished() {
        let (token, mut done) = AckToken::notifying(2);
        token.done(1);
        assert!(done.try_recv().is_err(), "one piece is still outstanding");
        token.done(1);
        assert!(done.try_recv().is_ok());
        let (token, mut dropped) = AckToken::notifying(1);
        drop(token);
        assert!(matches!(dropped.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    }

    #[test]
    fn releases_contiguous_watermark_per_partition() {
        let (tracker, mut released, _) = tracker();
        let a = tracker.register(0, 10, 2);
        let b = tracker.register(0, 20, 1);
        let c = tracker.register(1, 5, 1);
        b.done(1);
        c.done(1);
        assert_eq!(released.try_recv().unwrap(), (1, 5), "partition 1 is independent");
        assert!(released.try_recv().is_err(), "batch 20 finished first but must wait for batch 10");
        a.done(1);
        assert!(released.try_recv().is_err(), "batch 10 still has a piece outstanding");
        a.done(1);
        assert_eq!(released.try_recv().unwrap(), (0, 10));
        assert_eq!(released.try_recv().unwrap(), (0, 20));
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn flat_map_and_groups_count_pieces() {
        let (tracker, mut released, _) = tracker();
        let t = tracker.register(0, 1, 1);
        t.add(2); // one message became three outputs
        let group = AckToken::group(vec![t.clone()], 2);
        done_all(&[t.clone(), t.clone()]);
        assert!(released.try_recv().is_err());
        group.done(2);
        assert_eq!(released.try_recv().unwrap(), (0, 1));
    }

    #[test]
    fn halt_releases_nothing_more() {
        let (tracker, mut released, halted) = tracker();
        let t = tracker.register(0, 1, 1);
        halted.store(true, Ordering::Release);
        t.done(1);
        assert!(released.try_recv().is_err());
    }

    #[test]
    fn outstanding_is_counted_per_partition() {
        let (tracker, mut released, _) = tracker();
        let a = tracker.register(0, 1, 1);
        let b = tracker.register(0, 2, 1);
        let c = tracker.register(1, 1, 1);
        assert_eq!((tracker.outstanding_in(0), tracker.outstanding_in(1), tracker.outstanding_in(2)), (2, 1, 0));
        b.done(1);
        assert_eq!(tracker.outstanding_in(0), 2, "batch 2 is done but not released before batch 1");
        a.done(1);
        c.done(1);
        assert_eq!((tracker.outstanding_in(0), tracker.outstanding_in(1)), (0, 0));
        assert_eq!(released.try_recv().unwrap(), (0, 1));
    }

    #[tokio::test]
    async fn waits_for_one_partition_to_drain() {
        let (tracker, mut released, _) = tracker();
        let a = tracker.register(0, 1, 1);
        let other = tracker.register(1, 1, 1);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_partition_idle(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        a.done(1);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("partition 0 drained although partition 1 is still outstanding")
            .unwrap();
        assert_eq!(released.try_recv().unwrap(), (0, 1));
        assert_eq!(tracker.outstanding_in(1), 1);
        other.done(1);
    }

    #[tokio::test]
    async fn partition_wait_ends_on_halt() {
        let (tracker, _released, halted) = tracker();
        let t = tracker.register(0, 1, 1);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_partition_idle(0).await }
        });
        tokio::task::yield_now().await;
        halted.store(true, Ordering::Release);
        t.done(1);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.expect("halt ends the wait").unwrap();
    }

    #[test]
    fn empty_batch_is_done_at_once() {
        let (tracker, mut released, _) = tracker();
        let _ = tracker.register(3, 7, 0);
        assert_eq!(released.try_recv().unwrap(), (3, 7));
    }
}
