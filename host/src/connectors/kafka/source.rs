//! The Kafka source: a consumer-group member that hands per-partition
//! batches to the pipeline and commits the acknowledged watermark.
//!
//! The tracker knows partitions as `u32` ids: the topic's index in the
//! subscription in the high bits, the partition number in the low
//! [`PARTITION_BITS`]. A batch's position is the offset after its last
//! message, so the released watermark is exactly the offset to commit.
//!
//! Rebalances are served inside `recv()` (librdkafka calls the rebalance
//! callback while this task polls). On revoke the callback waits, off the
//! async worker (`block_in_place`), until the in-flight batches of the
//! revoked partitions are finished, commits their watermark synchronously
//! and only then lets librdkafka give them up. Messages of a revoked
//! partition that were read but not yet handed on are dropped: the next
//! owner reads them again from the committed offset.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use futures_util::FutureExt;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::{KafkaSourceSpec, KafkaTransaction, Start};
use crate::connectors::{Source, SourceContext};
use crate::message::{Header, Message, Origin};
use crate::flow::ack::{AckTracker, Released};

mod positioning;
use positioning::{position_by_checkpoint, position_by_time};

/// Bits of a tracker partition id that hold the Kafka partition number.
const PARTITION_BITS: u32 = 20;

/// How long a revoke waits for the in-flight messages of the revoked
/// partitions before it gives them up anyway (they are then read again by
/// the next owner: duplicates, never loss).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a periodic commit may go unanswered before it is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(5);

/// Timeout of the metadata look-ups of a timestamp start.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads Kafka topics as a consumer-group member.
pub struct KafkaSource {
    spec: KafkaSourceSpec,
}

impl KafkaSource {
    /// A source for `spec`; it connects when it runs.
    pub fn new(spec: KafkaSourceSpec) -> Self {
        KafkaSource { spec }
    }
}

/// What the reading task and the rebalance callback share.
struct Shared {
    topics: Vec<String>,
    start: Start,
    tracker: AckTracker<i64>,
    released: Mutex<Released<i64>>,
    state: Mutex<State>,
    handle: Handle,
    source: String,
    /// Offsets the last checkpoint of the previous run recorded, by
    /// partition: a partition assigned for the first time starts there when
    /// the group's committed offset is behind (the commit that followed the
    /// checkpoint did not reach the broker before a crash).
    restored: Mutex<HashMap<u32, i64>>,
    /// Under exactly-once delivery: the transaction that commits the offsets
    /// (the source commits none itself), and the group it names them for.
    transaction: Option<(Arc<KafkaTransaction>, String)>,
}

#[derive(Default)]
struct State {
    /// Partitions currently assigned to this member.
    owned: HashSet<u32>,
    /// Released watermark (next offset to read) per partition.
    watermark: HashMap<u32, i64>,
    /// Offsets sent in a periodic commit and when: not sent again until the
    /// broker answers or [`RESEND_AFTER`] passes without an answer (a commit
    /// lost while the coordinator moves must not stall the watermark).
    sent: HashMap<u32, (i64, Instant)>,
    /// Offsets the broker confirmed.
    confirmed: HashMap<u32, i64>,
}

impl Shared {
    fn id(&self, topic: &str, partition: i32) -> Option<u32> {
        let index = self.topics.iter().position(|t| t == topic)?;
        let partition = u32::try_from(partition).ok().filter(|p| *p < 1 << PARTITION_BITS)?;
        Some(((index as u32) << PARTITION_BITS) | partition)
    }

    fn topic_partition(&self, id: u32) -> (&str, i32) {
        (&self.topics[(id >> PARTITION_BITS) as usize], (id & ((1 << PARTITION_BITS) - 1)) as i32)
    }

    fn ids(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements().iter().filter_map(|e| self.id(e.topic(), e.partition())).collect()
    }

    fn describe(&self, ids: &[u32]) -> String {
        let mut names: Vec<String> = ids
            .iter()
            .map(|id| {
                let (topic, partition) = self.topic_partition(*id);
                format!("{topic}/{partition}")
            })
            .collect();
        names.sort();
        names.join(", ")
    }

    fn owns(&self, id: u32) -> bool {
        self.state.lock().owned.contains(&id)
    }

    /// Moves released positions into the watermark table.
    fn pump(&self) {
        let mut released = self.released.lock();
        let mut state = self.state.lock();
        while let Ok((id, next)) = released.try_recv() {
            let mark = state.watermark.entry(id).or_insert(next);
            *mark = (*mark).max(next);
        }
    }

    /// The offsets to commit: watermarks of owned partitions (of `only`, when
    /// given) beyond what the broker confirmed (every watermark when
    /// `everything`); a `periodic` commit leaves out what it sent recently
    /// and is still waiting for.
    fn pending(&self, only: Option<&[u32]>, periodic: bool, everything: bool) -> Vec<(u32, i64)> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let state = &mut *state;
        let due: Vec<(u32, i64)> = state
            .watermark
            .iter()
            .filter(|(id, _)| only.map_or(state.owned.contains(id), |only| only.contains(id)))
            .filter(|(id, next)| everything || state.confirmed.get(id).is_none_or(|c| c < next))
            .filter(|(id, next)| {
                !periodic
                    || state
                        .sent
                        .get(id)
                        .is_none_or(|(sent, at)| sent < next || now.duration_since(*at) >= RESEND_AFTER)
            })
            .map(|(id, next)| (*id, *next))
            .collect();
        if periodic {
            state.sent.extend(due.iter().map(|(id, next)| (*id, (*next, now))));
        }
        due
    }

    fn list(&self, offsets: &[(u32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (id, next) in offsets {
            let (topic, partition) = self.topic_partition(*id);
            let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(*next));
        }
        tpl
    }

    fn confirm(&self, offsets: impl IntoIterator<Item = (u32, i64)>) {
        let mut state = self.state.lock();
        for (id, next) in offsets {
            let mark = state.confirmed.entry(id).or_insert(next);
            *mark = (*mark).max(next);
        }
    }

    /// Commits the watermark of `only` (or every owned partition).
    /// `Async` is the periodic commit (its outcome comes back through the
    /// commit callback); `Sync` is the final one of a revoke or shutdown.
    fn commit<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K, only: Option<&[u32]>, mode: CommitMode) {
        self.pump();
        if self.transaction.is_some() {
            // The checkpoints' transactions commit the offsets.
            return;
        }
        // A partition's last commit (revoke, shutdown) sends its watermark
        // again even when confirmed: a periodic commit delayed by a broker
        // outage can reach the broker after a newer one was confirmed, and
        // would otherwise be the last word.
        let last = matches!(mode, CommitMode::Sync);
        let offsets = self.pending(only, matches!(mode, CommitMode::Async), last);
        if offsets.is_empty() {
            return;
        }
        match consumer.commit(&self.list(&offsets), mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => self.confirm(offsets),
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(source = %self.source, "committing offsets failed (will retry): {error}");
                let mut state = self.state.lock();
                for (id, _) in &offsets {
                    state.sent.remove(id);
                }
            }
        }
    }
}

/// The consumer's context: rebalance and commit callbacks.
struct KafkaContext {
    shared: Arc<Shared>,
}

impl ClientContext for KafkaContext {}

impl ConsumerContext for KafkaContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        // Waiting for the pipeline blocks this thread: on a multi-threaded
        // runtime, hand the worker's other tasks over first.
        let flavor = Handle::try_current().ok().map(|h| h.runtime_flavor());
        let can_wait = flavor != Some(RuntimeFlavor::CurrentThread);
        if flavor == Some(RuntimeFlavor::MultiThread) {
            tokio::task::block_in_place(|| self.on_rebalance(consumer, err, tpl, can_wait));
        } else {
            self.on_rebalance(consumer, err, tpl, can_wait);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let shared = &self.shared;
        if matches!(result, Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset))) {
            return;
        }
        // The request can succeed while single partitions fail (a moving
        // coordinator, a rebalance in progress): judge each one.
        let mut confirmed = Vec::new();
        let mut failed = Vec::new();
        for e in offsets.elements() {
            let (Offset::Offset(next), Some(id)) = (e.offset(), shared.id(e.topic(), e.partition())) else {
                continue;
            };
            match result.as_ref().map_err(Clone::clone).and_then(|()| e.error()) {
                Ok(()) => confirmed.push((id, next)),
                Err(error) => failed.push((id, error)),
            }
        }
        shared.confirm(confirmed);
        if let Some((_, error)) = failed.first() {
            tracing::warn!(
                source = %shared.source,
                "offset commit failed for {} (will retry): {error}",
                shared.describe(&failed.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            );
            let mut state = shared.state.lock();
            for (id, _) in &failed {
                state.sent.remove(id);
            }
        }
    }
}

impl KafkaContext {
    fn on_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
        can_wait: bool,
    ) {
        let shared = &self.shared;
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Start::At(ts) = shared.start {
                    position_by_time(shared, consumer, tpl, ts);
                }
                let raised = position_by_checkpoint(shared, consumer, tpl);
                let ids = shared.ids(tpl);
                let owned: Vec<u32> = {
                    let mut state = shared.state.lock();
                    for id in &ids {
                        // Whatever was known of a partition we owned before
                        // is stale: its new history starts at the group's
                        // committed offset.
                        state.watermark.remove(id);
                        state.sent.remove(id);
                        state.confirmed.remove(id);
                        state.owned.insert(*id);
                    }
                    // A partition started at the checkpoint's offset commits
                    // it to the group too (the checkpoint is durable), even
                    // if nothing more arrives.
                    state.watermark.extend(raised);
                    state.owned.iter().copied().collect()
                };
                if let Some((transaction, group)) = &shared.transaction {
                    let names: Vec<String> = owned
                        .iter()
                        .map(|id| {
                            let (topic, partition) = shared.topic_partition(*id);
                            format!("{topic}/{partition}")
                        })
                        .collect();
                    transaction.assign(group, &names, consumer.group_metadata());
                }
                let result = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match result {
                    Ok(()) => tracing::info!(
                        source = %shared.source,
                        "assigned {} partitions: {}",
                        ids.len(),
                        shared.describe(&ids)
                    ),
                    Err(e) => tracing::error!(source = %shared.source, "assigning partitions failed: {e}"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let ids = shared.ids(tpl);
                if consumer.assignment_lost() {
                    tracing::warn!(
                        source = %shared.source,
                        "partitions lost (session timed out): {}; their uncommitted messages will be read again by the next owner",
                        shared.describe(&ids)
                    );
                } else {
                    self.hand_over(consumer, &ids, can_wait);
                }
                {
                    let mut state = shared.state.lock();
                    for id in &ids {
                        state.owned.remove(id);
                    }
                }
                let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = result {
                    tracing::error!(source = %shared.source, "giving up partitions failed: {e}");
                }
                tracing::info!(source = %shared.source, "revoked {} partitions: {}", ids.len(), shared.describe(&ids));
            }
            other => {
                tracing::error!(source = %shared.source, "rebalance error: {}", KafkaError::Rebalance(other.into()));
                let _ = consumer.unassign();
                shared.state.lock().owned.clear();
            }
        }
    }

    /// Waits for the in-flight batches of `ids`, then commits their watermark.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, ids: &[u32], can_wait: bool) {
        let shared = &self.shared;
        let outstanding: usize = ids.iter().map(|id| shared.tracker.outstanding_in(*id)).sum();
        if outstanding > 0 {
            let tracker = shared.tracker.clone();
            let ids_owned = ids.to_vec();
            let drained = can_wait
                && block_on(&shared.handle, async move {
                    let all = async {
                        for id in ids_owned {
                            tracker.wait_partition_idle(id).await;
                        }
                    };
                    tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_ok()
                });
            if !drained {
                tracing::warn!(
                    source = %shared.source,
                    "revoking {} before {outstanding} in-flight batches finished; they will be read again by the next owner",
                    shared.describe(ids)
                );
            }
        }
        shared.commit(consumer, Some(ids), CommitMode::Sync);
    }
}

fn block_on<F: Future>(handle: &Handle, future: F) -> F::Output {
    handle.block_on(future)
}

/// A message taken off the consumer, owned.
type Received = Result<Option<(u32, i64, Message)>, KafkaError>;

fn own(shared: &Shared, received: Result<BorrowedMessage<'_>, KafkaError>) -> Received {
    let m = received?;
    let Some(id) = shared.id(m.topic(), m.partition()) else {
        return Ok(None);
    };
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header { name: h.key.to_string(), value: h.value.map(<[u8]>::to_vec).unwrap_or_default() })
                .collect()
        })
        .unwrap_or_default();
    let message = Message {
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        timestamp_ms: m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()),
        origin: Some(Origin {
            name: m.topic().to_string(),
            partition: Some(m.partition() as u32),
            offset: Some(m.offset() as u64),
            id: None,
        }),
    };
    Ok(Some((id, m.offset(), message)))
}

/// Messages read and not yet handed on, per partition.
#[derive(Default)]
struct Buffers {
    by_partition: HashMap<u32, (Vec<Message>, i64)>,
}

impl Buffers {
    /// Adds a message; returns its partition's batch when full.
    fn add(&mut self, id: u32, offset: i64, message: Message, batch: usize) -> Option<(u32, Vec<Message>, i64)> {
        let (messages, last) = self.by_partition.entry(id).or_insert_with(|| (Vec::with_capacity(batch), 0));
        messages.push(message);
        *last = offset;
        if messages.len() >= batch {
            let (messages, last) = self.by_partition.remove(&id).expect("just added");
            return Some((id, messages, last));
        }
        None
    }

    fn take_all(&mut self) -> Vec<(u32, Vec<Message>, i64)> {
        self.by_partition.drain().map(|(id, (messages, last))| (id, messages, last)).collect()
    }
}

/// Consumer errors, logged at most once per kind every ten seconds.
#[derive(Default)]
struct ErrorLog {
    last: Option<(String, Instant)>,
}

impl ErrorLog {
    fn report(&mut self, source: &str, error: &KafkaError) {
        let text = error.to_string();
        let quiet = self.last.as_ref().is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(10));
        if !quiet {
            tracing::warn!(source, "Kafka consumer: {text}");
            self.last = Some((text, Instant::now()));
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let spec = self.spec;
        // A checkpoint records the next offset to read per partition.
        let (tracker, released) = ctx.checkpointed_tracker::<i64>({
            let topics = spec.topics.clone();
            Box::new(move |id, offsets| {
                let topic = &topics[(id >> PARTITION_BITS) as usize];
                let partition = id & ((1 << PARTITION_BITS) - 1);
                let next = offsets.iter().map(|o| **o).max()?;
                let (key, value) = super::position_record(topic, partition, next);
                Some((key, Some(value)))
            })
        });
        let transaction = match ctx.transaction::<KafkaTransaction>() {
            Some(transaction) => Some((transaction, spec.group.clone())),
            None if ctx.exactly_once() => {
                return Err(anyhow!("exactly-once delivery needs a Kafka sink to write the transaction"));
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            topics: spec.topics.clone(),
            start: spec.start,
            tracker: tracker.clone(),
            released: Mutex::new(released),
            state: Mutex::new(State::default()),
            handle: Handle::current(),
            source: ctx.name().to_string(),
            restored: Mutex::default(),
            transaction,
        });
        *shared.restored.lock() = ctx
            .restored()
            .iter()
            .filter_map(|(key, value)| {
                let (topic, partition, next) = super::parse_position(key, value)?;
                Some((shared.id(topic, partition)?, next))
            })
            .collect();
        let consumer: Arc<StreamConsumer<KafkaContext>> = Arc::new(
            spec.client_config()
                .create_with_context(KafkaContext { shared: shared.clone() })
                .context("creating the Kafka consumer")?,
        );
        let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("subscribing")?;
        let lag = super::lag::spawn(consumer.clone(), &spec, ctx.name());
        tracing::info!(source = ctx.name(), group = %spec.group, topics = %spec.topics.join(","), "Kafka source started");

        let mut tick = tokio::time::interval(spec.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let burst = spec.batch.saturating_mul(16).max(1024);
        let mut buffers = Buffers::default();
        let mut errors = ErrorLog::default();
        let outcome: Result<()> = 'read: loop {
            let first = tokio::select! {
                biased;
                _ = ctx.shutdown().cancelled() => break 'read Ok(()),
                _ = tick.tick() => {
                    shared.commit(&*consumer, None, CommitMode::Async);
                    continue;
                }
                received = consumer.recv() => own(&shared, received),
            };
            // Take what is already fetched without waiting, handing on each
            // partition's batch as it fills, then whatever is left.
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(received) = next.take() {
                match received {
                    Ok(Some((id, offset, message))) => {
                        taken += 1;
                        // A revoke (served inside recv) may have taken the
                        // partition away: its unsent messages are dropped.
                        if shared.owns(id)
                            && let Some((id, messages, last)) = buffers.add(id, offset, message, spec.batch)
                            && ctx.hand_over(&tracker, id, last + 1, messages.into()).await.is_err()
                        {
                            break 'read Ok(());
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        if let Some((code, reason)) = consumer.client().fatal_error() {
                            break 'read Err(anyhow!("Kafka consumer fatal error {code:?}: {reason}"));
                        }
                        errors.report(ctx.name(), &error);
                    }
                }
                if taken >= burst {
                    break;
                }
                next = consumer.recv().now_or_never().map(|r| own(&shared, r));
            }
            for (id, messages, last) in buffers.take_all() {
                if !shared.owns(id) {
                    continue;
                }
                if ctx.hand_over(&tracker, id, last + 1, messages.into()).await.is_err() {
                    break 'read Ok(());
                }
            }
        };

        // Stop reading; what was read and not handed on is not committed and
        // will be read again. Wait for the in-flight batches, committing as
        // they finish, then commit for good and leave the group.
        drop(buffers);
        loop {
            tokio::select! {
                _ = tracker.wait_idle() => break,
                _ = tick.tick() => shared.commit(&*consumer, None, CommitMode::Async),
            }
        }
        lag.stop().await;
        let closing = {
            let shared = shared.clone();
            let consumer = consumer.clone();
            move || {
                shared.commit(&*consumer, None, CommitMode::Sync);
                // Leaving the group revokes the partitions (nothing is in
                // flight any more) and lets the others take them over.
                drop(consumer);
            }
        };
        drop(consumer);
        tokio::task::spawn_blocking(closing).await.map_err(|e| anyhow!("closing the Kafka consumer: {e}"))?;
        tracing::info!(source = ctx.name(), "Kafka source stopped");
        outcome
    }
}
