//! A stage's key-value state and plugin-defined counters.
//!
//! One state per stage, shared by all its instances (a plugin counting by key
//! sees the same counts whichever instance a message lands on). It lives in
//! memory and is saved to `<state_dir>/<stage>.state` on checkpoints and at
//! shutdown, so it survives hot swaps and restarts.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use parking_lot::Mutex;

/// A stage's key-value state.
#[derive(Debug)]
pub struct StageState {
    entries: Mutex<Entries>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
    /// Most bytes (keys and values) the state may hold.
    quota: usize,
}

/// The map and the bytes it holds, under one lock.
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl Entries {
    fn new(map: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        Entries { map, bytes }
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
        StageState {
            entries: Mutex::default(),
            file: None,
            dirty: AtomicBool::new(false),
            quota: (DEFAULT_STATE_MB << 20) as usize,
        }
    }

    /// Opens (or starts) the state saved at `file`, holding at most `quota`
    /// bytes of keys and values. A saved state already over the quota still
    /// opens (a lowered quota must not lose data); it can then only shrink.
    pub fn open(file: PathBuf, quota: usize) -> Result<Self> {
        let entries = if file.exists() { read_file(&file)? } else { HashMap::new() };
        Ok(StageState {
            entries: Mutex::new(Entries::new(entries)),
            file: Some(file),
            dirty: AtomicBool::new(false),
            quota,
        })
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
        entries.map.insert(key, value);
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a key.
    pub fn delete(&self, key: &[u8]) {
        let mut entries = self.entries.lock();
        if let Some(value) = entries.map.remove(key) {
            entries.bytes -= key.len() + value.len();
            self.dirty.store(true, Ordering::Relaxed);
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

    /// Saves the state to its file if it changed since the last save.
    pub fn save(&self) -> Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let snapshot: BTreeMap<Vec<u8>, Vec<u8>> =
            self.entries.lock().map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        write_file(file, &snapshot).inspect_err(|_| self.dirty.store(true, Ordering::Relaxed))
    }
}

fn read_file(path: &Path) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
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

fn write_file(path: &Path, entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("state.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    out.write_all(FILE_MAGIC)?;
    for (key, value) in entries {
        for item in [key, value] {
            let len = u32::try_from(item.len()).or_else(|_| bail!("state entry over 4 GiB"))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(item)?;
        }
    }
    out.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("saving stage state {}", path.display()))?;
    Ok(())
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
        let state = StageState::open(dir.path().join("s.state"), 100).unwrap();
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
