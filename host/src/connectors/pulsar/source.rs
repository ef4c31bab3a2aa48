//! The Pulsar source: a consumer on a subscription that acknowledges only
//! what the pipeline finished.
//!
//! One task owns the consumer: it reads, hands batches on (one topic
//! partition per batch) and sends the acknowledgements of released batches.
//! The tracker knows partitions by the index of their topic name in
//! [`Partitions`]; a batch's position is the ids of its messages.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use pulsar::consumer::{ConsumerOptions, InitialPosition, Message as PulsarMessage};
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, TokioExecutor};

use super::acks::{Acks, Handed, PartialEntries, entry_id};
use super::backlog::Backlog;
use super::positions::{Book, Skip, Verdict};
use super::{PulsarSourceSpec, Start, client, explain};
use crate::connectors::{Read, Source, SourceContext};
use crate::flow::ack::{AckTracker, Released};
use crate::flow::backoff::Backoff;
use crate::message::{Header, Message, Origin};

/// Reads a topic through a subscription.
pub struct PulsarSource {
    spec: PulsarSourceSpec,
}

impl PulsarSource {
    /// A source for `spec`; it connects when it runs.
    pub fn new(spec: PulsarSourceSpec) -> Self {
        PulsarSource { spec }
    }
}

/// Topic names (partitions of a partitioned topic) by tracker partition.
#[derive(Default)]
struct Partitions {
    names: Vec<String>,
}

impl Partitions {
    /// The index of `topic`, told to `book` when it is new.
    fn index(&mut self, topic: &str, book: &Book) -> u32 {
        match self.names.iter().position(|t| t == topic) {
            Some(i) => i as u32,
            None => {
                self.names.push(topic.to_string());
                let index = (self.names.len() - 1) as u32;
                book.name(index, topic);
                index
            }
        }
    }
}

/// The partition number of a partitioned topic's partition
/// (`…-partition-N`), -1 for a topic without partitions.
fn partition_number(topic: &str) -> i32 {
    topic.rsplit_once("-partition-").and_then(|(_, n)| n.parse().ok()).unwrap_or(-1)
}

/// `ledger:entry:partition[:batch_index]`, as Pulsar's clients print ids.
fn id_text(id: &MessageIdData) -> String {
    let partition = id.partition.unwrap_or(-1);
    match id.batch_index {
        Some(index) => format!("{}:{}:{partition}:{index}", id.ledger_id, id.entry_id),
        None => format!("{}:{}:{partition}", id.ledger_id, id.entry_id),
    }
}

/// A received message as weir's, or its value and why it cannot be one.
/// Takes the message apart rather than copying its value.
fn convert(mut m: PulsarMessage<Vec<u8>>) -> Result<Message, (Vec<u8>, String)> {
    let id = m.message_id().clone();
    let key = match m.key_bytes() {
        Ok(key) => key,
        Err(e) => {
            let reason = format!("{} message {}: bad key: {e}", m.topic, id_text(&id));
            return Err((std::mem::take(&mut m.payload.data), reason));
        }
    };
    let metadata = &mut m.payload.metadata;
    let headers = std::mem::take(&mut metadata.properties)
        .into_iter()
        .map(|p| Header { name: p.key, value: p.value.into_bytes() })
        .collect();
    let timestamp_ms = metadata.event_time.filter(|t| *t > 0);
    Ok(Message {
        key,
        value: std::mem::take(&mut m.payload.data),
        headers,
        timestamp_ms,
        origin: Some(Origin {
            partition: id.partition.and_then(|p| u32::try_from(p).ok()),
            name: m.topic,
            offset: None,
            id: Some(id_text(&id)),
        }),
    })
}

/// Messages read and not yet handed on, per partition.
#[derive(Default)]
struct Buffers {
    by_partition: HashMap<u32, (Read, Vec<Handed>)>,
}

impl Buffers {
    fn add(&mut self, partition: u32, message: Result<Message, (Message, String)>, handed: Handed) {
        let (read, ids) = self.by_partition.entry(partition).or_default();
        match message {
            Ok(message) => read.messages.push(message),
            Err(rejected) => read.rejected.push(rejected),
        }
        ids.push(handed);
    }

    fn full(&self, partition: u32, batch: usize) -> bool {
        self.by_partition.get(&partition).is_some_and(|(read, _)| read.len() >= batch)
    }

    fn take(&mut self, partition: u32) -> Option<(Read, Vec<Handed>)> {
        self.by_partition.remove(&partition)
    }

    fn take_all(&mut self) -> Vec<(u32, Read, Vec<Handed>)> {
        self.by_partition.drain().map(|(p, (read, ids))| (p, read, ids)).collect()
    }
}

/// Why the read loop ended.
enum End {
    /// Stop: shutdown or the pipeline no longer takes batches.
    Stop,
    /// The consumer failed: connect again.
    Reconnect(String),
}

struct Run<'a> {
    spec: &'a PulsarSourceSpec,
    ctx: &'a SourceContext,
    tracker: AckTracker<Vec<Handed>>,
    released: Released<Vec<Handed>>,
    partitions: Partitions,
    acks: Acks,
    backlog: Option<Backlog>,
    /// The checkpoint records' side of the source.
    book: Book,
    /// What the previous run's last checkpoint recorded as applied.
    skip: Skip,
    /// On an ordered subscription, the last message handed on per
    /// partition: `(ledger, entry, batch index)`.
    last_handed: Option<Vec<Option<(u64, u64, i32)>>>,
}

#[async_trait]
impl Source for PulsarSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let spec = self.spec;
        // Acknowledgements wait for the checkpoint that covers them, which
        // records what they finished (see `positions`).
        // A non-persistent topic keeps nothing to deliver again, and its
        // messages carry no entry ids to tell them apart: no record, no skip.
        let persistent = !spec.topic.starts_with("non-persistent://");
        let skip = if persistent { Skip::restore(ctx.restored(), ctx.name()) } else { Skip::default() };
        let book = Book::restored(&skip, spec.kind.cumulative());
        let recorder = book.clone();
        let (tracker, released) = ctx.checkpointed_tracker::<Vec<Handed>>(Box::new(move |partition, batches| {
            if !persistent {
                return None;
            }
            let ids = batches.iter().flat_map(|handed| handed.iter().map(|h| (&h.id, h.entry_size)));
            recorder.record(partition, ids).map(|(topic, record)| (topic, Some(record)))
        }));
        let mut run = Run {
            spec: &spec,
            ctx: &ctx,
            tracker,
            released,
            partitions: Partitions::default(),
            acks: Acks { cumulative: spec.kind.cumulative(), entries: PartialEntries::default() },
            backlog: Backlog::new(ctx.name(), &spec.topic),
            book,
            skip,
            last_handed: (persistent && spec.kind.cumulative()).then(Vec::new),
        };
        run.restore_partial_entries();
        let mut backoff = Backoff::default();
        let mut consumer: Option<Consumer<Vec<u8>, TokioExecutor>> = None;
        let mut connected_before = false;
        loop {
            if ctx.shutdown().is_cancelled() {
                break;
            }
            let mut c = match consumer.take() {
                Some(c) => c,
                None => match run.connect().await {
                    Ok(c) => {
                        if connected_before {
                            tracing::info!(source = ctx.name(), topic = %spec.topic, "Pulsar source reconnected");
                        } else {
                            tracing::info!(
                                source = ctx.name(),
                                topic = %spec.topic,
                                subscription = %spec.subscription,
                                "Pulsar source started"
                            );
                        }
                        connected_before = true;
                        backoff.reset();
                        let mut c = c;
                        run.acknowledge_recorded(&mut c).await;
                        c
                    }
                    Err(e) => {
                        tracing::warn!(
                            source = ctx.name(),
                            "connecting to Pulsar at {} failed, retrying in {:?}: {e}",
                            spec.url,
                            backoff.peek()
                        );
                        if !backoff.sleep(ctx.shutdown()).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            match run.read(&mut c).await {
                End::Stop => {
                    consumer = Some(c);
                    break;
                }
                End::Reconnect(why) => {
                    tracing::warn!(source = ctx.name(), "Pulsar consumer failed, reconnecting: {why}");
                    drop(c);
                    if !backoff.sleep(ctx.shutdown()).await {
                        break;
                    }
                }
            }
        }
        // Stop reading; what was read and not handed on was not acknowledged
        // and comes again. Wait for the in-flight batches, acknowledging as
        // they finish.
        let mut pending = Vec::new();
        let Run { ctx, tracker, mut released, partitions, mut acks, .. } = run;
        ctx.drain(&tracker, &mut released, |partition, handed| pending.extend(acks.released(partition, handed)))
            .await;
        if !pending.is_empty() {
            match consumer.as_mut() {
                Some(c) => {
                    for (partition, id, cumulative) in pending {
                        send_ack(c, &partitions, partition, id, cumulative).await;
                    }
                }
                None => tracing::warn!(
                    source = ctx.name(),
                    "{} acknowledgements not sent (no connection to Pulsar); those messages will be delivered again",
                    pending.len()
                ),
            }
        }
        if let Some(mut c) = consumer {
            let discarded = flush_acknowledgements(&mut c).await;
            if discarded > 0 {
                tracing::debug!(source = ctx.name(), discarded, "prefetched Pulsar messages left for redelivery");
            }
            match tokio::time::timeout(CLOSE_DEADLINE, c.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(source = ctx.name(), "closing the Pulsar consumer: {e}"),
                Err(_) => tracing::warn!(
                    source = ctx.name(),
                    "closing the Pulsar consumer took over {CLOSE_DEADLINE:?}; the broker closes it with the connection"
                ),
            }
        }
        tracing::info!(source = ctx.name(), "Pulsar source stopped");
        Ok(())
    }
}

/// Longest wait for the broker to confirm the consumer's close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// How long the consumer must stay quiet before its acknowledgements count
/// as sent, and the longest the flush may take.
const FLUSH_QUIET: Duration = Duration::from_millis(200);
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Lets the acknowledgements queued in pulsar-rs's consumer engine reach
/// the broker, and returns how many prefetched messages were discarded.
///
/// The engine handles received messages and acknowledgements in one queue,
/// and handing a message on waits for room in the consumer's channel; once
/// weir stops reading, acknowledgements wait behind the messages the broker
/// sent ahead. Reading (and discarding: they were never acknowledged, so the
/// broker delivers them again) until the consumer is quiet lets them
/// through.
async fn flush_acknowledgements(consumer: &mut Consumer<Vec<u8>, TokioExecutor>) -> usize {
    let deadline = tokio::time::Instant::now() + FLUSH_DEADLINE;
    let mut discarded = 0;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(FLUSH_QUIET, consumer.next()).await {
            Ok(Some(Ok(_))) => discarded += 1,
            // Quiet, failed or ended: nothing more comes through.
            _ => break,
        }
    }
    discarded
}

async fn send_ack(
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    partitions: &Partitions,
    partition: u32,
    id: MessageIdData,
    cumulative: bool,
) {
    let topic = &partitions.names[partition as usize];
    let sent = if cumulative {
        consumer.cumulative_ack_with_id(topic, id).await
    } else {
        consumer.ack_with_id(topic, id).await
    };
    if let Err(e) = sent {
        // The message stays unacknowledged and is delivered again.
        tracing::warn!(topic, "Pulsar acknowledgement failed: {e}");
    }
}

impl Run<'_> {
    async fn connect(&self) -> Result<Consumer<Vec<u8>, TokioExecutor>, String> {
        let spec = self.spec;
        let pulsar = client(&spec.url).await.map_err(|e| explain(&e))?;
        let position = match spec.start {
            Start::Latest => InitialPosition::Latest,
            _ => InitialPosition::Earliest,
        };
        // The broker sends up to this many messages ahead of acknowledgement.
        let queue = (spec.batch * 4).clamp(1000, 50_000) as u32;
        // pulsar-rs numbers consumers from 0 in every process, and
        // pulsar-lite 0.2.0 keeps consumer ids per subscription rather than
        // per connection, so two weir processes on one subscription would
        // collide there ("Consumer 0 already exists"). A random id avoids
        // that and is as good as any on Apache Pulsar (ids are the
        // client's to choose).
        let id = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), &spec.consumer);
        pulsar
            .consumer()
            .with_consumer_id(id)
            .with_topic(&spec.topic)
            .with_subscription(&spec.subscription)
            .with_subscription_type(spec.kind.sub_type())
            .with_consumer_name(&spec.consumer)
            .with_batch_size(queue)
            .with_options(
                ConsumerOptions::default().with_initial_position(position).with_receiver_queue_size(queue).durable(true),
            )
            .build::<Vec<u8>>()
            .await
            .map_err(|e| explain(&e))
    }

    /// Reads and hands on until told to stop or the consumer fails.
    async fn read(&mut self, consumer: &mut Consumer<Vec<u8>, TokioExecutor>) -> End {
        let batch = self.spec.batch;
        let burst = batch.saturating_mul(16).max(1024);
        let mut buffers = Buffers::default();
        loop {
            let first = tokio::select! {
                biased;
                _ = self.ctx.shutdown().cancelled() => return End::Stop,
                Some((partition, handed)) = self.released.recv() => {
                    self.acknowledge(consumer, partition, handed).await;
                    continue;
                }
                _ = Backlog::due(&mut self.backlog) => {
                    if let Some(backlog) = self.backlog.as_mut() {
                        backlog.report(consumer).await;
                    }
                    continue;
                }
                next = consumer.next() => next,
            };
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(item) = next.take() {
                match item {
                    None => return End::Reconnect("the consumer's stream ended".into()),
                    Some(Err(e)) => return End::Reconnect(explain(&e)),
                    Some(Ok(m)) => {
                        taken += 1;
                        let partition = self.partitions.index(&m.topic, &self.book);
                        if self.applied_before(consumer, partition, &m).await || self.handed_before(partition, &m) {
                            // Its effects are in the restored state already,
                            // or it is on its way.
                        } else {
                            let handed = Handed { id: m.message_id().clone(), entry_size: m.message_id.batch_size };
                            let message = convert(m).map_err(|(value, reason)| (Message::from_value(value), reason));
                            buffers.add(partition, message, handed);
                            if buffers.full(partition, batch) {
                                let (read, ids) = buffers.take(partition).expect("full");
                                if self.ctx.hand_over(&self.tracker, partition, ids, read).await.is_err() {
                                    return End::Stop;
                                }
                            }
                        }
                    }
                }
                if taken >= burst {
                    break;
                }
                next = consumer.next().now_or_never();
            }
            for (partition, read, ids) in buffers.take_all() {
                if self.ctx.hand_over(&self.tracker, partition, ids, read).await.is_err() {
                    return End::Stop;
                }
            }
            while let Ok((partition, handed)) = self.released.try_recv() {
                self.acknowledge(consumer, partition, handed).await;
            }
        }
    }

    /// Whether the previous run applied message `m` (its last checkpoint
    /// recorded it): a message of an entry it finished is acknowledged
    /// (again) as part of the entry, and neither is handed on.
    async fn applied_before(
        &mut self,
        consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
        partition: u32,
        m: &PulsarMessage<Vec<u8>>,
    ) -> bool {
        if self.skip.is_empty() {
            return false;
        }
        match self.skip.verdict(partition, m.message_id()) {
            Verdict::New => false,
            Verdict::Applied => true,
            Verdict::Finished => {
                send_ack(consumer, &self.partitions, partition, entry_id(m.message_id()), false).await;
                true
            }
        }
    }

    /// Whether message `m` was handed on already in this run: on an ordered
    /// subscription the broker delivers each topic in order, so a message at
    /// or before the last one handed on is a copy delivered again (after a
    /// reconnect, or a failover switch), whose first copy is on its way.
    fn handed_before(&mut self, partition: u32, m: &PulsarMessage<Vec<u8>>) -> bool {
        let Some(last_handed) = self.last_handed.as_mut() else { return false };
        let id = m.message_id();
        let position = (id.ledger_id, id.entry_id, id.batch_index.unwrap_or(-1));
        let index = partition as usize;
        if last_handed.len() <= index {
            last_handed.resize(index + 1, None);
        }
        if last_handed[index].is_some_and(|last| position <= last) {
            return true;
        }
        last_handed[index] = Some(position);
        false
    }

    /// Gives each topic the previous run recorded its partition index, and
    /// marks the batch indexes it applied of its partly finished entries as
    /// done, so that each entry is acknowledged once its other messages are
    /// finished.
    fn restore_partial_entries(&mut self) {
        for topic in self.skip.unbound() {
            let partition = self.partitions.index(&topic, &self.book);
            self.skip.bind(partition, &topic);
            for ((ledger, entry), size, done) in self.skip.partial(partition) {
                self.acks.entries.insert((partition, ledger, entry), size, done);
            }
        }
    }

    /// Acknowledges again the entries the previous run finished (their
    /// acknowledgements may not have reached the broker before it stopped).
    async fn acknowledge_recorded(&mut self, consumer: &mut Consumer<Vec<u8>, TokioExecutor>) {
        for partition in self.skip.partitions() {
            let number = partition_number(&self.partitions.names[partition as usize]);
            let id = |(ledger_id, entry_id)| MessageIdData { ledger_id, entry_id, partition: Some(number), ..Default::default() };
            for entry in self.skip.finished(partition) {
                send_ack(consumer, &self.partitions, partition, id(entry), false).await;
            }
            if let Some(upto) = self.skip.upto(partition) {
                send_ack(consumer, &self.partitions, partition, id(upto), true).await;
            }
        }
    }

    async fn acknowledge(&mut self, consumer: &mut Consumer<Vec<u8>, TokioExecutor>, partition: u32, handed: Vec<Handed>) {
        for (partition, id, cumulative) in self.acks.released(partition, handed) {
            send_ack(consumer, &self.partitions, partition, id, cumulative).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_pulsar_clients_print_them() {
        let id = |entry, batch_index| MessageIdData { ledger_id: 7, entry_id: entry, partition: Some(-1), batch_index, ..Default::default() };
        assert_eq!(id_text(&id(4, None)), "7:4:-1");
        assert_eq!(id_text(&id(4, Some(2))), "7:4:-1:2");
    }
}
