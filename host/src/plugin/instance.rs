//! One running plugin instance: its own `Store`, WASI context with nothing
//! granted, memory cap, and per-call CPU deadline.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Host, Level, Message, Outcome, Output, aggregator, processor};
use super::engine::EPOCH_TICK;
use super::logging::{GuestOutput, Stream};
use super::state::{Counters, StageState};
use super::{Limits, Plugin, Pre};

/// What a stage gives each of its instances.
#[derive(Debug)]
pub struct StageContext {
    /// Stage name, used to tag logs.
    pub name: Arc<str>,
    /// The stage's `config` table, passed to `init`.
    pub config: Vec<(String, String)>,
    /// The stage's key-value state, shared by its instances.
    pub state: Arc<StageState>,
    /// The stage's plugin-defined counters.
    pub counters: Arc<Counters>,
    /// Per-instance limits.
    pub limits: Limits,
}

impl StageContext {
    /// A context with in-memory state and default limits (tests, `weir test`).
    pub fn new(name: &str, config: Vec<(String, String)>) -> Self {
        StageContext {
            name: name.into(),
            config,
            state: Arc::new(StageState::in_memory()),
            counters: Arc::default(),
            limits: Limits::default(),
        }
    }
}

/// Why an instance could not start or finish a call.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The plugin's `init` returned an error: the plugin refuses its config.
    #[error("plugin init failed: {0}")]
    Init(String),
    /// The guest trapped (panic, deadline, memory cap, ...). The instance is
    /// unusable afterwards; make a fresh one.
    #[error("{0}")]
    Trap(String),
    /// The instance's world does not offer the requested call.
    #[error("{0}")]
    WrongWorld(&'static str),
}

/// The data of an instance's `Store`.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    stage: Arc<StageContext>,
}

/// Caps linear memory and remembers that the cap was hit, so the trap can be
/// reported as what it is.
struct MemoryCap {
    max_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            // An error (rather than `Ok(false)`) traps at the `memory.grow`,
            // instead of letting the guest's allocator abort less clearly.
            return Err(wasmtime::format_err!("memory cap of {} MiB reached", self.max_bytes >> 20));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Host for InstanceState {
    fn log(&mut self, level: Level, text: String) {
        let stage = &*self.stage.name;
        match level {
            Level::Trace => tracing::trace!(target: "weir::plugin", stage, "{text}"),
            Level::Debug => tracing::debug!(target: "weir::plugin", stage, "{text}"),
            Level::Info => tracing::info!(target: "weir::plugin", stage, "{text}"),
            Level::Warn => tracing::warn!(target: "weir::plugin", stage, "{text}"),
            Level::Error => tracing::error!(target: "weir::plugin", stage, "{text}"),
        }
    }

    fn state_get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.stage.state.get(&key)
    }

    fn state_set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.stage.state.set(key, value)
    }

    fn state_delete(&mut self, key: Vec<u8>) {
        self.stage.state.delete(&key)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        self.stage.counters.add(&name, delta)
    }
}

impl processor::weir::processor::types::Host for InstanceState {}

/// A running instance of a plugin.
pub struct Instance {
    store: Store<InstanceState>,
    exports: Exports,
    stderr: GuestOutput,
    deadline_ticks: u64,
    plugin: Plugin,
}

enum Exports {
    Processor(processor::Processor),
    Aggregator(aggregator::Aggregator),
}

impl Instance {
    /// Instantiates `plugin` and calls its `init` with the stage's config.
    pub fn new(plugin: &Plugin, stage: Arc<StageContext>) -> Result<Self, InstanceError> {
        let stdout = GuestOutput::new(stage.name.clone(), Stream::Stdout);
        let stderr = GuestOutput::new(stage.name.clone(), Stream::Stderr);
        // Nothing is granted: no preopened dirs, no env, no args, no sockets.
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = stage.limits;
        let state = InstanceState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { max_bytes: limits.memory_bytes, hit: false },
            stage: stage.clone(),
        };
        let mut store = Store::new(&plugin.inner.engine, state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        let deadline_ticks = (limits.deadline.as_millis() as u64).div_ceil(EPOCH_TICK.as_millis() as u64).max(1) + 1;
        store.set_epoch_deadline(deadline_ticks);

        let mut instance = Instance {
            exports: match &plugin.inner.pre {
                Pre::Processor(pre) => Exports::Processor(
                    pre.instantiate(&mut store).map_err(|e| trap_reason(&e, &store, &stderr, limits))?,
                ),
                Pre::Aggregator(pre) => Exports::Aggregator(
                    pre.instantiate(&mut store).map_err(|e| trap_reason(&e, &store, &stderr, limits))?,
                ),
            },
            store,
            stderr,
            deadline_ticks,
            plugin: plugin.clone(),
        };
        instance.init(&stage.config)?;
        Ok(instance)
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    fn init(&mut self, config: &[(String, String)]) -> Result<(), InstanceError> {
        self.arm();
        let result = match &self.exports {
            Exports::Processor(p) => p.call_init(&mut self.store, config),
            Exports::Aggregator(a) => a.call_init(&mut self.store, config),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(InstanceError::Init(reason)),
            Err(e) => Err(self.trap(e)),
        }
    }

    /// Runs one batch through a processor: one outcome per input, in order.
    pub fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, InstanceError> {
        self.arm();
        let Exports::Processor(p) = &self.exports else {
            return Err(InstanceError::WrongWorld("`process` called on an aggregator"));
        };
        let result = p.call_process(&mut self.store, batch);
        let outcomes = result.map_err(|e| self.trap(e))?;
        if outcomes.len() != batch.len() {
            return Err(InstanceError::Trap(format!(
                "plugin broke the contract: {} outcomes for {} messages",
                outcomes.len(),
                batch.len()
            )));
        }
        Ok(outcomes)
    }

    /// Runs one batch through an aggregator, all-or-nothing. The outer error
    /// is a trap; the inner one is the plugin's own failure.
    pub fn process_batch(
        &mut self,
        batch_key: Option<&[u8]>,
        batch: &[Message],
    ) -> Result<Result<Vec<Output>, String>, InstanceError> {
        self.arm();
        let Exports::Aggregator(a) = &self.exports else {
            return Err(InstanceError::WrongWorld("`process-batch` called on a processor"));
        };
        let result = a.call_process_batch(&mut self.store, batch_key, batch);
        result.map_err(|e| self.trap(e))
    }

    /// Resets the CPU deadline and the stderr tail before a call.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.stderr.take_tail();
    }

    fn trap(&mut self, error: wasmtime::Error) -> InstanceError {
        let limits = self.store.data().stage.limits;
        trap_reason(&error, &self.store, &self.stderr, limits)
    }
}

/// Turns a wasmtime error into a reason a person can act on.
fn trap_reason(
    error: &wasmtime::Error,
    store: &Store<InstanceState>,
    stderr: &GuestOutput,
    limits: Limits,
) -> InstanceError {
    // The guest's last stderr lines (its panic message), minus std's hint
    // about RUST_BACKTRACE, which means nothing to a weir user.
    let tail: Vec<String> = stderr
        .take_tail()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .map(str::to_string)
        .collect();
    let tail = tail.join(" / ");
    let said = if tail.is_empty() { String::new() } else { format!(": {tail}") };
    let reason = if store.data().memory.hit {
        format!(
            "memory cap exceeded: the instance tried to grow past {} MiB (raise the stage's `limits.memory_mb`; \
             Python and JavaScript plugins need about 16 MiB to start)",
            limits.memory_bytes >> 20
        )
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("deadline exceeded: the call ran longer than {} ms", limits.deadline.as_millis())
            }
            Some(Trap::UnreachableCodeReached) if !tail.is_empty() => format!("plugin panicked{said}"),
            Some(Trap::StackOverflow) => format!("stack overflow{said}"),
            Some(trap) => format!("wasm trap: {trap}{said}"),
            None => format!("wasm error: {error:#}{said}"),
        }
    };
    InstanceError::Trap(reason)
}
