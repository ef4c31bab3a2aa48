//! The Pulsar sink: a batching producer whose writes return once the broker
//! has acknowledged every message of the batch.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use base64::Engine;
use pulsar::producer::{Message as PulsarMessage, SendFuture};
use pulsar::{Producer, ProducerOptions, TokioExecutor};

use super::{PRODUCER_BATCH, PulsarSinkSpec, client, explain};
use crate::connectors::{Rejected, Sink};
use crate::message::Message;

/// Writes batches to one topic.
pub struct PulsarSink {
    spec: PulsarSinkSpec,
    producer: Option<Producer<TokioExecutor>>,
}

impl PulsarSink {
    /// A sink for `spec`; it connects on its first write.
    pub fn new(spec: PulsarSinkSpec) -> Self {
        PulsarSink { spec, producer: None }
    }

    async fn producer(&mut self) -> Result<&mut Producer<TokioExecutor>> {
        if self.producer.is_none() {
            let spec = &self.spec;
            let pulsar = client(&spec.url)
                .await
                .map_err(|e| anyhow!("connecting to Pulsar at {}: {}", spec.url, explain(&e)))?;
            let options = ProducerOptions {
                batch_size: Some(PRODUCER_BATCH),
                batch_byte_size: Some(4 * 1024 * 1024),
                // Every write flushes its last entry itself (below); the
                // timeout only bounds a batch left open by a failed write.
                batch_timeout: Some(Duration::from_millis(100)),
                block_queue_if_full: true,
                ..Default::default()
            };
            let producer = pulsar
                .producer()
                .with_topic(&spec.topic)
                .with_options(options)
                .build()
                .await
                .map_err(|e| anyhow!("creating a Pulsar producer for `{}`: {}", spec.topic, explain(&e)))?;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_mut().expect("just made"))
    }
}

/// `message` as Pulsar's, or why it cannot be written as it is.
fn convert(message: &Message) -> Result<PulsarMessage, String> {
    let mut properties = HashMap::with_capacity(message.headers.len());
    for header in &message.headers {
        let value = std::str::from_utf8(&header.value)
            .map_err(|_| format!("header `{}` is not UTF-8, and Pulsar properties are text", header.name))?;
        if properties.insert(header.name.clone(), value.to_string()).is_some() {
            return Err(format!("header `{}` is given twice, and Pulsar property names are unique", header.name));
        }
    }
    let (partition_key, partition_key_b64_encoded) = match &message.key {
        None => (None, None),
        Some(key) => match std::str::from_utf8(key) {
            Ok(text) => (Some(text.to_string()), None),
            // Binary keys travel Base64-encoded with Pulsar's flag saying so.
            Err(_) => (Some(base64::engine::general_purpose::STANDARD.encode(key)), Some(true)),
        },
    };
    Ok(PulsarMessage {
        payload: message.value.clone(),
        properties,
        partition_key,
        partition_key_b64_encoded,
        event_time: message.timestamp_ms,
        ..Default::default()
    })
}

#[async_trait]
impl Sink for PulsarSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        let mut messages = Vec::with_capacity(batch.len());
        for (i, message) in batch.iter().enumerate() {
            match convert(message) {
                Ok(m) => messages.push(m),
                Err(reason) => {
                    return Err(Rejected(format!(
                        "message {} of the batch cannot be written to Pulsar topic `{}`: {reason}",
                        i + 1,
                        self.spec.topic
                    ))
                    .into());
                }
            }
        }
        let topic = self.spec.topic.clone();
        let producer = self.producer().await?;
        let mut receipts: Vec<SendFuture> = Vec::with_capacity(messages.len());
        let mut failure: Option<String> = None;
        for message in messages {
            match producer.send_non_blocking(message).await {
                Ok(receipt) => receipts.push(receipt),
                Err(e) => {
                    failure = Some(explain(&e));
                    break;
                }
            }
        }
        if failure.is_none()
            && let Err(e) = producer.send_batch().await
        {
            failure = Some(explain(&e));
        }
        let mut failed = 0;
        for receipt in receipts {
            if let Err(e) = receipt.await {
                failed += 1;
                failure.get_or_insert_with(|| explain(&e));
            }
        }
        match failure {
            None => Ok(()),
            Some(error) => {
                // Start afresh next time: the connection may be broken.
                self.producer = None;
                Err(anyhow!("{failed} of {} messages not written to Pulsar topic `{topic}`: {error}", batch.len()))
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(mut producer) = self.producer.take() {
            // Every write already waited for its receipts.
            producer.close().await.map_err(|e| anyhow!("closing the Pulsar producer: {e}"))?;
        }
        Ok(())
    }
}
