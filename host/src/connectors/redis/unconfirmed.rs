//! What a Redis source's checkpoints record: the entry IDs whose effects a
//! checkpoint saved and whose `XACK` Redis has not confirmed yet.
//!
//! A restart acknowledges the recorded IDs before it reads, because the
//! `XACK` that follows a checkpoint may never have reached Redis. When Redis
//! is away for longer than a checkpoint interval, the IDs of several
//! checkpoints wait unacknowledged; a record of the newest checkpoint's IDs
//! alone would let a crash then replay the older ones into state that
//! already holds their effects. So each record lists every checkpointed ID
//! of its stream still unconfirmed, and an ID leaves the records once its
//! `XACK` succeeded.
//!
//! The book is kept per checkpoint and per batch, not per ID: the
//! acknowledger confirms batches in the order checkpoints released them.

use std::collections::VecDeque;

use parking_lot::Mutex;

/// Per stream, the checkpointed IDs whose `XACK` is not confirmed.
pub(super) struct Unconfirmed {
    streams: Mutex<Vec<StreamBook>>,
}

#[derive(Default, Clone)]
struct StreamBook {
    /// Per checkpoint, oldest first: how many batches the checkpoints up to
    /// and including it released, and its IDs joined by spaces.
    checkpoints: VecDeque<(u64, String)>,
    /// Batches released by checkpoints so far.
    released: u64,
    /// Of those, the batches whose `XACK` Redis confirmed.
    confirmed: u64,
}

impl StreamBook {
    fn forget_confirmed(&mut self) {
        while self.checkpoints.front().is_some_and(|(end, _)| *end <= self.confirmed) {
            self.checkpoints.pop_front();
        }
    }
}

impl Unconfirmed {
    /// An empty book for `streams` streams.
    pub fn new(streams: usize) -> Self {
        Unconfirmed { streams: Mutex::new(vec![StreamBook::default(); streams]) }
    }

    /// The record of a checkpoint that releases `batches` of `stream`, in
    /// release order: their IDs and those of earlier checkpoints that Redis
    /// has not confirmed acknowledging, joined by spaces.
    pub fn record(&self, stream: usize, batches: &[&Vec<String>]) -> String {
        let mut streams = self.streams.lock();
        let book = &mut streams[stream];
        book.released += batches.len() as u64;
        let ids: Vec<&str> = batches.iter().flat_map(|ids| ids.iter().map(String::as_str)).collect();
        book.checkpoints.push_back((book.released, ids.join(" ")));
        book.forget_confirmed();
        let parts: Vec<&str> = book.checkpoints.iter().map(|(_, ids)| ids.as_str()).filter(|ids| !ids.is_empty()).collect();
        parts.join(" ")
    }

    /// Redis confirmed the `XACK` of the next `batches` released batches of
    /// `stream`.
    pub fn confirm(&self, stream: usize, batches: u64) {
        let mut streams = self.streams.lock();
        let book = &mut streams[stream];
        book.confirmed += batches;
        book.forget_confirmed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn a_record_keeps_earlier_checkpoints_until_their_xack_is_confirmed() {
        let book = Unconfirmed::new(2);
        let (a, b, c) = (ids(&["1-0", "1-1"]), ids(&["2-0"]), ids(&["3-0", "3-1"]));
        assert_eq!(book.record(0, &[&a, &b]), "1-0 1-1 2-0");
        // Redis is away: nothing confirmed, the next record carries both.
        assert_eq!(book.record(0, &[&c]), "1-0 1-1 2-0 3-0 3-1");
        // The first batch alone confirmed: its checkpoint still has one open.
        book.confirm(0, 1);
        assert_eq!(book.record(0, &[]), "1-0 1-1 2-0 3-0 3-1");
        // Both batches of the first checkpoint confirmed: it is forgotten.
        book.confirm(0, 1);
        assert_eq!(book.record(0, &[&ids(&["4-0"])]), "3-0 3-1 4-0");
        book.confirm(0, 2);
        assert_eq!(book.record(0, &[&ids(&["5-0"])]), "5-0");
        // Streams keep separate books.
        assert_eq!(book.record(1, &[&ids(&["9-0"])]), "9-0");
    }
}
