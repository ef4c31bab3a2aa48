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
#[derive(Debug, Default)]
pub struct StageState {
    entries: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
}

const FILE_MAGIC: &[u8; 8] = b"weirst01";

impl StageState {
    /// A state that lives in memory only.
    pub fn in_memory() -> Self {
        StageState::default()
    }

    /// Opens (or starts) the state saved at `file`.
    pub fn open(file: PathBuf) -> Result<Self> {
        let entries = if file.exists() { read_file(&file)? } else { HashMap::new() };
        Ok(StageState { entries: Mutex::new(entries), file: Some(file), dirty: AtomicBool::new(false) })
    }

    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.lock().get(key).cloned()
    }

    /// Writes a key.
    pub fn set(&self, key: Vec<u8>, value: Vec<u8>) {
        self.entries.lock().insert(key, value);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Removes a key.
    pub fn delete(&self, key: &[u8]) {
        if self.entries.lock().remove(key).is_some() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
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
            self.entries.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
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

/// Plugin-defined counters of one stage (`counter-add`).
#[derive(Debug, Default)]
pub struct Counters {
    values: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// Adds `delta` to `name`.
    pub fn add(&self, name: &str, delta: u64) {
        let mut values = self.values.lock();
        match values.get_mut(name) {
            Some(v) => *v = v.saturating_add(delta),
            None => {
                values.insert(name.to_string(), delta);
            }
        }
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.values.lock().clone()
    }
}
