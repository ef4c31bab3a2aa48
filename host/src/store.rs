//! The embedded state store: one [redb] file per pipeline state folder, a
//! table per stage.
//!
//! Why redb: it is a pure-Rust, transactional (ACID, copy-on-write B-trees,
//! fsync on commit) key-value store with no C toolchain or background
//! threads, so a checkpoint is one write transaction that holds exactly the
//! keys that changed since the last one, and either all of it is on disk
//! after a crash or none of it is. Its file lock also keeps a second `weir`
//! from using the same state folder at the same time.
//!
//! Stages keep their state in memory for fast reads (plugins read state on
//! the hot path) and hand the store only their changes; see
//! [`crate::plugin::state::StageState`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

/// The store's file inside the state folder.
pub const FILE_NAME: &str = "state.redb";

/// A table name is `stage:` followed by the stage's name.
const STAGE_PREFIX: &str = "stage:";

/// Source positions covered by the saved state: key `source\0partition`.
const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");

/// Bookkeeping of exactly-once checkpoints: key [`PENDING`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The last exactly-once checkpoint, whose transaction may not have
/// committed when the process died.
const PENDING: &str = "pending-transaction";

/// An exactly-once checkpoint made durable before its transaction committed
/// (the store is written first so that a committed transaction always has
/// its state). On restart the transaction's outcome decides: committed, the
/// checkpoint stays; not committed, the store goes back to the savepoint
/// taken just before it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingTransaction {
    /// The transaction's name (Kafka: the `transactional.id`).
    pub transaction: String,
    /// The positions the transaction commits (source, key, value).
    pub positions: Vec<(String, String, Vec<u8>)>,
    /// The redb savepoint of the store just before the checkpoint.
    savepoint: u64,
}

/// Why the state store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state folder cannot be created or written.
    #[error("state folder {}: {reason}", .dir.display())]
    Folder {
        /// The folder.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Another process has the store open.
    #[error(
        "state store {} is in use by another weir process (each running pipeline needs its own `[state] dir`)",
        .file.display()
    )]
    InUse {
        /// The store's file.
        file: PathBuf,
    },
    /// The store's file cannot be read or written.
    #[error("state store {}: {reason}", .file.display())]
    Storage {
        /// The store's file.
        file: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What one stage changed since the last checkpoint: a key's new value, or
/// `None` when it was deleted.
pub type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A source position recorded with a checkpoint: what a restart re-applies
/// to the source (offsets to seek to, entries to acknowledge) before it
/// reads, so that nothing the saved state covers is applied twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionRecord {
    /// The source's name.
    pub source: String,
    /// Which part of the source (a partition, a stream); the source's own
    /// naming.
    pub key: String,
    /// The source's encoding of the position; `None` removes the record
    /// (e.g. a file read to its end).
    pub value: Option<Vec<u8>>,
}

/// How much state a stage holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSummary {
    /// The stage's name.
    pub stage: String,
    /// Keys held.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// One pipeline's state store.
pub struct StateStore {
    db: Database,
    file: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("file", &self.file).finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let folder = |reason: String| StoreError::Folder { dir: dir.to_path_buf(), reason };
        std::fs::create_dir_all(dir).map_err(|e| folder(format!("cannot create it: {e}")))?;
        if !dir.is_dir() {
            return Err(folder("is not a folder".into()));
        }
        let file = dir.join(FILE_NAME);
        // A pipeline that just ended (in this process, or a process that is
        // exiting) may still hold the lock for a moment: wait up to 2 s.
        let mut opened = Database::create(&file);
        for _ in 0..20 {
            if !matches!(opened, Err(redb::DatabaseError::DatabaseAlreadyOpen)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            opened = Database::create(&file);
        }
        let db = opened.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { file: file.clone() },
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) if !file.exists() => {
                folder(format!("cannot write in it: {io}"))
            }
            other => StoreError::Storage { file: file.clone(), reason: other.to_string() },
        })?;
        Ok(StateStore { db, file })
    }

    /// The store's file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn storage(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Storage { file: self.file.clone(), reason: error.to_string() }
    }

    /// Everything `stage` holds.
    pub fn load(&self, stage: &str) -> Result<HashMap<Vec<u8>, Vec<u8>>, StoreError> {
        let name = table_name(stage);
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = match read.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(self.storage(e)),
        };
        let mut entries = HashMap::new();
        for item in table.iter().map_err(|e| self.storage(e))? {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            entries.insert(key.value().to_vec(), value.value().to_vec());
        }
        Ok(entries)
    }

    /// Writes every stage's changes in one transaction: after a crash either
    /// all of them are in the store or none is.
    pub fn commit(&self, changes: &[(&str, &Changes)]) -> Result<(), StoreError> {
        self.checkpoint(changes, &[])
    }

    /// Writes every stage's changes and the source positions they cover in
    /// one transaction (a checkpoint): after a crash either all of it is in
    /// the store or none is.
    pub fn checkpoint(&self, changes: &[(&str, &Changes)], positions: &[PositionRecord]) -> Result<(), StoreError> {
        if changes.iter().all(|(_, c)| c.is_empty()) && positions.is_empty() {
            return Ok(());
        }
        let write = self.db.begin_write().map_err(|e| self.storage(e))?;
        self.write_checkpoint(&write, changes, positions)?;
        write.commit().map_err(|e| self.storage(e))
    }

    /// Like [`StateStore::checkpoint`], for a checkpoint whose positions a
    /// transaction named `transaction` is about to commit: a savepoint of
    /// the store before it is kept, and the checkpoint is marked pending
    /// until [`StateStore::resolve`] says how the transaction ended (an
    /// earlier pending mark and savepoint are replaced: a new checkpoint is
    /// only made once the previous transaction committed).
    pub fn checkpoint_pending(
        &self,
        changes: &[(&str, &Changes)],
        positions: &[PositionRecord],
        transaction: &str,
    ) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(|e| self.storage(e))?;
        let savepoint = write.persistent_savepoint().map_err(|e| self.storage(e))?;
        let older: Vec<u64> =
            write.list_persistent_savepoints().map_err(|e| self.storage(e))?.filter(|id| *id != savepoint).collect();
        for id in older {
            write.delete_persistent_savepoint(id).map_err(|e| self.storage(e))?;
        }
        let pending = PendingTransaction {
            transaction: transaction.to_string(),
            positions: positions
                .iter()
                .filter_map(|r| Some((r.source.clone(), r.key.clone(), r.value.clone()?)))
                .collect(),
            savepoint,
        };
        let encoded = serde_json::to_vec(&pending).map_err(|e| self.storage(e))?;
        write
            .open_table(META)
            .and_then(|mut t| Ok(t.insert(PENDING, encoded.as_slice()).map(drop)?))
            .map_err(|e| self.storage(e))?;
        self.write_checkpoint(&write, changes, positions)?;
        write.commit().map_err(|e| self.storage(e))
    }

    /// The exactly-once checkpoint whose transaction's outcome is not known
    /// yet, if any.
    pub fn pending_transaction(&self) -> Result<Option<PendingTransaction>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = match read.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.storage(e)),
        };
        let Some(value) = table.get(PENDING).map_err(|e| self.storage(e))? else { return Ok(None) };
        serde_json::from_slice(value.value()).map(Some).map_err(|e| self.storage(format!("pending checkpoint: {e}")))
    }

    /// Settles the pending checkpoint: kept when its transaction
    /// `committed`, else the store goes back to how it was before it
    /// (stage state and positions alike).
    pub fn resolve(&self, pending: &PendingTransaction, committed: bool) -> Result<(), StoreError> {
        if !committed {
            let mut write = self.db.begin_write().map_err(|e| self.storage(e))?;
            let savepoint = write.get_persistent_savepoint(pending.savepoint).map_err(|e| self.storage(e))?;
            write.restore_savepoint(&savepoint).map_err(|e| self.storage(e))?;
            write.commit().map_err(|e| self.storage(e))?;
        }
        // The savepoint's own state may hold an earlier (committed) mark.
        let write = self.db.begin_write().map_err(|e| self.storage(e))?;
        let savepoints: Vec<u64> = write.list_persistent_savepoints().map_err(|e| self.storage(e))?.collect();
        for id in savepoints {
            write.delete_persistent_savepoint(id).map_err(|e| self.storage(e))?;
        }
        write.open_table(META).and_then(|mut t| Ok(t.remove(PENDING).map(drop)?)).map_err(|e| self.storage(e))?;
        write.commit().map_err(|e| self.storage(e))
    }

    fn write_checkpoint(
        &self,
        write: &redb::WriteTransaction,
        changes: &[(&str, &Changes)],
        positions: &[PositionRecord],
    ) -> Result<(), StoreError> {
        if !positions.is_empty() {
            let mut table = write.open_table(POSITIONS).map_err(|e| self.storage(e))?;
            for record in positions {
                let key = position_key(&record.source, &record.key);
                match &record.value {
                    Some(value) => table.insert(key.as_str(), value.as_slice()).map(drop),
                    None => table.remove(key.as_str()).map(drop),
                }
                .map_err(|e| self.storage(e))?;
            }
        }
        for (stage, changes) in changes.iter().filter(|(_, c)| !c.is_empty()) {
            let name = table_name(stage);
            let mut table =
                write.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)).map_err(|e| self.storage(e))?;
            for (key, value) in changes.iter() {
                match value {
                    Some(value) => table.insert(key.as_slice(), value.as_slice()).map(drop),
                    None => table.remove(key.as_slice()).map(drop),
                }
                .map_err(|e| self.storage(e))?;
            }
        }
        Ok(())
    }

    /// The positions recorded for `source` (key, value), sorted by key.
    pub fn positions(&self, source: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .all_positions()?
            .into_iter()
            .filter(|r| r.source == source)
            .filter_map(|r| Some((r.key, r.value?)))
            .collect())
    }

    /// Every recorded source position, sorted by source and key.
    pub fn all_positions(&self) -> Result<Vec<PositionRecord>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = match read.open_table(POSITIONS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.storage(e)),
        };
        let mut records = Vec::new();
        for item in table.iter().map_err(|e| self.storage(e))? {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let (source, key) = key.value().split_once('\0').unwrap_or((key.value(), ""));
            records.push(PositionRecord {
                source: source.to_string(),
                key: key.to_string(),
                value: Some(value.value().to_vec()),
            });
        }
        Ok(records)
    }

    /// Forgets every recorded source position (the next run starts where
    /// the brokers' committed positions say); returns how many there were.
    pub fn reset_positions(&self) -> Result<u64, StoreError> {
        if let Some(pending) = self.pending_transaction()? {
            self.resolve(&pending, true)?;
        }
        self.drop_table(POSITIONS)
    }

    /// The stages with saved state, with their sizes.
    pub fn stages(&self) -> Result<Vec<StageSummary>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let mut summaries = Vec::new();
        for handle in read.list_tables().map_err(|e| self.storage(e))? {
            let Some(stage) = handle.name().strip_prefix(STAGE_PREFIX) else { continue };
            let table =
                read.open_table(TableDefinition::<&[u8], &[u8]>::new(handle.name())).map_err(|e| self.storage(e))?;
            let keys = table.len().map_err(|e| self.storage(e))?;
            let mut bytes = 0u64;
            for item in table.iter().map_err(|e| self.storage(e))? {
                let (key, value) = item.map_err(|e| self.storage(e))?;
                bytes += (key.value().len() + value.value().len()) as u64;
            }
            summaries.push(StageSummary { stage: stage.to_string(), keys, bytes });
        }
        Ok(summaries)
    }

    /// Drops everything `stage` holds; returns how many keys it had.
    pub fn reset(&self, stage: &str) -> Result<u64, StoreError> {
        let name = table_name(stage);
        self.drop_table(TableDefinition::<&[u8], &[u8]>::new(&name))
    }

    /// Deletes a table in one transaction; returns how many keys it had.
    fn drop_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<u64, StoreError> {
        let write = self.db.begin_write().map_err(|e| self.storage(e))?;
        let keys = write.open_table(definition).and_then(|t| Ok(t.len()?)).map_err(|e| self.storage(e))?;
        write.delete_table(definition).map_err(|e| self.storage(e))?;
        write.commit().map_err(|e| self.storage(e))?;
        Ok(keys)
    }
}

fn position_key(source: &str, key: &str) -> String {
    format!("{source}\0{key}")
}

fn table_name(stage: &str) -> String {
    format!("{STAGE_PREFIX}{stage}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_committed_together_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let a: Changes = vec![(b"k1".to_vec(), Some(b"1".to_vec())), (b"k2".to_vec(), Some(b"22".to_vec()))];
        let b: Changes = vec![(b"x".to_vec(), Some(b"y".to_vec()))];
        store.commit(&[("a", &a), ("b", &b)]).unwrap();
        store.commit(&[("a", &vec![(b"k1".to_vec(), None)])]).unwrap();
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        let a = store.load("a").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[b"k2".as_slice()], b"22");
        assert!(store.load("never").unwrap().is_empty());
        let summaries = store.stages().unwrap();
        assert_eq!(
            summaries,
            [
                StageSummary { stage: "a".into(), keys: 1, bytes: 4 },
                StageSummary { stage: "b".into(), keys: 1, bytes: 2 }
            ]
        );
        assert_eq!(store.reset("a").unwrap(), 1);
        assert!(store.load("a").unwrap().is_empty());
    }

    #[test]
    fn positions_are_committed_with_the_changes_and_removed_by_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let record = |source: &str, key: &str, value: Option<&[u8]>| PositionRecord {
            source: source.into(),
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        };
        let a: Changes = vec![(b"k".to_vec(), Some(b"1".to_vec()))];
        store.checkpoint(&[("a", &a)], &[record("in", "t/0", Some(b"10")), record("in", "t/1", Some(b"7"))]).unwrap();
        store.checkpoint(&[], &[record("in", "t/0", Some(b"12")), record("other", "", Some(b"x"))]).unwrap();
        assert_eq!(store.positions("in").unwrap(), [("t/0".into(), b"12".to_vec()), ("t/1".into(), b"7".to_vec())]);
        store.checkpoint(&[], &[record("other", "", None)]).unwrap();
        assert!(store.positions("other").unwrap().is_empty());
        assert_eq!(store.load("a").unwrap().len(), 1);
        assert_eq!(store.reset_positions().unwrap(), 2);
        assert!(store.all_positions().unwrap().is_empty());
    }

    #[test]
    fn a_pending_checkpoint_is_kept_when_its_transaction_committed_and_undone_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let record =
            |value: &[u8]| PositionRecord { source: "in".into(), key: "t/0".into(), value: Some(value.to_vec()) };
        let first: Changes = vec![(b"k".to_vec(), Some(b"1".to_vec()))];
        store.checkpoint_pending(&[("count", &first)], &[record(b"10")], "txn").unwrap();
        let pending = store.pending_transaction().unwrap().expect("pending");
        assert_eq!(pending.transaction, "txn");
        assert_eq!(pending.positions, [("in".to_string(), "t/0".to_string(), b"10".to_vec())]);
        store.resolve(&pending, true).unwrap();
        assert!(store.pending_transaction().unwrap().is_none());
        assert_eq!(store.load("count").unwrap()[b"k".as_slice()], b"1");

        // The next checkpoint's transaction never committed: back to the first.
        let second: Changes = vec![(b"k".to_vec(), Some(b"2".to_vec())), (b"new".to_vec(), Some(b"1".to_vec()))];
        store.checkpoint_pending(&[("count", &second)], &[record(b"20")], "txn").unwrap();
        let third: Changes = vec![(b"k".to_vec(), Some(b"3".to_vec()))];
        store.checkpoint_pending(&[("count", &third)], &[record(b"30")], "txn").unwrap();
        let pending = store.pending_transaction().unwrap().expect("pending");
        assert_eq!(pending.positions[0].2, b"30");
        store.resolve(&pending, false).unwrap();
        assert!(store.pending_transaction().unwrap().is_none());
        let state = store.load("count").unwrap();
        assert_eq!((state[b"k".as_slice()].as_slice(), state.len()), (b"2".as_slice(), 2), "the second checkpoint");
        assert_eq!(store.positions("in").unwrap(), [("t/0".to_string(), b"20".to_vec())]);
        drop(store);
        // Settled for good: a reopened store has no savepoint or mark left.
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.pending_transaction().unwrap().is_none());
    }

    #[test]
    fn a_second_opener_and_an_unusable_folder_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is in use by another weir process"), "{err}");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = StateStore::open(&file).unwrap_err().to_string();
        assert!(err.starts_with(&format!("state folder {}: cannot create it", file.display())), "{err}");
    }
}
