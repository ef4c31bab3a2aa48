//! Where newly assigned partitions start reading, decided in the
//! rebalance callback before librdkafka fetches: at the offset the last
//! checkpoint recorded when the group's commit is behind it, or at a
//! timestamp for a `start` by time.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaContext, LOOKUP_TIMEOUT, Shared};

/// Starts newly assigned partitions at the offset the last checkpoint
/// recorded, where the group's committed offset is behind it (once per
/// partition and run); returns those partitions and offsets.
pub(super) fn position_by_checkpoint(
    shared: &Shared,
    consumer: &BaseConsumer<KafkaContext>,
    tpl: &mut TopicPartitionList,
) -> Vec<(u32, i64)> {
    let mut raised = Vec::new();
    let recorded: Vec<(u32, i64)> = {
        let mut restored = shared.restored.lock();
        if restored.is_empty() {
            return raised;
        }
        shared.ids(tpl).into_iter().filter_map(|id| Some((id, restored.remove(&id)?))).collect()
    };
    if recorded.is_empty() {
        return raised;
    }
    let committed = match consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT) {
        Ok(committed) => committed,
        Err(e) => {
            // Without the committed offsets, the recorded ones are the truth.
            tracing::warn!(source = %shared.source, "cannot read committed offsets ({e}); starting at the checkpoint's");
            TopicPartitionList::new()
        }
    };
    for (id, offset) in recorded {
        let (topic, partition) = shared.topic_partition(id);
        let group = committed.find_partition(topic, partition).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        // A recorded offset past the partition's end belongs to another
        // history of the topic (recreated, another cluster): not this one.
        let end = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT).map(|(_, high)| high);
        if let Ok(end) = end
            && offset > end
        {
            tracing::warn!(
                source = %shared.source,
                "ignoring the checkpoint's offset {offset} of {topic}/{partition}: the partition ends at {end} (was \
                 the topic recreated? `weir state reset FILE --positions` forgets recorded positions)"
            );
            continue;
        }
        if group.is_none_or(|g| g < offset) {
            tracing::info!(
                source = %shared.source,
                "{topic}/{partition} starts at offset {offset}, where the last checkpoint left it (the group's \
                 committed offset is {})",
                group.map_or_else(|| "unset".to_string(), |g| g.to_string())
            );
            let _ = tpl.set_partition_offset(topic, partition, Offset::Offset(offset));
            raised.push((id, offset));
        }
    }
    raised
}

/// Sets the start offset of newly assigned partitions that have no committed
/// offset to the first message at or after `ts`.
pub(super) fn position_by_time(shared: &Shared, consumer: &BaseConsumer<KafkaContext>, tpl: &mut TopicPartitionList, ts: i64) {
    let committed = match consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT) {
        Ok(committed) => committed,
        Err(e) => {
            tracing::warn!(source = %shared.source, "cannot read committed offsets for the timestamp start ({e}); starting at the earliest offset");
            return;
        }
    };
    let mut query = TopicPartitionList::new();
    for e in committed.elements() {
        if !matches!(e.offset(), Offset::Offset(_)) {
            let _ = query.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ts));
        }
    }
    if query.count() == 0 {
        return;
    }
    match consumer.offsets_for_times(query, LOOKUP_TIMEOUT) {
        Ok(found) => {
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    // No message at or after the timestamp yet.
                    _ => Offset::End,
                };
                let _ = tpl.set_partition_offset(e.topic(), e.partition(), offset);
            }
        }
        Err(e) => {
            tracing::warn!(source = %shared.source, "looking up offsets by timestamp failed ({e}); starting at the earliest offset")
        }
    }
}
