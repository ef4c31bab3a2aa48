//! What a checkpoint records of a Pulsar source, and what a restart does
//! with it.
//!
//! A broker acknowledges whole entries, and pulsar-rs sends acknowledgements
//! some time after weir asks (its consumer engine queues them behind the
//! messages it prefetched). So when weir stops, the broker may deliver again
//! messages whose effects are already in the saved state: the messages of
//! an entry (a producer batch) that was only partly finished, and entries
//! whose acknowledgement had not reached the broker. For state to hold each
//! message once, every checkpoint records per topic the ids of the entries
//! finished in it and in the checkpoint before, and for each partly
//! finished entry the batch indexes finished so far ([`Book`]). On
//! `exclusive` and `failover` subscriptions, where the broker delivers a
//! topic in order, it also records the last finished entry: everything up
//! to it is finished, however long ago it was acknowledged. After a restart
//! the source acknowledges the finished entries again and skips what it
//! receives of them ([`Skip`]); a partly finished entry's remaining
//! messages go through and complete it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use pulsar::proto::MessageIdData;
use serde::{Deserialize, Serialize};

/// `(ledger, entry)`: a broker entry within one topic (partition).
pub(super) type Entry = (u64, u64);

/// One topic's record: `finished` entries as runs of consecutive entries
/// (`(ledger, first, last)`: a busy topic finishes long runs, so a record
/// stays small), the finished batch indexes of each entry in `partial`
/// (`(ledger, entry, size, indexes)`), and on an ordered subscription the
/// entry `upto` which everything is finished.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    finished: Vec<(u64, u64, u64)>,
    partial: Vec<(u64, u64, i32, Vec<i32>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upto: Option<Entry>,
}

/// The finished messages the next checkpoint records, per topic partition.
#[derive(Default)]
struct Topic {
    /// Entries finished by the last checkpoint recorded.
    last: Vec<Entry>,
    /// Entries of producer batches partly finished: size, indexes done.
    partial: HashMap<Entry, (i32, BTreeSet<i32>)>,
    /// On an ordered subscription, the last finished entry.
    upto: Option<Entry>,
}

/// The source's side of its checkpoint records, shared between the read
/// loop (which learns topic names) and the checkpoint (which records).
#[derive(Clone, Default)]
pub(super) struct Book {
    inner: Arc<Mutex<BookInner>>,
}

#[derive(Default)]
struct BookInner {
    /// Whether the subscription delivers each topic in order.
    ordered: bool,
    /// Topic names by the read loop's partition index.
    names: Vec<String>,
    topics: HashMap<String, Topic>,
}

impl Book {
    /// A book that starts from what the previous run recorded (its partly
    /// finished entries stay recorded until they are finished); `ordered`
    /// when the subscription delivers each topic in order.
    pub(super) fn restored(skip: &Skip, ordered: bool) -> Book {
        let book = Book::default();
        let mut inner = book.lock();
        inner.ordered = ordered;
        inner.topics = skip
            .topics
            .iter()
            .map(|(name, topic)| {
                let partial = topic.partial.iter().map(|(e, (size, done))| (*e, (*size, done.iter().copied().collect())));
                (name.clone(), Topic { last: Vec::new(), partial: partial.collect(), upto: topic.upto })
            })
            .collect();
        drop(inner);
        book
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the book the name of the read loop's partition `index` (once
    /// per new topic).
    pub(super) fn name(&self, index: u32, name: &str) {
        let names = &mut self.lock().names;
        if names.len() <= index as usize {
            names.resize(index as usize + 1, String::new());
        }
        names[index as usize] = name.to_string();
    }

    /// The record of `partition` for a checkpoint that finished the
    /// messages `ids` (`(id, entry size)` in release order): `(topic, JSON)`.
    pub(super) fn record<'a>(
        &self,
        partition: u32,
        ids: impl Iterator<Item = (&'a MessageIdData, Option<i32>)>,
    ) -> Option<(String, Vec<u8>)> {
        let mut inner = self.lock();
        let name = inner.names.get(partition as usize).filter(|n| !n.is_empty())?.clone();
        let ordered = inner.ordered;
        let topic = inner.topics.entry(name.clone()).or_default();
        let mut finished = Vec::new();
        for (id, size) in ids {
            let entry = (id.ledger_id, id.entry_id);
            match (size, id.batch_index) {
                (Some(size), Some(index)) if size > 1 => {
                    let (_, done) = topic.partial.entry(entry).or_insert_with(|| (size, BTreeSet::new()));
                    done.insert(index);
                    if done.len() as i32 >= size {
                        topic.partial.remove(&entry);
                        finished.push(entry);
                    }
                }
                _ => finished.push(entry),
            }
        }
        finished.dedup();
        if ordered {
            topic.upto = topic.upto.max(finished.iter().copied().max());
        }
        let record = Record {
            finished: runs(topic.last.iter().chain(&finished).copied()),
            partial: topic
                .partial
                .iter()
                .map(|((ledger, entry), (size, done))| (*ledger, *entry, *size, done.iter().copied().collect()))
                .collect(),
            upto: topic.upto,
        };
        topic.last = finished;
        Some((name, serde_json::to_vec(&record).expect("a record serializes")))
    }
}

/// `entries` as runs of consecutive entries of one ledger, in order.
fn runs(entries: impl Iterator<Item = Entry>) -> Vec<(u64, u64, u64)> {
    let mut sorted: Vec<Entry> = entries.collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for (ledger, entry) in sorted {
        match runs.last_mut() {
            Some((l, _, last)) if *l == ledger && *last + 1 == entry => *last = entry,
            _ => runs.push((ledger, entry, entry)),
        }
    }
    runs
}

/// What the previous run recorded, per topic: acknowledged again after
/// subscribing, and skipped when delivered.
#[derive(Debug, Default)]
pub(super) struct Skip {
    topics: HashMap<String, SkipTopic>,
}

#[derive(Debug, Default)]
struct SkipTopic {
    finished: HashSet<Entry>,
    partial: HashMap<Entry, (i32, HashSet<i32>)>,
    upto: Option<Entry>,
}

/// What to do with a received message.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Not applied before: hand it on.
    New,
    /// Its whole entry was applied before: acknowledge the entry, skip it.
    Finished,
    /// Applied before, in an entry not finished yet: skip it.
    Applied,
}

impl Skip {
    /// The records the previous run left (`(topic, JSON)`); a record that
    /// does not parse is reported and left out.
    pub(super) fn restore(records: &[(String, Vec<u8>)], source: &str) -> Skip {
        let mut skip = Skip::default();
        for (topic, value) in records {
            let record: Record = match serde_json::from_slice(value) {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(source, topic, "the checkpoint's Pulsar record does not parse ({e}); ignored");
                    continue;
                }
            };
            let entry = skip.topics.entry(topic.clone()).or_default();
            for (ledger, first, last) in record.finished {
                entry.finished.extend((first..=last).map(|e| (ledger, e)));
            }
            entry.upto = entry.upto.max(record.upto);
            for (ledger, e, size, done) in record.partial {
                entry.partial.insert((ledger, e), (size, done.into_iter().collect()));
            }
        }
        skip
    }

    /// Whether nothing is to be skipped.
    pub(super) fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The finished entries of `topic`, to acknowledge after subscribing.
    pub(super) fn finished(&self, topic: &str) -> Vec<Entry> {
        self.topics.get(topic).map(|t| t.finished.iter().copied().collect()).unwrap_or_default()
    }

    /// The topics with records.
    pub(super) fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// On an ordered subscription, the entry up to which `topic` was
    /// finished.
    pub(super) fn upto(&self, topic: &str) -> Option<Entry> {
        self.topics.get(topic).and_then(|t| t.upto)
    }

    /// The batch indexes applied before of `topic`'s partly finished
    /// entries: `(entry, size, indexes)`.
    pub(super) fn partial(&self, topic: &str) -> Vec<(Entry, i32, Vec<i32>)> {
        self.topics
            .get(topic)
            .map(|t| t.partial.iter().map(|(e, (size, done))| (*e, *size, done.iter().copied().collect())).collect())
            .unwrap_or_default()
    }

    /// What to do with message `id` of `topic`.
    pub(super) fn verdict(&self, topic: &str, id: &MessageIdData) -> Verdict {
        let Some(t) = self.topics.get(topic) else { return Verdict::New };
        let entry = (id.ledger_id, id.entry_id);
        match (t.partial.get(&entry), id.batch_index) {
            (Some((_, done)), Some(index)) if done.contains(&index) => Verdict::Applied,
            (Some(_), _) => Verdict::New,
            (None, _) if t.finished.contains(&entry) || t.upto.is_some_and(|upto| entry <= upto) => Verdict::Finished,
            (None, _) => Verdict::New,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64, batch: Option<i32>) -> MessageIdData {
        MessageIdData { ledger_id: 3, entry_id: entry, batch_index: batch, partition: Some(-1), ..Default::default() }
    }

    #[test]
    fn a_record_holds_two_checkpoints_of_finished_entries_and_every_partial_one() {
        let book = Book::default();
        book.name(0, "persistent://t/ns/a");
        let (a, b, c0, c1, d) = (id(1, None), id(2, None), id(3, Some(0)), id(3, Some(1)), id(4, None));
        let (_, first) = book.record(0, [(&a, None), (&b, None), (&c0, Some(3))].into_iter()).unwrap();
        let first: Record = serde_json::from_slice(&first).unwrap();
        assert_eq!(first, Record { finished: vec![(3, 1, 2)], partial: vec![(3, 3, 3, vec![0])], upto: None });
        let (_, second) = book.record(0, [(&c1, Some(3)), (&d, None)].into_iter()).unwrap();
        let second: Record = serde_json::from_slice(&second).unwrap();
        let expected = Record { finished: vec![(3, 1, 2), (3, 4, 4)], partial: vec![(3, 3, 3, vec![0, 1])], upto: None };
        assert_eq!(second, expected);

        // The next run skips what was applied, and lets the rest through.
        let skip = Skip::restore(&[("persistent://t/ns/a".into(), serde_json::to_vec(&second).unwrap())], "in");
        let topic = "persistent://t/ns/a";
        assert_eq!(skip.verdict(topic, &a), Verdict::Finished);
        assert_eq!(skip.verdict(topic, &c1), Verdict::Applied);
        assert_eq!(skip.verdict(topic, &id(3, Some(2))), Verdict::New);
        assert_eq!(skip.verdict(topic, &id(5, None)), Verdict::New);
        assert_eq!(skip.verdict("persistent://t/ns/other", &a), Verdict::New);

        // A book restored from it keeps the partial entry until it finishes.
        let book = Book::restored(&skip, false);
        book.name(0, topic);
        let last = id(3, Some(2));
        let (_, third) = book.record(0, [(&last, Some(3))].into_iter()).unwrap();
        let third: Record = serde_json::from_slice(&third).unwrap();
        assert_eq!(third, Record { finished: vec![(3, 3, 3)], partial: vec![], upto: None });
    }

    #[test]
    fn finished_entries_are_kept_as_runs() {
        let entries = [(2, 9), (1, 4), (1, 5), (1, 7), (1, 5), (2, 8)];
        assert_eq!(runs(entries.into_iter()), vec![(1, 4, 5), (1, 7, 7), (2, 8, 9)]);
    }

    #[test]
    fn an_ordered_subscription_records_the_last_finished_entry_for_good() {
        let (topic, book) = ("persistent://t/ns/a", Book::restored(&Skip::default(), true));
        book.name(0, topic);
        for entry in 1..=5 {
            book.record(0, [(&id(entry, None), None)].into_iter()).unwrap();
        }
        let (_, record) = book.record(0, [(&id(6, Some(0)), Some(2))].into_iter()).unwrap();
        let record: Record = serde_json::from_slice(&record).unwrap();
        assert_eq!(record.finished, vec![(3, 5, 5)], "only the last checkpoints' entries are listed");
        assert_eq!(record.upto, Some((3, 5)));
        let skip = Skip::restore(&[(topic.into(), serde_json::to_vec(&record).unwrap())], "in");
        assert_eq!(skip.verdict(topic, &id(1, None)), Verdict::Finished, "finished long ago");
        assert_eq!(skip.verdict(topic, &id(6, Some(0))), Verdict::Applied);
        assert_eq!(skip.verdict(topic, &id(6, Some(1))), Verdict::New);
        assert_eq!(skip.verdict(topic, &id(7, None)), Verdict::New);
    }
}
