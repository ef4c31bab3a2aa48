//! The Kafka sink: an idempotent producer whose writes return once every
//! message of the batch has a delivery report.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::{KafkaSinkSpec, KafkaTransaction};
use crate::connectors::{Refused, Sink};
use crate::message::Message;

/// Writes batches to one topic.
pub struct KafkaSink {
    spec: KafkaSinkSpec,
    producer: Option<FutureProducer>,
    /// Under exactly-once delivery: the pipeline's transaction, whose
    /// producer every write uses.
    transaction: Option<Arc<KafkaTransaction>>,
}

impl KafkaSink {
    /// Creates the producer (it connects lazily).
    pub fn open(spec: &KafkaSinkSpec) -> Result<Self> {
        let producer = create(spec)?;
        Ok(KafkaSink { spec: spec.clone(), producer: Some(producer), transaction: None })
    }

    /// A sink that writes inside the pipeline's `transaction`.
    pub fn transactional(spec: &KafkaSinkSpec, transaction: Arc<KafkaTransaction>) -> Self {
        KafkaSink { spec: spec.clone(), producer: None, transaction: Some(transaction) }
    }

    /// The producer, made afresh after a fatal error (an idempotent producer
    /// that lost its sequence state cannot go on).
    fn producer(&mut self) -> Result<&FutureProducer> {
        if let Some(producer) = &self.producer
            && let Some((code, reason)) = producer.client().fatal_error()
        {
            tracing::warn!(topic = %self.spec.topic, "Kafka producer hit a fatal error ({code:?}: {reason}); making a new one");
            self.producer = None;
        }
        if self.producer.is_none() {
            self.producer = Some(create(&self.spec)?);
        }
        Ok(self.producer.as_ref().expect("just made"))
    }
}

fn create(spec: &KafkaSinkSpec) -> Result<FutureProducer> {
    spec.client_config().create().with_context(|| format!("creating the Kafka producer for `{}`", spec.topic))
}

/// Delivery outcomes of one write.
#[derive(Default)]
struct Reports {
    failed: usize,
    first_error: Option<String>,
}

impl Reports {
    async fn wait(&mut self, delivery: DeliveryFuture) {
        let error = match delivery.await {
            Ok(Ok(_)) => return,
            Ok(Err((error, _))) => error.to_string(),
            Err(_) => "the producer went away before reporting delivery".to_string(),
        };
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        let topic = self.spec.topic.clone();
        let producer = match &self.transaction {
            // Inside a transaction a failed write cannot be retried (the
            // retry would commit duplicates): the run halts, and the restart
            // aborts the transaction and reads its inputs again.
            Some(transaction) => transaction.producer().map_err(|e| Refused(format!("exactly-once: {e}")))?,
            None => self.producer()?.clone(),
        };
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(batch.len());
        let mut reports = Reports::default();
        for message in batch {
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic).payload(message.value.as_slice());
            if let Some(key) = &message.key {
                record = record.key(key.as_slice());
            }
            if !message.headers.is_empty() {
                let headers = message
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new_with_capacity(message.headers.len()), |headers, h| {
                        headers.insert(KafkaHeader { key: &h.name, value: Some(h.value.as_slice()) })
                    });
                record = record.headers(headers);
            }
            if let Some(ts) = message.timestamp_ms.and_then(|t| i64::try_from(t).ok()) {
                record = record.timestamp(ts);
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for the oldest
                        // delivery of this batch, which frees room.
                        record = back;
                        match pending.pop_front() {
                            Some(delivery) => reports.wait(delivery).await,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((error, _)) => {
                        // Not enqueued (e.g. too large): the batch fails once
                        // what was enqueued has been reported.
                        reports.failed += 1;
                        reports.first_error.get_or_insert(error.to_string());
                        break;
                    }
                }
            }
        }
        for delivery in pending {
            reports.wait(delivery).await;
        }
        match reports.first_error {
            None => Ok(()),
            Some(error) if self.transaction.is_some() => Err(Refused(format!(
                "exactly-once: {} of {} messages not delivered to Kafka topic `{topic}`: {error}; the transaction \
                 cannot commit",
                reports.failed,
                batch.len()
            ))
            .into()),
            Some(error) => Err(anyhow!(
                "{} of {} messages not delivered to Kafka topic `{topic}`: {error}",
                reports.failed,
                batch.len()
            )),
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(producer) = self.producer.take() {
            // Every write already waited for its reports; this only catches
            // stragglers, off the async threads.
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
                .await
                .map_err(|e| anyhow!("flushing the Kafka producer: {e}"))?
                .context("flushing the Kafka producer")?;
        }
        Ok(())
    }
}
