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
        if changes.iter().all(|(_, c)| c.is_empty()) {
            return Ok(());
        }
        let write = self.db.begin_write().map_err(|e| self.storage(e))?;
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
        write.commit().map_err(|e| self.storage(e))
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
        let definition = TableDefinition::<&[u8], &[u8]>::new(&name);
        let write = self.db.begin_write().map_err(|e| self.storage(e))?;
        let keys = match write.open_table(definition) {
            Ok(table) => table.len().map_err(|e| self.storage(e))?,
            Err(e) => return Err(self.storage(e)),
        };
        write.delete_table(definition).map_err(|e| self.storage(e))?;
        write.commit().map_err(|e| self.storage(e))?;
        Ok(keys)
    }
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
