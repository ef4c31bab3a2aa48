//! An aggregator that keeps a running count of messages per key.
//!
//! For every batch it adds each key's message count to a total kept in the
//! stage's state (under `count:` + the key bytes, a little-endian u64), then
//! emits one output per distinct key of the batch, in first-seen order: its key
//! is the message key and its value `{"key":"<key>","count":<total>}` (the key
//! decoded as lossy UTF-8).
//!
//! Config:
//! - `null_key` (optional, default `<none>`): the key counted for messages
//!   that have none.
//!
//! State is read and written once per distinct key per batch. Concurrent
//! instances of the stage must not share keys (use `dispatch = "partition"`
//! with `partition_by = "key"`, or `concurrency = 1`), since a read and the
//! following write are not atomic.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::json;
use weir_sdk::{Aggregator, Config, Message, Output, state};

const STATE_PREFIX: &[u8] = b"count:";

struct CountByKey {
    null_key: Vec<u8>,
}

impl Aggregator for CountByKey {
    fn init(config: Config) -> Result<Self, String> {
        Ok(CountByKey { null_key: config.get("null_key").unwrap_or("<none>").as_bytes().to_vec() })
    }

    fn process_batch(&mut self, _batch_key: Option<Vec<u8>>, batch: Vec<Message>) -> Result<Vec<Output>, String> {
        let counts = count_keys(batch, &self.null_key);

        // Build every output before touching the state, so that a failure
        // leaves the state as it was (the batch is all-or-nothing).
        let mut updates = Vec::with_capacity(counts.len());
        let mut outputs = Vec::with_capacity(counts.len());
        for (key, count) in counts {
            let state_key = [STATE_PREFIX, &key].concat();
            let total = state::get_u64(&state_key).saturating_add(count);
            let value = json!({ "key": String::from_utf8_lossy(&key), "count": total });
            outputs.push(Output::new(Vec::new()).with_json(&value)?.with_key(key));
            updates.push((state_key, total));
        }
        for (state_key, total) in updates {
            state::set_u64(&state_key, total);
        }
        Ok(outputs)
    }
}

/// Counts the messages of `batch` per key, in first-seen order; messages
/// without a key count under `null_key`.
fn count_keys(batch: Vec<Message>, null_key: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let mut counts: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for message in batch {
        let key = message.key.unwrap_or_else(|| null_key.to_vec());
        match index.entry(key) {
            Entry::Occupied(slot) => counts[*slot.get()].1 += 1,
            Entry::Vacant(slot) => {
                counts.push((slot.key().clone(), 1));
                slot.insert(counts.len() - 1);
            }
        }
    }
    counts
}

weir_sdk::export_aggregator!(CountByKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keys_in_first_seen_order() {
        let message = |key: Option<&str>| Message {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: vec![],
            headers: vec![],
            timestamp_ms: None,
            origin: None,
        };
        let batch = vec![message(Some("b")), message(None), message(Some("a")), message(Some("b")), message(None)];
        let counts = count_keys(batch, b"-");
        assert_eq!(counts, vec![(b"b".to_vec(), 2), (b"-".to_vec(), 2), (b"a".to_vec(), 1)]);
    }
}
