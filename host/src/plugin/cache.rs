//! Compiled components cached on disk by content hash.
//!
//! Compiling a 12-18 MB Python or JavaScript component takes seconds; loading
//! its precompiled form takes milliseconds. Entries are keyed by the
//! component's hash and the engine's compatibility hash, so a wasmtime upgrade
//! or a config change never loads a stale artifact.
//!
//! An entry is native code that is mapped and run as it is, so it is trusted
//! only as far as it is checked: the folder is private to the user (0700,
//! tightened if it is not, not used if that fails), and each entry carries
//! the blake3 hash of its artifact, verified before it is loaded. An entry
//! that fails the check is compiled afresh (with a warning) and replaced.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::VersionId;

/// What starts every entry, before the artifact's hash and the artifact.
const MAGIC: &[u8; 8] = b"weircc01";
const HEADER_LEN: usize = MAGIC.len() + blake3::OUT_LEN;

/// Components at least this large get a progress line while they compile
/// (Python ~19 MB, JS ~12 MB; Rust plugins are well under).
const ANNOUNCED_COMPILE_BYTES: usize = 4 << 20;

/// The on-disk cache of compiled components.
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    /// Whether `dir` is usable (created or checked private), decided once.
    private: OnceLock<bool>,
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
        ComponentCache { dir, private: OnceLock::new() }
    }

    /// Returns the compiled component for `bytes`, compiling it on a miss.
    pub(crate) fn load(&self, engine: &Engine, version: &VersionId, bytes: &[u8]) -> Result<Component> {
        let Some(path) = self.entry_path(engine, version) else {
            return Ok(Component::new(engine, bytes)?);
        };
        match std::fs::read(&path) {
            Ok(entry) => match verified(&entry) {
                // SAFETY: the artifact was written by `Component::serialize`
                // for this engine configuration (its compatibility hash is in
                // the name), its hash matches what was stored with it, and
                // the folder is private to the user running weir.
                Ok(artifact) => match unsafe { Component::deserialize(engine, artifact) } {
                    Ok(component) => return Ok(component),
                    Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e:#}"),
                },
                Err(e) => tracing::warn!(path = %path.display(), "ignoring cache entry, recompiling: {e}"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "cannot read cache entry: {e}"),
        }
        // The wait a user notices (a Python or JS component takes seconds to
        // tens of seconds): say what it is, and that it happens once. A
        // small component compiles in about a second, unannounced.
        let step = (bytes.len() >= ANNOUNCED_COMPILE_BYTES).then(|| {
            super::progress::Step::start_logged(format!(
                "compiling component {} ({:.1} MB) to native code, once: the cache makes the next start instant",
                version.short(),
                bytes.len() as f64 / 1e6,
            ))
            .ending(format!("compiled component {}", version.short()))
        });
        let component = Component::new(engine, bytes)?;
        if let Some(step) = step {
            step.done();
        }
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), "cannot write compiled component to cache: {e:#}");
        }
        Ok(component)
    }

    fn entry_path(&self, engine: &Engine, version: &VersionId) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        if !*self.private.get_or_init(|| match make_private(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %dir.display(), "not using the compiled-component cache: {e:#}");
                false
            }
        }) {
            return None;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(dir.join(format!("{}-{:016x}.weirc", version.to_hex(), hasher.finish())))
    }
}

/// Creates `dir` with mode 0700, or tightens an existing one to it (which
/// only its owner can do).
fn make_private(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
                format!("it is open to other users (mode {mode:o}) and cannot be made private (mode 700)")
            })?;
            tracing::warn!(path = %dir.display(), "compiled-component cache was mode {mode:o}; made it 700");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

/// The artifact of an entry whose stored hash matches it.
fn verified(entry: &[u8]) -> Result<&[u8]> {
    if entry.len() < HEADER_LEN || &entry[..MAGIC.len()] != MAGIC {
        bail!("not a weir cache entry");
    }
    let (stored, artifact) = entry[MAGIC.len()..].split_at(blake3::OUT_LEN);
    if blake3::hash(artifact).as_bytes() != stored {
        bail!("its content does not match its hash (corrupted or tampered with)");
    }
    Ok(artifact)
}

/// Writes atomically (temp file + rename) so that concurrent weir processes
/// never read a half-written entry.
fn store(path: &Path, component: &Component) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    let artifact = component.serialize()?;
    let mut entry = Vec::with_capacity(HEADER_LEN + artifact.len());
    entry.extend_from_slice(MAGIC);
    entry.extend_from_slice(blake3::hash(&artifact).as_bytes());
    entry.extend_from_slice(&artifact);
    let tmp = dir.join(format!(".tmp-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::write(&tmp, entry)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_against_their_hash() {
        let artifact = b"native code".to_vec();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(blake3::hash(&artifact).as_bytes());
        entry.extend_from_slice(&artifact);
        assert_eq!(verified(&entry).unwrap(), artifact);
        let last = entry.len() - 1;
        entry[last] ^= 1;
        assert!(verified(&entry).unwrap_err().to_string().contains("does not match its hash"));
        assert!(verified(b"\x7fELF").unwrap_err().to_string().contains("not a weir cache entry"));
    }

    #[cfg(unix)]
    #[test]
    fn the_folder_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        make_private(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
