//! Checkpoints: stage state and the source positions it covers, made
//! durable together.
//!
//! Without checkpoints a source commits a position as soon as every output
//! of its batch is written, while stage state is saved on its own schedule;
//! after a crash the two disagree and a keyed count is off by the replayed
//! messages. With checkpoints (a pipeline with a state store):
//!
//! - a checkpointed [`AckTracker`](super::ack::AckTracker) *holds* the
//!   positions it would release, instead of handing them to its source;
//! - a checkpoint closes the gate in front of the pipeline (sources wait in
//!   [`SourceContext::hand_over`](super::source::SourceContext::hand_over)),
//!   waits until no batch of a checkpointed source is in flight, and writes
//!   the stages' changed keys and the held positions in one transaction of
//!   the state store; only then are the held positions handed to their
//!   sources, which commit them to their brokers;
//! - on restart a source first re-applies the positions recorded with the
//!   last checkpoint (seek past them, acknowledge them): the broker may not
//!   have received that last commit before the crash.
//!
//! So the saved state always holds the effects of exactly the messages up to
//! the recorded positions: replayed messages are applied to state once.
//! When no state changed since the last checkpoint the gate stays open: the
//! positions released so far carry no state effects and are recorded as is.
//!
//! Under `delivery = "exactly-once"` a checkpoint also ends a
//! [`Transaction`]: every checkpoint closes the gate (the outputs written
//! since the last one are in the open transaction), writes the store with a
//! pending mark, then commits the transaction with the positions; a
//! transaction that fails halts the run, and the restart settles the
//! pending mark by the transaction's outcome
//! ([`StateStore::resolve`](crate::store::StateStore::resolve)).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use super::control::Control;
use crate::store::PositionRecord;

/// What a checkpoint makes durable besides the positions: the pipeline's
/// stage state.
pub trait CheckpointStore: Send + Sync {
    /// Whether any stage state changed since the last commit.
    fn has_changes(&self) -> bool;
    /// Makes `positions` durable, with every stage's changes when
    /// `with_state`, in one transaction; marked pending until the
    /// exactly-once `transaction` of that name commits, when there is one.
    fn commit(&self, positions: &[PositionRecord], with_state: bool, transaction: Option<&str>) -> Result<(), String>;
}

/// Outputs made visible together with the input positions that produced
/// them: the exactly-once transaction a checkpoint ends.
pub trait Transaction: Send + Sync + 'static {
    /// The name a pending checkpoint records (Kafka: the `transactional.id`).
    fn name(&self) -> Result<String, String>;
    /// Commits what was written since the last commit together with
    /// `positions`, and begins the next transaction. Implementations keep
    /// blocking client calls off the async workers.
    fn commit(
        self: Arc<Self>,
        positions: Vec<PositionRecord>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// The pipeline's transaction, typed (for the connectors) and erased (for
/// the coordinator).
type TransactionSlot = (Arc<dyn Any + Send + Sync>, Arc<dyn Transaction>);

/// A checkpointed tracker, as the coordinator sees it (its position type
/// erased).
pub(crate) trait Holding: Send + Sync {
    /// Batches registered and neither released nor held.
    fn in_flight(&self) -> usize;
    /// Waits until [`Holding::in_flight`] is 0 or the pipeline halted.
    fn settled(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Takes the held positions.
    fn take(&self) -> Box<dyn Taken>;
}

/// Positions taken from a tracker for one checkpoint.
pub(crate) trait Taken: Send {
    /// How the store records them.
    fn records(&self) -> Vec<PositionRecord>;
    /// Hands them to the source (after the checkpoint is durable).
    fn publish(self: Box<Self>);
}

/// Turns the positions of one partition, in release order, into the record
/// a restart re-applies: `(key, value)`, `None` to record nothing, a `None`
/// value to remove the partition's record.
pub type Encoder<P> = Box<dyn Fn(u32, &[&P]) -> Option<(String, Option<Vec<u8>>)> + Send + Sync>;

/// The pipeline's checkpoints: the gate, the checkpointed trackers and the
/// positions recorded by the last run.
#[derive(Clone)]
pub struct Checkpoints {
    inner: Arc<Inner>,
}

struct Inner {
    gate: Arc<RwLock<()>>,
    trackers: Mutex<Vec<Arc<dyn Holding>>>,
    requested: Arc<Notify>,
    restored: HashMap<String, Vec<(String, Vec<u8>)>>,
    /// Positions taken for a checkpoint whose commit failed: recorded and
    /// published with the next one.
    unpublished: Mutex<Vec<Box<dyn Taken>>>,
    /// Whether checkpoints end a transaction (`delivery = "exactly-once"`).
    exactly_once: bool,
    transaction: Mutex<Option<TransactionSlot>>,
}

impl Checkpoints {
    /// Checkpoints for a pipeline whose last run recorded `restored`
    /// (source name → its records).
    pub fn new(restored: HashMap<String, Vec<(String, Vec<u8>)>>) -> Self {
        Self::with_delivery(restored, false)
    }

    /// Checkpoints that end a transaction each when `exactly_once`.
    pub fn with_delivery(restored: HashMap<String, Vec<(String, Vec<u8>)>>, exactly_once: bool) -> Self {
        Checkpoints {
            inner: Arc::new(Inner {
                gate: Arc::new(RwLock::new(())),
                trackers: Mutex::default(),
                requested: Arc::new(Notify::new()),
                restored,
                unpublished: Mutex::default(),
                exactly_once,
                transaction: Mutex::default(),
            }),
        }
    }

    /// The pipeline's exactly-once transaction, made by `make` at the first
    /// call (by a sink, which knows the producer's settings); `None` under
    /// at-least-once delivery.
    pub fn transaction<T: Transaction>(&self, make: impl FnOnce() -> T) -> Option<Arc<T>> {
        if !self.inner.exactly_once {
            return None;
        }
        let mut slot = self.inner.transaction.lock();
        let (typed, _) = slot.get_or_insert_with(|| {
            let made = Arc::new(make());
            (made.clone() as Arc<dyn Any + Send + Sync>, made as Arc<dyn Transaction>)
        });
        typed.clone().downcast().ok()
    }

    /// The transaction a sink made, for the source that feeds it.
    pub fn existing_transaction<T: Transaction>(&self) -> Option<Arc<T>> {
        let slot = self.inner.transaction.lock();
        slot.as_ref().and_then(|(typed, _)| typed.clone().downcast().ok())
    }

    /// Whether checkpoints end a transaction (`delivery = "exactly-once"`).
    pub fn exactly_once(&self) -> bool {
        self.inner.exactly_once
    }

    fn erased_transaction(&self) -> Option<Arc<dyn Transaction>> {
        self.inner.transaction.lock().as_ref().map(|(_, erased)| erased.clone())
    }

    /// The records the last run left for `source` (key, value).
    pub fn restored(&self, source: &str) -> &[(String, Vec<u8>)] {
        self.inner.restored.get(source).map_or(&[], Vec::as_slice)
    }

    /// Passage through the gate: held by a source while it registers and
    /// hands on a batch; a checkpoint waits for it and holds new ones back.
    pub async fn pass(&self) -> OwnedRwLockReadGuard<()> {
        self.inner.gate.clone().read_owned().await
    }

    /// Asks for a checkpoint soon (a source waits for its held positions).
    pub fn request(&self) {
        self.inner.requested.notify_one();
    }

    pub(crate) fn register(&self, tracker: Arc<dyn Holding>) {
        self.inner.trackers.lock().push(tracker);
    }

    /// Runs a checkpoint every `interval`, or sooner when asked, until
    /// `stop` fires. A checkpoint under way is finished, not abandoned: the
    /// positions it took must be published or kept for the last one. After
    /// a halt, checkpoints commit nothing; a transaction that fails halts.
    pub async fn run(
        &self,
        interval: Duration,
        store: Arc<dyn CheckpointStore>,
        stop: CancellationToken,
        control: Control,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = self.inner.requested.notified() => {}
            }
            self.checkpoint(store.as_ref(), &control).await;
        }
    }

    /// One checkpoint while the pipeline runs.
    async fn checkpoint(&self, store: &dyn CheckpointStore, control: &Control) {
        let halt = control.halt_signal();
        let trackers: Vec<Arc<dyn Holding>> = self.inner.trackers.lock().clone();
        // Positions released before a look at the state that finds nothing
        // changed carry no state effects: record them without the gate
        // (unless outputs wait in a transaction: they must be covered).
        let early = take_all(&trackers);
        if !self.inner.exactly_once && !store.has_changes() {
            self.commit(store, early, false, control).await;
            return;
        }
        let _gate = self.inner.gate.write().await;
        let settled = async {
            for tracker in &trackers {
                tracker.settled().await;
            }
        };
        tokio::select! {
            () = settled => {}
            // After a halt, batches in flight may never finish.
            _ = halt.cancelled() => {}
        }
        if halt.is_cancelled() || trackers.iter().any(|t| t.in_flight() > 0) {
            // Halted: nothing in flight will finish; commit nothing.
            self.inner.unpublished.lock().extend(early);
            return;
        }
        let mut taken = early;
        taken.extend(take_all(&trackers));
        self.commit(store, taken, true, control).await;
    }

    /// The last checkpoint, once the pipeline stopped. When batches of a
    /// checkpointed source never finished (a halt, a drain that timed out),
    /// the state since the last checkpoint holds their effects and is not
    /// saved: they are read again and applied then.
    pub async fn finish(&self, store: &dyn CheckpointStore, control: &Control) {
        if self.inner.exactly_once && control.is_halted() {
            // The transaction is aborted by the restart; so is this state.
            return;
        }
        let trackers: Vec<Arc<dyn Holding>> = self.inner.trackers.lock().clone();
        let unfinished: usize = trackers.iter().map(|t| t.in_flight()).sum();
        if unfinished > 0 {
            tracing::warn!(
                "not saving stage state changed since the last checkpoint: {unfinished} source batches did not \
                 finish; they are read again on restart and applied to the saved state then"
            );
            return;
        }
        self.commit(store, take_all(&trackers), true, control).await;
    }

    async fn commit(
        &self,
        store: &dyn CheckpointStore,
        taken: Vec<Box<dyn Taken>>,
        with_state: bool,
        control: &Control,
    ) {
        let mut all = std::mem::take(&mut *self.inner.unpublished.lock());
        all.extend(taken);
        let records: Vec<PositionRecord> = all.iter().flat_map(|t| t.records()).collect();
        if records.is_empty() && !with_state {
            all.into_iter().for_each(|t| t.publish());
            return;
        }
        let transaction = self.erased_transaction();
        let Some(transaction) = transaction.filter(|_| !records.is_empty()) else {
            // At-least-once, or nothing read since the last transaction
            // (and so no output and no state change to cover).
            match store.commit(&records, with_state, None) {
                Ok(()) => all.into_iter().for_each(|t| t.publish()),
                Err(e) => {
                    // Nothing is published: the sources commit nothing past
                    // the last durable checkpoint. Tried again at the next one.
                    tracing::error!("checkpoint failed (retried at the next one): {e}");
                    self.inner.unpublished.lock().extend(all);
                }
            }
            return;
        };
        // Exactly-once: the store first (marked pending), so that a
        // committed transaction always has its state; then the transaction.
        let name = match transaction.name() {
            Ok(name) => name,
            Err(e) => {
                control.halt(format!("exactly-once: {e}"));
                return;
            }
        };
        if let Err(e) = store.commit(&records, with_state, Some(&name)) {
            tracing::error!("checkpoint failed (retried at the next one; the transaction stays open): {e}");
            self.inner.unpublished.lock().extend(all);
            return;
        }
        match transaction.commit(records).await {
            Ok(()) => all.into_iter().for_each(|t| t.publish()),
            Err(e) => control.halt(format!(
                "exactly-once: committing transaction `{name}` failed: {e}; stopping so that a restart resumes \
                 from the last committed transaction (its outputs were never visible to read_committed readers)"
            )),
        }
    }
}

fn take_all(trackers: &[Arc<dyn Holding>]) -> Vec<Box<dyn Taken>> {
    trackers.iter().map(|t| t.take()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::flow::ack::AckTracker;
    use crate::plugin::state::{PipelineState, StageState};
    use crate::store::StateStore;

    fn control() -> Control {
        Control::new(CancellationToken::new())
    }

    fn encoder() -> Encoder<u64> {
        Box::new(|partition, positions| Some((partition.to_string(), Some(positions.last()?.to_string().into_bytes()))))
    }

    #[tokio::test]
    async fn positions_reach_the_source_only_with_the_state_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let state = Arc::new(StageState::open(store.clone(), "count", 1 << 20).unwrap());
        let durable = PipelineState::new(store.clone(), vec![state.clone()]);
        let checkpoints = Checkpoints::new(HashMap::new());
        let halted = Arc::new(AtomicBool::new(false));
        let (tracker, mut released) = AckTracker::checkpointed(halted, &checkpoints, "in".into(), encoder());

        let token = tracker.register(0, 10, 1);
        state.set(b"k".to_vec(), b"1".to_vec()).unwrap();
        token.done(1);
        assert!(released.try_recv().is_err(), "held until a checkpoint");
        assert_eq!(tracker.outstanding(), 1, "a held position is still outstanding for its source");

        checkpoints.checkpoint(&durable, &control()).await;
        assert_eq!(released.try_recv().unwrap(), (0, 10));
        assert_eq!(tracker.outstanding(), 0);
        assert_eq!(store.positions("in").unwrap(), [("0".to_string(), b"10".to_vec())]);
        assert_eq!(store.load("count").unwrap()[b"k".as_slice()], b"1");

        // No state change: the position is recorded without closing the gate.
        let token = tracker.register(0, 20, 1);
        token.done(1);
        checkpoints.checkpoint(&durable, &control()).await;
        assert_eq!(released.try_recv().unwrap(), (0, 20));
        assert_eq!(store.positions("in").unwrap(), [("0".to_string(), b"20".to_vec())]);
    }

    #[tokio::test]
    async fn a_checkpoint_waits_for_batches_in_flight_while_state_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let state = Arc::new(StageState::open(store.clone(), "count", 1 << 20).unwrap());
        let durable = Arc::new(PipelineState::new(store.clone(), vec![state.clone()]));
        let checkpoints = Checkpoints::new(HashMap::new());
        let (tracker, mut released) =
            AckTracker::checkpointed(Arc::new(AtomicBool::new(false)), &checkpoints, "in".into(), encoder());
        let token = tracker.register(0, 5, 1);
        state.set(b"k".to_vec(), b"1".to_vec()).unwrap();
        let running = tokio::spawn({
            let (checkpoints, durable) = (checkpoints.clone(), durable.clone());
            async move { checkpoints.checkpoint(durable.as_ref(), &control()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!running.is_finished(), "the batch in flight may still change state");
        assert!(store.load("count").unwrap().is_empty());
        token.done(1);
        tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap();
        assert_eq!(released.try_recv().unwrap(), (0, 5));
        assert_eq!(store.positions("in").unwrap(), [("0".to_string(), b"5".to_vec())]);
    }
}
