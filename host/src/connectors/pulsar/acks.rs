//! Which acknowledgements a Pulsar source sends as its batches finish: a
//! broker acknowledges whole entries, so a message that came in a producer
//! batch is acknowledged with its entry once all of the entry's messages
//! are finished; on ordered subscriptions cumulatively.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use pulsar::proto::MessageIdData;

/// One message handed on, as it is acknowledged.
#[derive(Debug, Clone)]
pub(super) struct Handed {
    pub(super) id: MessageIdData,
    /// Messages in its broker entry, when it came in a producer batch.
    pub(super) entry_size: Option<i32>,
}

/// The identity of a broker entry: what a broker acknowledges (partition
/// index, ledger, entry).
pub(super) type EntryKey = (u32, u64, u64);

/// Entries of producer batches partly finished, by `K`: the acknowledger's
/// and the checkpoint records' book of which messages of an entry are done.
#[derive(Debug)]
pub(super) struct PartialEntries<K> {
    entries: HashMap<K, Partial>,
}

/// One partly finished entry.
#[derive(Debug)]
pub(super) struct Partial {
    /// Messages in the entry.
    pub(super) size: i32,
    /// Batch indexes finished so far.
    pub(super) done: BTreeSet<i32>,
    /// When the first of them finished.
    since: Instant,
}

impl<K> Default for PartialEntries<K> {
    fn default() -> Self {
        PartialEntries { entries: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> PartialEntries<K> {
    /// Marks message `id` of entry `key` finished (`entry_size`: messages
    /// in its entry, when it came in a producer batch); whether its whole
    /// entry is finished now. A message alone in its entry finishes it.
    pub(super) fn finish(&mut self, key: K, id: &MessageIdData, entry_size: Option<i32>) -> bool {
        match (entry_size, id.batch_index) {
            (Some(size), Some(index)) if size > 1 => {
                let partial = self.entries.entry(key.clone()).or_insert_with(|| Partial::new(size, []));
                partial.done.insert(index);
                let complete = partial.done.len() as i32 >= size;
                if complete {
                    self.entries.remove(&key);
                }
                complete
            }
            _ => true,
        }
    }

    /// Starts `key` with the batch indexes `done` (restored after a restart).
    pub(super) fn insert(&mut self, key: K, size: i32, done: impl IntoIterator<Item = i32>) {
        self.entries.insert(key, Partial::new(size, done));
    }

    /// The partly finished entries.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &Partial)> {
        self.entries.iter()
    }

    /// Whether none is partly finished.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Above `most` entries, forgets those begun longer than `age` ago.
    fn forget_stale(&mut self, most: usize, age: Duration) {
        if self.entries.len() > most {
            self.entries.retain(|_, partial| partial.since.elapsed() < age);
        }
    }
}

impl Partial {
    fn new(size: i32, done: impl IntoIterator<Item = i32>) -> Self {
        Partial { size, done: done.into_iter().collect(), since: Instant::now() }
    }
}

/// Decides which ids to acknowledge as batches are released.
pub(super) struct Acks {
    pub(super) cumulative: bool,
    /// Entries that came in producer batches and are not complete yet.
    pub(super) entries: PartialEntries<EntryKey>,
}

impl Acks {
    /// The acknowledgements a released batch of `partition` allows:
    /// `(partition, id, cumulative)`, ids without batch index (whole entries).
    pub(super) fn released(&mut self, partition: u32, handed: Vec<Handed>) -> Vec<(u32, MessageIdData, bool)> {
        let mut out = Vec::new();
        let mut last_complete: Option<MessageIdData> = None;
        for Handed { id, entry_size } in handed {
            if !self.entries.finish((partition, id.ledger_id, id.entry_id), &id, entry_size) {
                continue;
            }
            let entry = entry_id(&id);
            if self.cumulative {
                last_complete = Some(entry);
            } else {
                out.push((partition, entry, false));
            }
        }
        // The tracker releases a partition's batches in order, so everything
        // up to the last complete entry is finished.
        if let Some(entry) = last_complete {
            out.push((partition, entry, true));
        }
        // Entries whose other messages never come back finished (a copy
        // delivered again after a reconnect, whose first copy was already
        // acknowledged) are forgotten after an hour.
        self.entries.forget_stale(10_000, Duration::from_secs(3600));
        out
    }
}

/// The id of a message's whole entry.
pub(super) fn entry_id(id: &MessageIdData) -> MessageIdData {
    MessageIdData {
        ledger_id: id.ledger_id,
        entry_id: id.entry_id,
        partition: id.partition,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64, batch: Option<(i32, i32)>) -> Handed {
        Handed {
            id: MessageIdData {
                ledger_id: 7,
                entry_id: entry,
                partition: Some(-1),
                batch_index: batch.map(|(i, _)| i),
                ..Default::default()
            },
            entry_size: batch.map(|(_, n)| n),
        }
    }

    fn entries(acks: &[(u32, MessageIdData, bool)]) -> Vec<(u64, bool)> {
        acks.iter().map(|(_, id, c)| (id.entry_id, *c)).collect()
    }

    #[test]
    fn an_entry_of_a_producer_batch_is_acknowledged_when_all_its_messages_are_done() {
        let mut acks = Acks { cumulative: false, entries: PartialEntries::default() };
        assert_eq!(entries(&acks.released(0, vec![id(1, None), id(2, Some((0, 3))), id(2, Some((1, 3)))])), [(1, false)]);
        // A copy of a finished message delivered again does not count twice.
        assert_eq!(entries(&acks.released(0, vec![id(2, Some((1, 3)))])), []);
        assert_eq!(entries(&acks.released(0, vec![id(2, Some((2, 3))), id(3, None)])), [(2, false), (3, false)]);
        assert!(acks.entries.is_empty());
    }

    #[test]
    fn cumulative_acknowledgement_stops_before_an_unfinished_entry() {
        let mut acks = Acks { cumulative: true, entries: PartialEntries::default() };
        assert_eq!(entries(&acks.released(0, vec![id(1, None), id(2, Some((0, 2)))])), [(1, true)]);
        assert_eq!(entries(&acks.released(0, vec![id(2, Some((1, 2))), id(3, None)])), [(3, true)]);
    }
}
