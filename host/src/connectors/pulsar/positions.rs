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
//! finished by the checkpoints of the last 30 s, and for each partly
//! finished entry the batch indexes finished so far ([`Book`]). On
//! `exclusive` and `failover` subscriptions, where the broker delivers a
//! topic in order, it also records the last finished entry: everything up
//! to it is finished, however long ago it was acknowledged. After a restart
//! the source acknowledges the finished entries again and skips what it
//! receives of them ([`Skip`]); a partly finished entry's remaining
//! messages go through and complete it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pulsar::proto::MessageIdData;
use serde::{Deserialize, Serialize};

use super::acks::PartialEntries;

/// `(ledger, entry)`: a broker entry within one topic (partition).
pub(super) type Entry = (u64, u64);

/// `(ledger, first, last)`: consecutive entries of one ledger.
type Run = (u64, u64, u64);

/// How long finished entries stay listed in the records: longer than an
/// acknowledgement waits in the client for the consumer's prefetched
/// messages to be read (on shared subscriptions nothing else covers them).
const RECENT: Duration = Duration::from_secs(30);

/// One topic's record: `finished` entries as runs of consecutive entries
/// (`(ledger, first, last)`: a busy topic finishes long runs, so a record
/// stays small), the finished batch indexes of each entry in `partial`
/// (`(ledger, entry, size, indexes)`), and on an ordered subscription the
/// entry `upto` which everything is finished.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    finished: Vec<Run>,
    partial: Vec<(u64, u64, i32, Vec<i32>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upto: Option<Entry>,
}

/// The finished messages the next checkpoint records, per topic partition.
#[derive(Default)]
struct Topic {
    /// Entries finished by the checkpoints of the last [`RECENT`], as
    /// runs, oldest first.
    recent: VecDeque<(Instant, Vec<Run>)>,
    /// Entries of producer batches partly finished.
    partial: PartialEntries<Entry>,
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
                let mut partial = PartialEntries::default();
                for (entry, (size, done)) in &topic.partial {
                    partial.insert(*entry, *size, done.iter().copied());
                }
                (name.clone(), Topic { recent: VecDeque::new(), partial, upto: topic.upto })
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
            if topic.partial.finish(entry, id, size) {
                finished.push(entry);
            }
        }
        let this = merge(finished.iter().map(|&(ledger, entry)| (ledger, entry, entry)));
        if ordered {
            topic.upto = topic.upto.max(finished.iter().copied().max());
        }
        let record = Record {
            finished: merge(topic.recent.iter().flat_map(|(_, runs)| runs.iter().copied()).chain(this.iter().copied())),
            partial: topic
                .partial
                .iter()
                .map(|((ledger, entry), partial)| (*ledger, *entry, partial.size, partial.done.iter().copied().collect()))
                .collect(),
            upto: topic.upto,
        };
        let now = Instant::now();
        topic.recent.push_back((now, this));
        while topic.recent.front().is_some_and(|(at, _)| now.duration_since(*at) > RECENT) {
            topic.recent.pop_front();
        }
        Some((name, serde_json::to_vec(&record).expect("a record serializes")))
    }
}

/// Runs of consecutive entries of one ledger, `(ledger, first, last)`,
/// merged where they overlap or touch, in order.
fn merge(runs: impl Iterator<Item = Run>) -> Vec<Run> {
    let mut sorted: Vec<Run> = runs.collect();
    sorted.sort_unstable();
    let mut merged: Vec<Run> = Vec::with_capacity(sorted.len());
    for (ledger, first, last) in sorted {
        match merged.last_mut() {
            Some((l, _, end)) if *l == ledger && first <= *end + 1 => *end = (*end).max(last),
            _ => merged.push((ledger, first, last)),
        }
    }
    merged
}

/// What the previous run recorded, per topic: acknowledged again after
/// subscribing, and skipped when delivered.
#[derive(Debug, Default)]
pub(super) struct Skip {
    /// Records by topic, until [`Skip::bind`] gives them their partition.
    topics: HashMap<String, SkipTopic>,
    /// Records by the read loop's partition index: what it looks up for
    /// every message, without hashing the topic's name.
    bound: Vec<Option<SkipTopic>>,
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

    /// The topics with records not bound to a partition yet.
    pub(super) fn unbound(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// Files `topic`'s records under the read loop's `partition` index.
    pub(super) fn bind(&mut self, partition: u32, topic: &str) {
        if let Some(records) = self.topics.remove(topic) {
            let index = partition as usize;
            if self.bound.len() <= index {
                self.bound.resize_with(index + 1, || None);
            }
            self.bound[index] = Some(records);
        }
    }

    /// Whether nothing is to be skipped.
    pub(super) fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.bound.is_empty()
    }

    fn of(&self, partition: u32) -> Option<&SkipTopic> {
        self.bound.get(partition as usize).and_then(Option::as_ref)
    }

    /// The partitions with records.
    pub(super) fn partitions(&self) -> Vec<u32> {
        (0..self.bound.len() as u32).filter(|&p| self.of(p).is_some()).collect()
    }

    /// The finished entries of `partition`, to acknowledge after subscribing.
    pub(super) fn finished(&self, partition: u32) -> Vec<Entry> {
        self.of(partition).map(|t| t.finished.iter().copied().collect()).unwrap_or_default()
    }

    /// On an ordered subscription, the entry up to which `partition` was
    /// finished.
    pub(super) fn upto(&self, partition: u32) -> Option<Entry> {
        self.of(partition).and_then(|t| t.upto)
    }

    /// The batch indexes applied before of `partition`'s partly finished
    /// entries: `(entry, entry size, indexes)`.
    pub(super) fn partial(&self, partition: u32) -> Vec<(Entry, i32, Vec<i32>)> {
        self.of(partition)
            .map(|t| t.partial.iter().map(|(e, (size, done))| (*e, *size, done.iter().copied().collect())).collect())
            .unwrap_or_default()
    }

    /// What to do with message `id` of `partition`.
    pub(super) fn verdict(&self, partition: u32, id: &MessageIdData) -> Verdict {
        let Some(t) = self.of(partition) else { return Verdict::New };
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
    fn a_record_holds_the_recent_finished_entries_and_every_partial_one() {
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
        let topic = "persistent://t/ns/a";
        let mut skip = Skip::restore(&[(topic.into(), serde_json::to_vec(&second).unwrap())], "in");
        // A book restored from it keeps the partial entry until it finishes.
        let book = Book::restored(&skip, false);
        // The read loop knows the topic as partition 1, another as 0.
        skip.bind(1, topic);
        assert_eq!(skip.verdict(1, &a), Verdict::Finished);
        assert_eq!(skip.verdict(1, &c1), Verdict::Applied);
        assert_eq!(skip.verdict(1, &id(3, Some(2))), Verdict::New);
        assert_eq!(skip.verdict(1, &id(5, None)), Verdict::New);
        assert_eq!(skip.verdict(0, &a), Verdict::New);
        assert_eq!(skip.partitions(), [1]);

        book.name(0, topic);
        let last = id(3, Some(2));
        let (_, third) = book.record(0, [(&last, Some(3))].into_iter()).unwrap();
        let third: Record = serde_json::from_slice(&third).unwrap();
        assert_eq!(third, Record { finished: vec![(3, 3, 3)], partial: vec![], upto: None });
    }

    #[test]
    fn finished_entries_are_kept_as_runs() {
        let entries = [(2, 9), (1, 4), (1, 5), (1, 7), (1, 5), (2, 8)];
        assert_eq!(merge(entries.into_iter().map(|(l, e)| (l, e, e))), vec![(1, 4, 5), (1, 7, 7), (2, 8, 9)]);
        assert_eq!(merge([(1, 1, 4), (1, 3, 6), (1, 7, 7), (1, 9, 9)].into_iter()), vec![(1, 1, 7), (1, 9, 9)]);
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
        assert_eq!(record.finished, vec![(3, 1, 5)], "the entries of the last 30 s are listed");
        assert_eq!(record.upto, Some((3, 5)));
        let mut skip = Skip::restore(&[(topic.into(), serde_json::to_vec(&record).unwrap())], "in");
        skip.bind(0, topic);
        assert_eq!(skip.verdict(0, &id(1, None)), Verdict::Finished, "finished long ago");
        assert_eq!(skip.verdict(0, &id(6, Some(0))), Verdict::Applied);
        assert_eq!(skip.verdict(0, &id(6, Some(1))), Verdict::New);
        assert_eq!(skip.verdict(0, &id(7, None)), Verdict::New);
    }
}
