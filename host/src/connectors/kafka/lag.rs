//! Consumer lag of a Kafka source, per assigned partition: the partition's
//! high watermark less the group's committed offset (or, before the first
//! commit, less the position read so far). Messages read and not yet
//! acknowledged count as lag until their offset is committed.
//!
//! librdkafka's look-ups block (a broker round trip each), so a round runs
//! on the blocking pool every [`INTERVAL`], never on the async workers and
//! never per message. A round asks the group coordinator once for the
//! committed offsets and each partition's leader for its watermarks.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::Start;
use crate::connectors::lag::{Gauges, Poller, Reading};

/// Time between two rounds of look-ups.
const INTERVAL: Duration = Duration::from_secs(2);

/// Longest one look-up may take (also the longest [`Poller::stop`] waits).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Starts polling the lag of `consumer`'s assigned partitions for source
/// `source`. Stop it before the consumer is closed: a round holds it.
pub(super) fn spawn<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    start: Start,
    source: &str,
) -> Poller {
    let gauges = Arc::new(parking_lot::Mutex::new(Gauges::new(source)));
    let source = source.to_string();
    Poller::start(INTERVAL, move |stop| {
        let (consumer, gauges, source) = (consumer.clone(), gauges.clone(), source.clone());
        async move {
            let round = tokio::task::spawn_blocking(move || {
                let readings = read(&*consumer, &start, &stop);
                if let Some(readings) = readings {
                    gauges.lock().publish(&readings);
                }
            });
            if let Err(e) = round.await {
                tracing::debug!(source, "Kafka lag look-up failed: {e}");
            }
        }
    })
}

/// One round of look-ups: a reading per assigned partition, or `None` when
/// the committed offsets cannot be read (broker away) or the round was
/// stopped. A partition whose watermarks cannot be read is left out.
fn read<C: ConsumerContext, K: Consumer<C>>(consumer: &K, start: &Start, stop: &CancellationToken) -> Option<Vec<Reading>> {
    let assignment = consumer.assignment().ok()?;
    if assignment.count() == 0 {
        return Some(Vec::new());
    }
    let committed = consumer.committed_offsets(assignment.clone(), TIMEOUT).ok()?;
    let position = consumer.position().unwrap_or_else(|_| TopicPartitionList::new());
    let offset = |list: &TopicPartitionList, topic: &str, partition: i32| match list
        .find_partition(topic, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    let mut readings = Vec::with_capacity(assignment.count());
    for element in assignment.elements() {
        if stop.is_cancelled() {
            return None;
        }
        let (topic, partition) = (element.topic(), element.partition());
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, TIMEOUT) else { continue };
        let done = offset(&committed, topic, partition);
        // Before the first commit: what was read, else where reading starts.
        let from = done.or_else(|| offset(&position, topic, partition)).or(match start {
            Start::Earliest => Some(low),
            Start::Latest => Some(high),
            Start::At(_) => None,
        });
        let Some(from) = from else { continue };
        readings.push(Reading {
            partition: format!("{topic}/{partition}"),
            lag: u64::try_from(high - from).unwrap_or(0),
            pending: None,
            committed: done,
        });
    }
    Some(readings)
}
