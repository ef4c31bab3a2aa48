//! Hot swap: a stage's plugin can be replaced while the pipeline runs.
//!
//! A new version is compiled off the data path, checked against the stage's
//! world, and started once (instantiate + `init` with the stage's config)
//! before it is published. Workers pick up the published version between
//! batches, so a batch (including its poison bisection) runs on one version
//! only and in-flight batches finish on the old one. A version that fails
//! any step is refused: the old one keeps running and the refusal is kept for
//! the admin API. The stage's state and counters belong to the stage, not the
//! version, so they carry over.
//!
//! Old versions are released: a stage keeps the running version and one
//! previous version (for rollback), nothing more. Any older version is freed,
//! compiled code included, as soon as no worker runs it any more (a worker
//! moves to the new version before its next batch; an idle worker keeps its
//! version until its next batch arrives). [`StageStatus::live_versions`]
//! counts the versions of a stage still in memory.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use super::{Instance, Plugin, PluginInner, Runtime, StageContext, World};

/// A stage's swappable plugin.
pub struct HotPlugin {
    runtime: Runtime,
    context: Arc<StageContext>,
    world: World,
    /// Where the plugin came from: a `.wasm` file or a source folder.
    origin: PathBuf,
    current: ArcSwap<Plugin>,
    history: Mutex<History>,
}

#[derive(Default)]
struct History {
    /// The one version kept for rollback; older ones are not held here.
    previous: Option<Plugin>,
    last_swap: Option<SystemTime>,
    last_refused: Option<Refusal>,
    /// Swaps (rollbacks included) since the stage started.
    swaps: u64,
    /// Versions refused since the stage started.
    refused: u64,
    /// Every version this stage has run that may still be in memory (weak:
    /// this list keeps none of them alive); pruned on each swap.
    seen: Vec<Weak<PluginInner>>,
}

impl History {
    fn saw(&mut self, plugin: &Plugin) {
        self.seen.retain(|v| v.strong_count() > 0);
        if !self.seen.iter().any(|v| std::ptr::eq(v.as_ptr(), Arc::as_ptr(&plugin.inner))) {
            self.seen.push(Arc::downgrade(&plugin.inner));
        }
    }

    fn live(&self) -> usize {
        self.seen.iter().filter(|v| v.strong_count() > 0).count()
    }
}

/// A version that was not taken, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Short content hash, when the bytes got that far.
    pub version: Option<String>,
    /// What was wrong.
    pub reason: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A successful swap.
#[derive(Debug, Clone)]
pub struct Swapped {
    /// The version replaced.
    pub from: String,
    /// The version now running.
    pub to: String,
    /// Compile (or cache load) + check + trial init.
    pub prepare: Duration,
}

/// The state of a stage, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// `processor` or `aggregator`.
    pub world: String,
    /// Running version (full content hash).
    pub version: String,
    /// The version before the last swap, for rollback.
    pub previous_version: Option<String>,
    /// When the last swap happened (ms since the Unix epoch).
    pub last_swap_ms: Option<u64>,
    /// The last refused version and why.
    pub last_refused: Option<Refusal>,
    /// Where the plugin is loaded from.
    pub origin: String,
    /// Versions of this stage still in memory: the running one, the previous
    /// one (kept for rollback) and, briefly, any a worker is still finishing
    /// a batch on. Older versions are freed.
    pub live_versions: usize,
    /// Swaps (rollbacks included) since the stage started.
    pub swaps: u64,
    /// Versions refused since the stage started.
    pub refused: u64,
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl HotPlugin {
    /// Wraps the stage's first version.
    pub fn new(runtime: Runtime, context: Arc<StageContext>, plugin: Plugin, origin: PathBuf) -> Self {
        let mut history = History::default();
        history.saw(&plugin);
        HotPlugin {
            runtime,
            context,
            world: plugin.world(),
            origin,
            current: ArcSwap::from_pointee(plugin),
            history: Mutex::new(history),
        }
    }

    /// The stage name.
    pub fn stage(&self) -> &str {
        &self.context.name
    }

    /// The stage's world (fixed for the life of the stage).
    pub fn world(&self) -> World {
        self.world
    }

    /// Where the plugin is loaded from.
    pub fn origin(&self) -> &std::path::Path {
        &self.origin
    }

    /// The version workers should run now. One atomic load.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.load_full()
    }

    /// Prepares `bytes` as the new version and publishes it, or refuses it.
    /// Blocking (compiles): call from a blocking thread.
    pub fn swap_bytes(&self, bytes: &[u8]) -> Result<Swapped, String> {
        let started = Instant::now();
        let version = super::VersionId::of(bytes);
        let plugin = match self.prepare(bytes) {
            Ok(plugin) => plugin,
            Err(reason) => return Err(self.refuse(Some(version.short()), reason)),
        };
        Ok(self.publish(plugin, started.elapsed()))
    }

    /// Goes back to the version before the last swap.
    pub fn rollback(&self) -> Result<Swapped, String> {
        let previous = self.history.lock().previous.clone().ok_or("no previous version to roll back to")?;
        Ok(self.publish(previous, Duration::ZERO))
    }

    /// Records a version that could not even be built.
    pub fn refuse(&self, version: Option<String>, reason: String) -> String {
        tracing::error!(stage = self.stage(), "new plugin version refused, the running one stays: {reason}");
        let mut history = self.history.lock();
        history.refused += 1;
        history.last_refused = Some(Refusal { version, reason: reason.clone(), at_ms: epoch_ms(SystemTime::now()) });
        reason
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Plugin, String> {
        let plugin = self.runtime.load_bytes(bytes).map_err(|e| format!("{e:#}"))?;
        if plugin.world() != self.world {
            return Err(format!(
                "the new version is a {} but stage `{}` runs a {}",
                plugin.world(),
                self.stage(),
                self.world
            ));
        }
        // A trial instance proves the version starts with this stage's config.
        Instance::new(&plugin, self.context.clone()).map_err(|e| e.to_string())?;
        Ok(plugin)
    }

    fn publish(&self, plugin: Plugin, prepare: Duration) -> Swapped {
        let mut history = self.history.lock();
        history.saw(&plugin);
        let old = self.current.swap(Arc::new(plugin));
        let swapped = Swapped { from: old.version().short(), to: self.current.load().version().short(), prepare };
        // Replacing `previous` drops this stage's hold on the version before
        // it: once no worker runs that one, its compiled code is freed.
        history.previous = Some((*old).clone());
        history.last_swap = Some(SystemTime::now());
        history.swaps += 1;
        tracing::info!(
            stage = self.stage(),
            "plugin swapped {} → {} (prepared in {:.1?})",
            swapped.from,
            swapped.to,
            prepare
        );
        swapped
    }

    /// The stage's swap state.
    pub fn status(&self) -> StageStatus {
        let history = self.history.lock();
        StageStatus {
            name: self.stage().to_string(),
            world: self.world.to_string(),
            version: self.current.load().version().to_hex(),
            previous_version: history.previous.as_ref().map(|p| p.version().to_hex()),
            last_swap_ms: history.last_swap.map(epoch_ms),
            last_refused: history.last_refused.clone(),
            origin: self.origin.display().to_string(),
            live_versions: history.live(),
            swaps: history.swaps,
            refused: history.refused,
        }
    }
}

/// A reload from the plugin's origin: how long the build and the swap took.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The swap itself.
    pub swapped: Swapped,
    /// Building the source folder (zero for a `.wasm` origin).
    pub build: Duration,
}

impl HotPlugin {
    /// Rebuilds (source folder) or re-reads (`.wasm`) the plugin's origin and
    /// swaps it in. A version identical to the running one is not swapped.
    /// Blocking: call from a blocking thread.
    pub fn reload(&self) -> Result<Option<Reloaded>, String> {
        let started = Instant::now();
        let wasm = if self.origin.is_dir() {
            super::build::build(&self.origin).map_err(|e| self.refuse(None, format!("build failed: {e:#}")))?
        } else {
            self.origin.clone()
        };
        let build = if self.origin.is_dir() { started.elapsed() } else { Duration::ZERO };
        let bytes =
            std::fs::read(&wasm).map_err(|e| self.refuse(None, format!("cannot read {}: {e}", wasm.display())))?;
        if super::VersionId::of(&bytes) == *self.current().version() {
            return Ok(None);
        }
        Ok(Some(Reloaded { swapped: self.swap_bytes(&bytes)?, build }))
    }
}
