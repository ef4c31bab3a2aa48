//! A stage's key-value state and plugin-defined counters.
//!
//! One state per stage, shared by all its instances (a plugin counting by key
//! sees the same counts whichever instance a message lands on). It lives in
//! memory, where plugins read it, and remembers which keys changed; on
//! checkpoints and at shutdown only those keys are written to the
//! pipeline's [`StateStore`], so it survives hot swaps and restarts and a
//! checkpoint costs what changed, not what is held.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use parking_lot::Mutex;

use crate::flow::checkpoint::CheckpointStore;
use crate::store::{Changes, PositionRecord, StateStore, StoreError};

/// A stage's key-value state.
#[derive(Debug)]
pub struct StageState {
    entries: Mutex<Entries>,
    /// Where it is saved, and under which stage name; `None` in memory only.
    store: Option<(Arc<StateStore>, String)>,
    /// Most bytes (keys and values) the state may hold.
    quota: usize,
}

/// The map, the bytes it holds and the keys changed since the last save,
/// under one lock.
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
    changed: HashSet<Vec<u8>>,
}

impl Entries {
    fn new(map: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        Entries { map, bytes, changed: HashSet::new() }
    }
}

/// A `state-set` that would take the state past its quota.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "state quota exceeded: this write would make the stage's state {} MiB, over `limits.state_mb` = {}",
    .would_hold.div_ceil(1 << 20),
    .quota >> 20
)]
pub struct QuotaExceeded {
    /// Bytes the state would hold after the write.
    pub would_hold: usize,
    /// The quota, in bytes.
    pub quota: usize,
}

/// Default quota of a stage's state, in MiB.
pub const DEFAULT_STATE_MB: u64 = 256;

const FILE_MAGIC: &[u8; 8] = b"weirst01";

impl StageState {
    /// A state that lives in memory only, with the default quota.
    pub fn in_memory() -> Self {
        StageState { entries: Mutex::default(), store: None, quota: (DEFAULT_STATE_MB << 20) as usize }
    }

    /// Opens the state of `stage` saved in `store`, holding at most `quota`
    /// bytes of keys and values. A saved state already over the quota still
    /// opens (a lowered quota must not lose data); it can then only shrink.
    ///
    /// A state file of the earlier format (`<stage>.state` beside the
    /// store) is imported once and renamed `<stage>.state.imported`.
    pub fn open(store: Arc<StateStore>, stage: &str, quota: usize) -> Result<Self> {
        let mut map = store.load(stage)?;
        let legacy = store.file().with_file_name(format!("{stage}.state"));
        if map.is_empty() && legacy.is_file() {
            map = read_legacy_file(&legacy)?;
            let changes: Changes = map.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            store.commit(&[(stage, &changes)])?;
            let imported = legacy.with_extension("state.imported");
            std::fs::rename(&legacy, &imported)
                .with_context(|| format!("renaming {} after importing it", legacy.display()))?;
            tracing::info!(
                stage,
                "imported {} keys from {} into {}",
                map.len(),
                legacy.display(),
                store.file().display()
            );
        }
        Ok(StageState { entries: Mutex::new(Entries::new(map)), store: Some((store, stage.to_string())), quota })
    }

    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.lock().map.get(key).cloned()
    }

    /// Writes a key, unless that takes the state past its quota.
    pub fn set(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), QuotaExceeded> {
        let mut entries = self.entries.lock();
        let old = entries.map.get(&key).map_or(0, |v| key.len() + v.len());
        let would_hold = entries.bytes - old + key.len() + value.len();
        if would_hold > self.quota && would_hold > entries.bytes {
            return Err(QuotaExceeded { would_hold, quota: self.quota });
        }
        entries.bytes = would_hold;
        if self.store.is_some() && !entries.changed.contains(&key) {
            entries.changed.insert(key.clone());
        }
        entries.map.insert(key, value);
        Ok(())
    }

    /// Removes a key.
    pub fn delete(&self, key: &[u8]) {
        let mut entries = self.entries.lock();
        if let Some(value) = entries.map.remove(key) {
            entries.bytes -= key.len() + value.len();
            if self.store.is_some() {
                entries.changed.insert(key.to_vec());
            }
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.lock().map.len()
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.entries.lock().bytes
    }

    /// Whether the state is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys changed since the last call, with their current values
    /// (`None`: deleted), for a checkpoint. If the checkpoint fails, hand
    /// them back with [`StageState::restore_changes`].
    pub fn take_changes(&self) -> Changes {
        let mut entries = self.entries.lock();
        let changed = std::mem::take(&mut entries.changed);
        changed
            .into_iter()
            .map(|key| {
                let value = entries.map.get(&key).cloned();
                (key, value)
            })
            .collect()
    }

    /// Marks keys of a failed checkpoint as changed again (their current
    /// values are written by the next one).
    pub fn restore_changes(&self, changes: Changes) {
        self.entries.lock().changed.extend(changes.into_iter().map(|(key, _)| key));
    }

    /// Whether a key changed since the last save.
    pub fn has_changes(&self) -> bool {
        !self.entries.lock().changed.is_empty()
    }

    /// Writes what changed since the last save to the store (one stage;
    /// a pipeline saves all its stages together with [`save_all`]).
    pub fn save(&self) -> Result<(), StoreError> {
        save_all([self])
    }

    /// The store and stage name, for [`save_all`].
    fn target(&self) -> Option<(&Arc<StateStore>, &str)> {
        self.store.as_ref().map(|(store, stage)| (store, stage.as_str()))
    }
}

/// Writes the changes of every state in one transaction: after a crash,
/// either all stages' changes of a checkpoint are saved or none. (All the
/// states of one pipeline share its store.)
pub fn save_all<'a>(states: impl IntoIterator<Item = &'a StageState>) -> Result<(), StoreError> {
    let states: Vec<&StageState> = states.into_iter().collect();
    let Some((store, _)) = states.iter().find_map(|s| s.target()) else { return Ok(()) };
    checkpoint_all(store, &states, &[], None)
}

/// Writes the changes of every state and `positions` in one transaction;
/// on failure the changes are kept for the next try.
fn checkpoint_all(
    store: &StateStore,
    states: &[&StageState],
    positions: &[PositionRecord],
    transaction: Option<&str>,
) -> Result<(), StoreError> {
    let taken: Vec<(&StageState, &str, Changes)> =
        states.iter().filter_map(|s| s.target().map(|(_, stage)| (*s, stage, s.take_changes()))).collect();
    let batch: Vec<(&str, &Changes)> = taken.iter().map(|(_, stage, c)| (*stage, c)).collect();
    let written = match transaction {
        Some(name) => store.checkpoint_pending(&batch, positions, name),
        None => store.checkpoint(&batch, positions),
    };
    written.inspect_err(|_| {
        for (state, _, changes) in taken {
            state.restore_changes(changes);
        }
    })
}

/// The state of a pipeline's stages, as its checkpoints see it.
pub struct PipelineState {
    store: Arc<StateStore>,
    states: Vec<Arc<StageState>>,
}

impl PipelineState {
    /// The stages' `states`, saved in `store`.
    pub fn new(store: Arc<StateStore>, states: Vec<Arc<StageState>>) -> Self {
        PipelineState { store, states }
    }
}

impl CheckpointStore for PipelineState {
    fn has_changes(&self) -> bool {
        self.states.iter().any(|s| s.has_changes())
    }

    fn commit(&self, positions: &[PositionRecord], with_state: bool, transaction: Option<&str>) -> Result<(), String> {
        let states: Vec<&StageState> =
            if with_state { self.states.iter().map(Arc::as_ref).collect() } else { Vec::new() };
        checkpoint_all(&self.store, &states, positions, transaction).map_err(|e| e.to_string())
    }
}

fn read_legacy_file(path: &Path) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading stage state {}", path.display()))?;
    let corrupt = || anyhow::anyhow!("stage state {} is corrupt", path.display());
    let rest = bytes.strip_prefix(FILE_MAGIC.as_slice()).ok_or_else(corrupt)?;
    let mut entries = HashMap::new();
    let mut cursor = rest;
    let take = |cursor: &mut &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(cursor.get(..4)?.try_into().ok()?) as usize;
        let item = cursor.get(4..4 + len)?.to_vec();
        *cursor = &cursor[4 + len..];
        Some(item)
    };
    while !cursor.is_empty() {
        let key = take(&mut cursor).ok_or_else(corrupt)?;
        let value = take(&mut cursor).ok_or_else(corrupt)?;
        entries.insert(key, value);
    }
    Ok(entries)
}

/// Most distinct counter names one stage may define: each becomes a metric
/// series, so a plugin must not be able to explode the label cardinality.
pub const MAX_COUNTER_NAMES: usize = 256;
/// Longest counter name, in bytes.
pub const MAX_COUNTER_NAME_BYTES: usize = 128;

/// Plugin-defined counters of one stage (`counter-add`).
#[derive(Debug, Default)]
pub struct Counters {
    values: Mutex<BTreeMap<String, u64>>,
    /// Whether a refused name was already reported (reported once).
    refusal_reported: AtomicBool,
}

/// Why a `counter-add` was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterRefused {
    /// The name is longer than [`MAX_COUNTER_NAME_BYTES`].
    #[error("counter name of {0} bytes is over the {MAX_COUNTER_NAME_BYTES}-byte limit")]
    NameTooLong(usize),
    /// The stage already has [`MAX_COUNTER_NAMES`] counters.
    #[error("the stage already has {MAX_COUNTER_NAMES} counters, the most one stage may define")]
    TooManyNames,
}

impl Counters {
    /// Adds `delta` to `name`; a new name past the caps is dropped.
    pub fn add(&self, name: &str, delta: u64) -> Result<(), CounterRefused> {
        let mut values = self.values.lock();
        if let Some(v) = values.get_mut(name) {
            *v = v.saturating_add(delta);
            return Ok(());
        }
        if name.len() > MAX_COUNTER_NAME_BYTES {
            return Err(CounterRefused::NameTooLong(name.len()));
        }
        if values.len() >= MAX_COUNTER_NAMES {
            return Err(CounterRefused::TooManyNames);
        }
        values.insert(name.to_string(), delta);
        Ok(())
    }

    /// True the first time it is called: refusals are reported once per stage.
    pub fn first_refusal(&self) -> bool {
        !self.refusal_reported.swap(true, Ordering::Relaxed)
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.values.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_counts_keys_and_values_and_lets_a_full_state_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let state = StageState::open(store, "s", 100).unwrap();
        state.set(b"a".to_vec(), vec![0; 59]).unwrap();
        assert_eq!(state.bytes(), 60);
        let err = state.set(b"b".to_vec(), vec![0; 40]).unwrap_err();
        assert_eq!((err.would_hold, err.quota), (101, 100));
        // Replacing a value counts only the difference.
        state.set(b"a".to_vec(), vec![0; 99]).unwrap();
        assert_eq!(state.bytes(), 100);
        state.set(b"a".to_vec(), vec![0; 9]).unwrap();
        state.delete(b"a");
        assert_eq!((state.bytes(), state.len()), (0, 0));
    }

    #[test]
    fn only_changed_keys_are_saved_and_all_stages_save_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let a = StageState::open(store.clone(), "a", 1 << 20).unwrap();
        let b = StageState::open(store.clone(), "b", 1 << 20).unwrap();
        for i in 0..100u32 {
            a.set(i.to_be_bytes().to_vec(), b"v".to_vec()).unwrap();
        }
        b.set(b"k".to_vec(), b"1".to_vec()).unwrap();
        save_all([&a, &b]).unwrap();
        a.set(7u32.to_be_bytes().to_vec(), b"seven".to_vec()).unwrap();
        a.delete(&8u32.to_be_bytes());
        let changes = a.take_changes();
        assert_eq!(changes.len(), 2, "only the two keys touched since the save");
        a.restore_changes(changes);
        save_all([&a, &b]).unwrap();
        drop((a, b, store));
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let a = StageState::open(store.clone(), "a", 1 << 20).unwrap();
        assert_eq!(a.len(), 99);
        assert_eq!(a.get(&7u32.to_be_bytes()).as_deref(), Some(&b"seven"[..]));
        assert_eq!(StageState::open(store, "b", 1 << 20).unwrap().get(b"k").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_state_file_of_the_earlier_format_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut legacy = FILE_MAGIC.to_vec();
        for item in [&b"key"[..], &b"value"[..]] {
            legacy.extend_from_slice(&(item.len() as u32).to_le_bytes());
            legacy.extend_from_slice(item);
        }
        std::fs::write(dir.path().join("old.state"), legacy).unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let state = StageState::open(store.clone(), "old", 1 << 20).unwrap();
        assert_eq!(state.get(b"key").as_deref(), Some(&b"value"[..]));
        assert!(!dir.path().join("old.state").exists());
        assert!(dir.path().join("old.state.imported").exists());
        drop(state);
        assert_eq!(store.load("old").unwrap().len(), 1, "saved in the store by the import");
    }

    #[test]
    fn counters_refuse_long_names_and_too_many_names() {
        let counters = Counters::default();
        let long = "x".repeat(MAX_COUNTER_NAME_BYTES + 1);
        assert_eq!(counters.add(&long, 1), Err(CounterRefused::NameTooLong(MAX_COUNTER_NAME_BYTES + 1)));
        for i in 0..MAX_COUNTER_NAMES {
            counters.add(&format!("c{i}"), 1).unwrap();
        }
        assert_eq!(counters.add("one-more", 1), Err(CounterRefused::TooManyNames));
        counters.add("c0", 2).unwrap();
        assert_eq!(counters.snapshot()["c0"], 3);
        assert!(counters.first_refusal());
        assert!(!counters.first_refusal());
    }
}
