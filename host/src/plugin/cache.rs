//! Compiled components cached on disk by content hash.
//!
//! Compiling a 12-18 MB Python or JavaScript component takes seconds; loading
//! its precompiled form takes milliseconds. Entries are keyed by the
//! component's hash and the engine's compatibility hash, so a wasmtime upgrade
//! or a config change never loads a stale artifact.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::VersionId;

/// The on-disk cache of compiled components.
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// Uses `$WEIR_CACHE_DIR`, else the user's cache dir (`~/.cache/weir`);
    /// `WEIR_CACHE_DIR=off` disables the cache.
    pub(crate) fn from_env() -> Self {
        let dir = match std::env::var_os("WEIR_CACHE_DIR") {
            Some(v) if v == "off" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => dirs::cache_dir().map(|d| d.join("weir").join("components")),
        };
        ComponentCache { dir }
    }

    /// Returns the compiled component for `bytes`, compiling it on a miss.
    pub(crate) fn load(&self, engine: &Engine, version: &VersionId, bytes: &[u8]) -> Result<Component> {
        let Some(path) = self.entry_path(engine, version) else {
            return Ok(Component::new(engine, bytes)?);
        };
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` from this
            // engine configuration (its compatibility hash is in the name) and
            // the cache directory belongs to the user running weir.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e:#}"),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), "cannot write compiled component to cache: {e:#}");
        }
        Ok(component)
    }

    fn entry_path(&self, engine: &Engine, version: &VersionId) -> Option<PathBuf> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{:016x}.cwasm", version.to_hex(), hasher.finish())))
    }
}

/// Writes atomically (temp file + rename) so that concurrent weir processes
/// never read a half-written entry.
fn store(path: &Path, component: &Component) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize()?;
    let tmp = dir.join(format!(".tmp-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
