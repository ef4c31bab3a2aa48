//! The shared wasmtime engine, its epoch clock, and plugin loading.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use super::bindings::{aggregator, aggregator_packed, processor, processor_packed};
use super::cache::ComponentCache;
use super::inspect::{self, Encoding, World};
use super::instance::InstanceState;
use super::{Plugin, PluginInner, Pre, VersionId};

/// How often the epoch advances: the granularity of CPU deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Compiles, caches and links plugins. Cheap to clone; one per process.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<InstanceState>,
    disk_cache: ComponentCache,
    /// Plugins loaded in this process and still in use, by content hash:
    /// stages sharing a plugin, and a swap back to a version something still
    /// holds (the previous one, kept for rollback), reuse them. Weak: a
    /// version nothing runs or keeps any more is freed with its compiled
    /// code (a later load of it reads the disk cache).
    loaded: Mutex<HashMap<VersionId, Weak<PluginInner>>>,
}

impl Runtime {
    /// Creates the engine (epoch interruption on, synchronous calls) and
    /// starts its epoch clock.
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Plugins are called synchronously from worker threads; without
        // async support a component call costs about a third as much.
        config.concurrency_support(false);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        super::clock::add_to_linker(&mut linker).map_err(anyhow::Error::from).context("linking the guest clock")?;
        processor::weir::processor::host::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking the weir host interface")?;

        let inner = Arc::new(RuntimeInner {
            engine,
            linker,
            disk_cache: ComponentCache::from_env(),
            loaded: Mutex::new(HashMap::new()),
        });
        start_epoch_clock(inner.engine.weak());
        Ok(Runtime { inner })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// How many plugin versions loaded by this runtime are still in memory
    /// (held by a stage, a worker or a caller); the runtime itself keeps
    /// none alive.
    pub fn loaded_versions(&self) -> usize {
        self.inner.loaded.lock().values().filter(|plugin| plugin.strong_count() > 0).count()
    }

    /// Loads a component file. See [`Runtime::load_bytes`].
    pub fn load_file(&self, path: &Path) -> Result<Plugin> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.load_bytes(&bytes).with_context(|| format!("plugin {} refused", path.display()))
    }

    /// Compiles (or fetches from cache), checks the world and pre-links a
    /// component. Every refusal names the problem: not wasm, a core module, a
    /// component of another world, a missing or mistyped export, an import
    /// weir does not provide.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Plugin> {
        inspect::check_is_component(bytes)?;
        let version = VersionId::of(bytes);
        if let Some(inner) = self.inner.loaded.lock().get(&version).and_then(Weak::upgrade) {
            return Ok(Plugin { inner });
        }
        let component = self
            .inner
            .disk_cache
            .load(&self.inner.engine, &version, bytes)
            .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e:#}"))?;
        let (world, encoding) = inspect::world_of(&self.inner.engine, &component)?;
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(inspect::explain_link_error)?;
        let explain = inspect::explain_export_error;
        let pre = match (world, encoding) {
            (World::Processor, Encoding::Records) => {
                Pre::Processor(processor::ProcessorPre::new(instance_pre).map_err(explain)?)
            }
            (World::Aggregator, Encoding::Records) => {
                Pre::Aggregator(aggregator::AggregatorPre::new(instance_pre).map_err(explain)?)
            }
            (World::Processor, Encoding::Packed) => {
                Pre::ProcessorPacked(processor_packed::ProcessorPackedPre::new(instance_pre).map_err(explain)?)
            }
            (World::Aggregator, Encoding::Packed) => {
                Pre::AggregatorPacked(aggregator_packed::AggregatorPackedPre::new(instance_pre).map_err(explain)?)
            }
        };
        let engine = self.inner.engine.clone();
        let inner = Arc::new(PluginInner { version: version.clone(), world, encoding, pre, component, engine });
        let mut loaded = self.inner.loaded.lock();
        loaded.retain(|_, plugin| plugin.strong_count() > 0);
        loaded.insert(version, Arc::downgrade(&inner));
        Ok(Plugin { inner })
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as anything
/// (runtime, plugin, store) still holds the engine; stores turn "N ticks from
/// now" into their per-call deadline.
fn start_epoch_clock(engine: wasmtime::EngineWeak) {
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

impl Runtime {
    /// Loads a component and describes it (for `weir check`).
    pub fn describe(&self, bytes: &[u8]) -> Result<(Plugin, inspect::Description)> {
        let plugin = self.load_bytes(bytes)?;
        let component = &plugin.inner.component;
        let description = inspect::describe(&self.inner.engine, component, plugin.world(), plugin.encoding());
        Ok((plugin, description))
    }
}
