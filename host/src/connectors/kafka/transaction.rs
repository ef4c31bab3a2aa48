//! Exactly-once Kafka → Kafka (`delivery = "exactly-once"`).
//!
//! One transactional producer per process writes every Kafka sink's (and
//! the dead letter's) output; each checkpoint commits the open transaction
//! together with the input offsets it covers (`send_offsets_to_transaction`
//! with the consumer group's metadata) and begins the next. So a
//! `read_committed` reader of the outputs sees the outputs of an input
//! exactly when the group's committed offset has passed that input.
//!
//! The `transactional.id` is `weir-<group>-<hash of the assigned
//! partitions>`: stable across restarts of a process that gets the same
//! partitions back, so the restart's `init_transactions` fences the dead
//! process (a zombie that wakes up is refused by the broker) and aborts its
//! open transaction. A new assignment makes a new producer: the revoke
//! before it commits what was in flight (the checkpoint it waits for).
//!
//! librdkafka's transactional calls block: they run on the blocking pool or
//! inside the rebalance callback, never on an async worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{KafkaSourceSpec, parse_position};
use crate::flow::checkpoint::Transaction;
use crate::store::PositionRecord;

/// Timeout of each transactional call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Consumer-only properties left out of the producer made from a source's
/// settings (librdkafka would warn about each).
const CONSUMER_ONLY: [&str; 5] =
    ["group.id", "enable.auto.commit", "enable.auto.offset.store", "enable.partition.eof", "auto.offset.reset"];

/// The pipeline's Kafka transaction.
pub struct KafkaTransaction {
    /// The producer's properties (the first Kafka sink's).
    properties: BTreeMap<String, String>,
    current: Mutex<Current>,
}

#[derive(Default)]
struct Current {
    /// The producer of the current assignment and its transactional id;
    /// none before the first assignment.
    producer: Option<(String, FutureProducer)>,
    /// The consumer group's metadata of the current generation.
    group: Option<Arc<ConsumerGroupMetadata>>,
    /// Why transactions cannot go on (fenced, a failed assignment).
    failed: Option<String>,
}

impl KafkaTransaction {
    /// A transaction whose producer takes `properties` (the sink's, with
    /// `transactional.id` added per assignment).
    pub fn new(properties: &BTreeMap<String, String>) -> Self {
        KafkaTransaction { properties: properties.clone(), current: Mutex::default() }
    }

    /// The transactional id of `group` owning `partitions` (`topic/N`).
    pub fn id_for(group: &str, partitions: &[String]) -> String {
        let mut sorted = partitions.to_vec();
        sorted.sort();
        let hash = blake3::hash(sorted.join(",").as_bytes()).to_hex();
        format!("weir-{group}-{}", &hash[..16])
    }

    /// The source was assigned `partitions` (all it owns now): makes the
    /// producer of that assignment unless it is the current one, fencing
    /// any earlier process with the same id and aborting its open
    /// transaction. Blocking (called from the rebalance callback).
    pub fn assign(&self, group: &str, partitions: &[String], metadata: Option<ConsumerGroupMetadata>) {
        let id = Self::id_for(group, partitions);
        let mut current = self.current.lock();
        current.group = metadata.map(Arc::new);
        if current.producer.as_ref().is_some_and(|(current_id, _)| *current_id == id) {
            return;
        }
        if let Some((old_id, old)) = current.producer.take() {
            // The revoke committed what was in flight; anything left is
            // aborted, and its inputs are read again.
            if let Err(e) = old.abort_transaction(CALL_TIMEOUT) {
                tracing::warn!("aborting the transaction of `{old_id}` before a new assignment: {e}");
            }
        }
        match self.start(&id) {
            Ok(producer) => {
                tracing::info!("exactly-once: transactional id `{id}` for {}", partitions.join(", "));
                current.producer = Some((id, producer));
            }
            Err(e) => {
                tracing::error!("exactly-once: {e:#}");
                current.failed.get_or_insert(format!("{e:#}"));
            }
        }
    }

    fn start(&self, id: &str) -> Result<FutureProducer> {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config.set("transactional.id", id);
        let producer: FutureProducer = config.create().context("creating the transactional Kafka producer")?;
        producer
            .init_transactions(CALL_TIMEOUT)
            .with_context(|| format!("initialising transactions for `{id}` (does the broker support them?)"))?;
        producer.begin_transaction().with_context(|| format!("beginning a transaction of `{id}`"))?;
        Ok(producer)
    }

    /// The producer the sinks write with.
    pub fn producer(&self) -> Result<FutureProducer, String> {
        let current = self.current.lock();
        if let Some(failed) = &current.failed {
            return Err(failed.clone());
        }
        match &current.producer {
            Some((_, producer)) => match producer.client().fatal_error() {
                Some((code, reason)) => Err(fatal(code, &reason)),
                None => Ok(producer.clone()),
            },
            None => Err("no transactional producer: the source has no partitions assigned".to_string()),
        }
    }

    /// The blocking half of [`Transaction::commit`].
    fn commit_blocking(&self, positions: &[PositionRecord]) -> Result<(), String> {
        let (producer, group) = {
            let current = self.current.lock();
            if let Some(failed) = &current.failed {
                return Err(failed.clone());
            }
            let Some((_, producer)) = &current.producer else {
                return Err("no transactional producer to commit with".to_string());
            };
            let Some(group) = &current.group else {
                return Err("the consumer group's metadata is unknown".to_string());
            };
            (producer.clone(), group.clone())
        };
        let offsets = offsets(positions)?;
        let outcome = producer
            .send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)
            .and_then(|()| producer.commit_transaction(CALL_TIMEOUT));
        if let Err(error) = outcome {
            let text = describe(&producer, &error);
            if needs_abort(&error) {
                let _ = producer.abort_transaction(CALL_TIMEOUT);
            }
            self.current.lock().failed.get_or_insert(text.clone());
            return Err(text);
        }
        producer.begin_transaction().map_err(|e| describe(&producer, &e))
    }
}

impl Transaction for KafkaTransaction {
    fn name(&self) -> Result<String, String> {
        let current = self.current.lock();
        match (&current.failed, &current.producer) {
            (Some(failed), _) => Err(failed.clone()),
            (None, Some((id, _))) => Ok(id.clone()),
            (None, None) => Err("no transactional producer: the source has no partitions assigned".to_string()),
        }
    }

    fn commit(
        self: Arc<Self>,
        positions: Vec<PositionRecord>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.commit_blocking(&positions))
                .await
                .map_err(|e| format!("the commit task failed: {e}"))?
        })
    }
}

/// The input offsets of a checkpoint (`topic/N` → next offset).
fn offsets(positions: &[PositionRecord]) -> Result<TopicPartitionList, String> {
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for record in positions {
        let Some(value) = &record.value else { continue };
        let Some((topic, partition, next)) = parse_position(&record.key, value) else {
            return Err(format!("position `{}` of source `{}` is not a Kafka offset", record.key, record.source));
        };
        tpl.add_partition_offset(topic, partition, Offset::Offset(next)).map_err(|e| e.to_string())?;
    }
    Ok(tpl)
}

fn needs_abort(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.txn_requires_abort())
}

fn describe(producer: &FutureProducer, error: &KafkaError) -> String {
    match producer.client().fatal_error() {
        Some((code, reason)) => fatal(code, &reason),
        None => error.to_string(),
    }
}

fn fatal(code: rdkafka::types::RDKafkaErrorCode, reason: &str) -> String {
    if matches!(code, rdkafka::types::RDKafkaErrorCode::ProducerFenced | rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch) {
        format!("fenced: another weir process took over this transactional id ({reason}); this one may not write")
    } else {
        format!("the transactional producer failed ({code:?}: {reason})")
    }
}

/// Whether the transaction `id` of the last run committed `positions`:
/// first `init_transactions` with that id settles it (a commit that reached
/// the coordinator completes, anything else is aborted, and the old
/// process is fenced); then the group's committed offsets tell which.
pub fn committed(spec: &KafkaSourceSpec, id: &str, positions: &[(String, String, Vec<u8>)]) -> Result<bool> {
    let mut producer_config = ClientConfig::new();
    for (key, value) in spec.properties.iter().filter(|(k, _)| !CONSUMER_ONLY.contains(&k.as_str())) {
        producer_config.set(key, value);
    }
    producer_config.set("transactional.id", id);
    let producer: rdkafka::producer::BaseProducer =
        producer_config.create().context("creating a producer to settle the last transaction")?;
    producer
        .init_transactions(CALL_TIMEOUT)
        .with_context(|| format!("settling the last run's transaction `{id}`"))?;
    drop(producer);

    let mut consumer_config = spec.client_config();
    consumer_config.set("isolation.level", "read_committed");
    let consumer: BaseConsumer = consumer_config.create().context("creating a consumer to read committed offsets")?;
    let mut tpl = TopicPartitionList::new();
    let mut expected = Vec::new();
    for (_, key, value) in positions {
        let (topic, partition, next) =
            parse_position(key, value).ok_or_else(|| anyhow!("recorded position `{key}` is not a Kafka offset"))?;
        tpl.add_partition(topic, partition);
        expected.push((topic, partition, next));
    }
    let found = consumer.committed_offsets(tpl, CALL_TIMEOUT).context("reading the group's committed offsets")?;
    Ok(expected.iter().all(|(topic, partition, next)| {
        found
            .find_partition(topic, *partition)
            .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *next))
    }))
}
