//! Which acknowledgements a Pulsar source sends as its batches finish: a
//! broker acknowledges whole entries, so a message that came in a producer
//! batch is acknowledged with its entry once all of the entry's messages
//! are finished; on ordered subscriptions cumulatively.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

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

/// Decides which ids to acknowledge as batches are released.
pub(super) struct Acks {
    pub(super) cumulative: bool,
    /// Batch indexes finished so far of entries that came in producer
    /// batches and are not complete yet.
    pub(super) entries: HashMap<EntryKey, (HashSet<i32>, Instant)>,
}

impl Acks {
    /// The acknowledgements a released batch of `partition` allows:
    /// `(partition, id, cumulative)`, ids without batch index (whole entries).
    pub(super) fn released(&mut self, partition: u32, handed: Vec<Handed>) -> Vec<(u32, MessageIdData, bool)> {
        let mut out = Vec::new();
        let mut last_complete: Option<MessageIdData> = None;
        for Handed { id, entry_size } in handed {
            let complete = match (entry_size, id.batch_index) {
                (Some(size), Some(index)) if size > 1 => {
                    let key = (partition, id.ledger_id, id.entry_id);
                    let (done, _) = self.entries.entry(key).or_insert_with(|| (HashSet::new(), Instant::now()));
                    done.insert(index);
                    if done.len() as i32 >= size {
                        self.entries.remove(&key);
                        true
                    } else {
                        false
                    }
                }
                _ => true,
            };
            if !complete {
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
        if self.entries.len() > 10_000 {
            self.entries.retain(|_, (_, since)| since.elapsed().as_secs() < 3600);
        }
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
        let mut acks = Acks { cumulative: false, entries: HashMap::new() };
        assert_eq!(entries(&acks.released(0, vec![id(1, None), id(2, Some((0, 3))), id(2, Some((1, 3)))])), [(1, false)]);
        // A copy of a finished message delivered again does not count twice.
        assert_eq!(entries(&acks.released(0, vec![id(2, Some((1, 3)))])), []);
        assert_eq!(entries(&acks.released(0, vec![id(2, Some((2, 3))), id(3, None)])), [(2, false), (3, false)]);
        assert!(acks.entries.is_empty());
    }

    #[test]
    fn cumulative_acknowledgement_stops_before_an_unfinished_entry() {
        let mut acks = Acks { cumulative: true, entries: HashMap::new() };
        assert_eq!(entries(&acks.released(0, vec![id(1, None), id(2, Some((0, 2)))])), [(1, true)]);
        assert_eq!(entries(&acks.released(0, vec![id(2, Some((1, 2))), id(3, None)])), [(3, true)]);
    }
}
