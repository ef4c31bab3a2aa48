//! One running plugin instance: its own `Store`, WASI context with nothing
//! granted, memory cap, and per-call CPU deadline.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use weir_packed::{BatchWriter, OriginRef, OutcomeView, OutputView, Reply};

use super::bindings::{
    Header, Host, Level, Message, Output, RecordOutcome, aggregator, aggregator_packed, processor, processor_packed,
};
use super::clock::CallDeadline;
use super::engine::EPOCH_TICK;
use super::logging::{GuestOutput, LogRate, Stream};
use super::state::{Counters, StageState};
use super::{Limits, Plugin, Pre};
use crate::message::Outcome;

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
    /// The rate limit of the stage's plugin log lines.
    pub log_rate: Arc<LogRate>,
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
            log_rate: Arc::default(),
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
    /// The plugin answered, but its reply breaks the contract (a malformed
    /// packed reply, a wrong outcome count). The whole batch fails.
    #[error("{0}")]
    Contract(String),
}

/// Longest text one `log` call writes; the rest is cut (and counted).
const MAX_LOG_TEXT: usize = 16 * 1024;

/// The data of an instance's `Store`.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    stage: Arc<StageContext>,
    /// When the running call must end; guest sleeps are cut short there.
    deadline: CallDeadline,
}

impl InstanceState {
    pub(crate) fn call_deadline_mut(&mut self) -> &mut CallDeadline {
        &mut self.deadline
    }
}

/// Why an instance trapped, for `weir_component_traps_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest panicked.
    Panic,
    /// The call ran past the stage's CPU deadline.
    Deadline,
    /// The instance tried to grow past its memory cap.
    Memory,
    /// Any other trap (stack overflow, out-of-bounds access, ...).
    Other,
}

impl TrapKind {
    /// Every kind, in the order of [`TrapKind::index`].
    pub const ALL: [TrapKind; 4] = [TrapKind::Panic, TrapKind::Deadline, TrapKind::Memory, TrapKind::Other];

    /// The kind of a trap from its reason, as made by this module. Read from
    /// the text so `InstanceError::Trap` stays one string for every caller;
    /// the prefixes are the ones written below in `trap_reason`.
    pub fn of(reason: &str) -> TrapKind {
        if reason.starts_with(PANICKED) {
            TrapKind::Panic
        } else if reason.starts_with(DEADLINE) {
            TrapKind::Deadline
        } else if reason.starts_with(MEMORY_CAP) {
            TrapKind::Memory
        } else {
            TrapKind::Other
        }
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            TrapKind::Panic => "panic",
            TrapKind::Deadline => "deadline",
            TrapKind::Memory => "memory",
            TrapKind::Other => "other",
        }
    }

    /// Position in [`TrapKind::ALL`] (an index into per-kind counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How trap reasons start, per [`TrapKind`].
const PANICKED: &str = "plugin panicked";
const DEADLINE: &str = "deadline exceeded";
const MEMORY_CAP: &str = "memory cap exceeded";

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
    fn log(&mut self, level: Level, mut text: String) {
        let stage = &*self.stage.name;
        if !self.stage.log_rate.admit(stage) {
            return;
        }
        if text.len() > MAX_LOG_TEXT {
            let cut = text.floor_char_boundary(MAX_LOG_TEXT);
            let dropped = text.len() - cut;
            text.truncate(cut);
            text.push_str(&format!(" … ({dropped} more bytes not logged)"));
        }
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

    fn state_set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        self.stage.state.set(key, value).map_err(|quota| wasmtime::Error::msg(quota.to_string()))
    }

    fn state_delete(&mut self, key: Vec<u8>) {
        self.stage.state.delete(&key)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        if let Err(refused) = self.stage.counters.add(&name, delta)
            && self.stage.counters.first_refusal()
        {
            let shown: String = name.chars().take(40).collect();
            tracing::warn!(
                stage = &*self.stage.name,
                "counter `{shown}` dropped: {refused} (further dropped counters are not reported)"
            );
        }
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
    /// The packed batch buffer, reused from call to call.
    packed: Vec<u8>,
}

enum Exports {
    Processor(processor::Processor),
    Aggregator(aggregator::Aggregator),
    ProcessorPacked(processor_packed::ProcessorPacked),
    AggregatorPacked(aggregator_packed::AggregatorPacked),
}

impl Instance {
    /// Instantiates `plugin` and calls its `init` with the stage's config.
    pub fn new(plugin: &Plugin, stage: Arc<StageContext>) -> Result<Self, InstanceError> {
        let stdout = GuestOutput::new(stage.name.clone(), Stream::Stdout, stage.log_rate.clone());
        let stderr = GuestOutput::new(stage.name.clone(), Stream::Stderr, stage.log_rate.clone());
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
            deadline: CallDeadline::start(limits.deadline),
        };
        let mut store = Store::new(&plugin.inner.engine, state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        let deadline_ticks = (limits.deadline.as_millis() as u64).div_ceil(EPOCH_TICK.as_millis() as u64).max(1) + 1;
        store.set_epoch_deadline(deadline_ticks);

        let failed = |e: wasmtime::Error, store: &Store<InstanceState>| trap_reason(&e, store, &stderr, limits);
        let exports = match &plugin.inner.pre {
            Pre::Processor(pre) => Exports::Processor(pre.instantiate(&mut store).map_err(|e| failed(e, &store))?),
            Pre::Aggregator(pre) => Exports::Aggregator(pre.instantiate(&mut store).map_err(|e| failed(e, &store))?),
            Pre::ProcessorPacked(pre) => {
                Exports::ProcessorPacked(pre.instantiate(&mut store).map_err(|e| failed(e, &store))?)
            }
            Pre::AggregatorPacked(pre) => {
                Exports::AggregatorPacked(pre.instantiate(&mut store).map_err(|e| failed(e, &store))?)
            }
        };
        let mut instance =
            Instance { exports, store, stderr, deadline_ticks, plugin: plugin.clone(), packed: Vec::new() };
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
            Exports::ProcessorPacked(p) => p.call_init(&mut self.store, config),
            Exports::AggregatorPacked(a) => a.call_init(&mut self.store, config),
        };
        match self.settle(result) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(InstanceError::Init(reason)),
            // A trap in `init` is a failed start, not a poison message.
            Err(InstanceError::Trap(reason)) => Err(InstanceError::Init(reason)),
            Err(other) => Err(other),
        }
    }

    /// Runs one batch through a processor: one outcome per input, in order.
    pub fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, InstanceError> {
        self.arm();
        match &self.exports {
            Exports::Processor(p) => {
                let result = p.call_process(&mut self.store, batch);
                let outcomes = self.settle(result)?;
                if outcomes.len() != batch.len() {
                    return Err(InstanceError::Contract(format!(
                        "plugin {} broke the contract: {} outcomes for {} messages",
                        self.plugin.version(),
                        outcomes.len(),
                        batch.len()
                    )));
                }
                self.check_output_caps(outcomes.iter().filter_map(|o| match o {
                    RecordOutcome::Emit(outputs) => Some(outputs.as_slice()),
                    RecordOutcome::Fail(_) => None,
                }))?;
                Ok(outcomes.into_iter().map(Outcome::from).collect())
            }
            Exports::ProcessorPacked(p) => {
                pack(&mut self.packed, batch)?;
                let result = p.call_process_packed(&mut self.store, &self.packed);
                let reply = self.settle(result)?;
                let reply = Reply::parse(&reply, batch.len(), true).map_err(|fault| self.malformed(fault))?;
                self.check_reply_caps(&reply)?;
                let routes = reply.routes();
                Ok(reply
                    .outcomes()
                    .map(|outcome| match outcome {
                        OutcomeView::Emit(outputs) => Outcome::Emit(outputs.map(|o| to_output(&o, routes)).collect()),
                        OutcomeView::Keep => Outcome::Keep,
                        OutcomeView::Fail(reason) => Outcome::Fail(reason.to_string()),
                    })
                    .collect())
            }
            Exports::Aggregator(_) | Exports::AggregatorPacked(_) => {
                Err(InstanceError::WrongWorld("`process` called on an aggregator"))
            }
        }
    }

    /// Runs one batch through an aggregator, all-or-nothing. The outer error
    /// is a trap; the inner one is the plugin's own failure.
    pub fn process_batch(
        &mut self,
        batch_key: Option<&[u8]>,
        batch: &[Message],
    ) -> Result<Result<Vec<Output>, String>, InstanceError> {
        self.arm();
        match &self.exports {
            Exports::Aggregator(a) => {
                let result = a.call_process_batch(&mut self.store, batch_key, batch);
                let result = self.settle(result)?;
                if let Ok(outputs) = &result {
                    self.check_output_caps([outputs.as_slice()])?;
                }
                Ok(result)
            }
            Exports::AggregatorPacked(a) => {
                pack(&mut self.packed, batch)?;
                let result = a.call_process_batch_packed(&mut self.store, batch_key, &self.packed);
                let reply = self.settle(result)?;
                let reply = Reply::parse(&reply, 1, false).map_err(|fault| self.malformed(fault))?;
                self.check_reply_caps(&reply)?;
                let routes = reply.routes();
                Ok(match reply.outcomes().next() {
                    Some(OutcomeView::Emit(outputs)) => Ok(outputs.map(|o| to_output(&o, routes)).collect()),
                    Some(OutcomeView::Fail(reason)) => Err(reason.to_string()),
                    // Parsed with one outcome and no `keep`.
                    Some(OutcomeView::Keep) | None => Ok(Vec::new()),
                })
            }
            Exports::Processor(_) | Exports::ProcessorPacked(_) => {
                Err(InstanceError::WrongWorld("`process-batch` called on a processor"))
            }
        }
    }

    /// `limits.max_outputs` and `limits.max_output_mb` for a packed reply:
    /// its size bounds the bytes it carries.
    fn check_reply_caps(&self, reply: &Reply<'_>) -> Result<(), InstanceError> {
        self.output_caps(reply.output_count(), reply.byte_len())
    }

    /// The same caps for record-world outputs, already lifted.
    fn check_output_caps<'o>(&self, batches: impl IntoIterator<Item = &'o [Output]>) -> Result<(), InstanceError> {
        let (mut count, mut bytes) = (0, 0);
        for output in batches.into_iter().flatten() {
            count += 1;
            bytes += output.key.as_ref().map_or(0, Vec::len)
                + output.value.len()
                + output.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
        }
        self.output_caps(count, bytes)
    }

    fn output_caps(&self, count: usize, bytes: usize) -> Result<(), InstanceError> {
        let limits = self.store.data().stage.limits;
        let version = self.plugin.version();
        if count > limits.max_outputs {
            return Err(InstanceError::Contract(format!(
                "output cap exceeded: plugin {version} produced {count} outputs in one call, over \
                 `limits.max_outputs` = {}",
                limits.max_outputs
            )));
        }
        if bytes > limits.max_output_bytes {
            return Err(InstanceError::Contract(format!(
                "output cap exceeded: plugin {version} produced {} MiB in one call, over `limits.max_output_mb` = {}",
                bytes >> 20,
                limits.max_output_bytes >> 20
            )));
        }
        Ok(())
    }

    fn malformed(&self, fault: weir_packed::Fault) -> InstanceError {
        InstanceError::Contract(format!("plugin {} sent a malformed packed reply: {fault}", self.plugin.version()))
    }

    /// Resets the CPU deadline and the stderr tail before a call.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let budget = self.store.data().stage.limits.deadline;
        self.store.data_mut().deadline = CallDeadline::start(budget);
        self.stderr.take_tail();
    }

    /// The result of a call: a trap becomes its reason, and a call whose
    /// sleep was cut at the deadline is a deadline trap even if the guest
    /// returned after waking.
    fn settle<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, InstanceError> {
        let cut = self.store.data_mut().deadline.take_cut();
        match result {
            Err(e) => Err(self.trap(e)),
            Ok(_) if cut => Err(self.trap(wasmtime::Error::new(Trap::Interrupt))),
            Ok(value) => Ok(value),
        }
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
            "{MEMORY_CAP}: the instance tried to grow past {} MiB (raise the stage's `limits.memory_mb`; \
             Python and JavaScript plugins need about 16 MiB to start)",
            limits.memory_bytes >> 20
        )
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("{DEADLINE}: the call ran longer than {} ms", limits.deadline.as_millis())
            }
            Some(Trap::UnreachableCodeReached) if !tail.is_empty() => format!("{PANICKED}{said}"),
            Some(Trap::StackOverflow) => format!("stack overflow{said}"),
            // The guest's own stack (locals whose address is taken, large
            // arrays) lives in linear memory: overflowing it ends as an
            // out-of-bounds access, not as a call-stack overflow.
            Some(Trap::MemoryOutOfBounds) => format!(
                "out of bounds memory access{said} (a plugin that overflows its own stack, e.g. with a large local \
                 array, ends this way too)"
            ),
            // Trap's Display already says "wasm trap: ...".
            Some(trap) => format!("{trap}{said}"),
            None => format!("wasm error: {error:#}{said}"),
        }
    };
    InstanceError::Trap(reason)
}

/// Writes `batch` into `buf` in the packed layout.
fn pack(buf: &mut Vec<u8>, batch: &[Message]) -> Result<(), InstanceError> {
    let too_large = |e: weir_packed::TooLarge| InstanceError::Contract(e.to_string());
    let header_count = batch.iter().map(|m| m.headers.len()).sum();
    let mut writer = BatchWriter::new(buf, batch.len(), header_count).map_err(too_large)?;
    for m in batch {
        let origin = m.origin.as_ref().map(|o| OriginRef {
            name: &o.name,
            partition: o.partition,
            offset: o.offset,
            id: o.id.as_deref(),
        });
        let headers = m.headers.iter().map(|h| (h.name.as_str(), h.value.as_slice()));
        writer.push(m.key.as_deref(), &m.value, headers, m.timestamp_ms, origin).map_err(too_large)?;
    }
    writer.finish().map_err(too_large)
}

/// Copies one output out of a checked reply.
fn to_output(output: &OutputView<'_>, routes: &[&str]) -> Output {
    Output {
        key: output.key().map(<[u8]>::to_vec),
        value: output.value().to_vec(),
        headers: output
            .headers()
            .map(|(name, value)| Header { name: name.to_string(), value: value.to_vec() })
            .collect(),
        timestamp_ms: output.timestamp_ms(),
        route: output.route().map(|r| routes[r].to_string()),
    }
}
