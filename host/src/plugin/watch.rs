//! Watches a stage's plugin origin and hot-swaps on change: the `.wasm` file
//! (`watch = true`), or the source folder, rebuilt first (`weir dev`).
//!
//! The parent folder is watched rather than the file, so editors and build
//! tools that replace the file by a rename are seen. Bursts of events are
//! debounced: a swap starts once the origin has been quiet for a moment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::swap::{HotPlugin, Reloaded};

/// Quiet time before a `.wasm` change is swapped in.
const FILE_QUIET: Duration = Duration::from_millis(20);
/// Quiet time before a source change is rebuilt (editors write in bursts).
const SOURCE_QUIET: Duration = Duration::from_millis(150);

/// Keeps a watch alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `hot`'s origin; `on_reload` is called after each attempt.
/// Must be called within a tokio runtime.
pub fn watch(
    hot: Arc<HotPlugin>,
    on_reload: impl Fn(&HotPlugin, Result<Option<Reloaded>, String>) + Send + Sync + 'static,
) -> Result<WatchGuard> {
    let origin = hot.origin().to_path_buf();
    let source = origin.is_dir();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let filter_origin = origin.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) {
            return;
        }
        if event.paths.iter().any(|p| relevant(p, &filter_origin, source)) {
            let _ = tx.send(());
        }
    })
    .context("starting the file watcher")?;
    let (target, mode) = match source {
        true => (origin.clone(), RecursiveMode::Recursive),
        false => {
            (origin.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), RecursiveMode::NonRecursive)
        }
    };
    watcher.watch(&target, mode).with_context(|| format!("watching {}", target.display()))?;

    let quiet = if source { SOURCE_QUIET } else { FILE_QUIET };
    let on_reload = Arc::new(on_reload);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for `quiet`.
            while let Ok(Some(())) = tokio::time::timeout(quiet, rx.recv()).await {}
            let hot = hot.clone();
            let on_reload = on_reload.clone();
            let _ = tokio::task::spawn_blocking(move || on_reload(&hot, hot.reload())).await;
        }
    });
    tracing::info!(stage = hot_name(&origin), "watching {} for changes", origin.display());
    Ok(WatchGuard { _watcher: watcher })
}

fn hot_name(origin: &Path) -> String {
    origin.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

/// Whether a changed path concerns the origin: the file itself, or a source
/// file of the folder (not its build output or hidden files).
fn relevant(path: &Path, origin: &Path, source: bool) -> bool {
    if !source {
        return path.file_name() == origin.file_name();
    }
    let Ok(inside) = path.strip_prefix(origin) else { return false };
    !inside.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c == "target" || c.starts_with('.') || c == "node_modules" || c == "__pycache__"
    })
}
