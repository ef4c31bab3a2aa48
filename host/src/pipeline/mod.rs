//! The pipeline: sources → stages in order → sinks, plus the dead letter.
//!
//! [`Pipeline::prepare`] does everything that can fail before data moves:
//! connector URIs, plugin builds, compilation, world checks and a trial
//! `init` per stage. [`Pipeline::run`] then wires bounded channels end to end
//! (backpressure) and runs until the sources end or are stopped, draining
//! every stage and sink before it returns. A stopped pipeline (signal or
//! halt) drains for at most `[shutdown] drain_timeout_ms`; then it gives up
//! on what is still in flight (acknowledging none of it) and reports it.

pub mod dispatch;
pub mod logic;
mod report;
pub mod router;
pub mod sink;
pub mod stage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Delivery, Dispatch, GroupBy, PipelineConfig, StageConfig};
use crate::connectors::{self, SinkSpec, SourceSpec};
use crate::flow::SourceContext;
use crate::flow::batch::{Batch, BatchPolicy};
use crate::flow::budget::InFlightBudget;
use crate::flow::checkpoint::{CheckpointStore, Checkpoints};
use crate::flow::control::Control;
use crate::flow::dead_letter::DeadLetter;
use crate::plugin::state::{PipelineState, StageState};
use crate::plugin::swap::HotPlugin;
use crate::plugin::{Runtime, StageContext};
use crate::store::StateStore;
use crate::telemetry::Telemetry;
use logic::Runner;
pub use logic::{NativeFn, NativeStages, StageLogic};
use report::in_flight;
pub use report::{RunReport, StageSummary};
use router::Downstream;
use sink::{RetryPolicy, SinkStats};
use stage::{ErrorPolicy, Stage, StageStats, Worker};

/// Batches buffered between two steps (per channel): bounds memory.
const CHANNEL_BATCHES: usize = 4;

/// A pipeline that passed every check and is ready to run.
pub struct Pipeline {
    sources: Vec<(Arc<str>, Box<dyn SourceSpec>)>,
    stages: Vec<PreparedStage>,
    sinks: Vec<PreparedSink>,
    dead_letter: Option<(Arc<dyn SinkSpec>, RetryPolicy)>,
    watched: Vec<String>,
    drain_timeout: Duration,
    budget: InFlightBudget,
    telemetry: Option<Arc<Telemetry>>,
    /// The stages' state store and how often it is checkpointed; `None`
    /// without stages.
    checkpointing: Option<Checkpointing>,
}

/// Under exactly-once delivery, settles the last run's checkpoint whose
/// transaction may not have committed before the process died: kept when
/// it did, else the store goes back to the checkpoint before (before any
/// stage loads its state from it).
fn settle_pending_transaction(
    store: &StateStore,
    sources: &[(Arc<str>, Box<dyn SourceSpec>)],
) -> Result<(), ConfigError> {
    let Some(pending) = store.pending_transaction().map_err(|e| ConfigError::new(e.to_string()))? else {
        return Ok(());
    };
    let Some((name, spec)) = sources.first() else { return Ok(()) };
    let committed = spec.transaction_committed(&pending.transaction, &pending.positions).map_err(|e| {
        ConfigError::new(format!(
            "source `{name}`: the last run's transaction `{}` could not be settled: {e:#} (the state store keeps \
             its checkpoint pending until it can be; `weir state reset FILE --positions` keeps the state and \
             forgets the positions)",
            pending.transaction
        ))
    })?;
    store.resolve(&pending, committed).map_err(|e| ConfigError::new(e.to_string()))?;
    if committed {
        tracing::info!("the last run's transaction `{}` committed: keeping its checkpoint", pending.transaction);
    } else {
        tracing::info!(
            "the last run's transaction `{}` did not commit: state and positions go back to the checkpoint before it",
            pending.transaction
        );
    }
    Ok(())
}

/// A pipeline's checkpoint settings and what its last run recorded.
struct Checkpointing {
    /// Whether each checkpoint ends a transaction (`delivery = "exactly-once"`).
    exactly_once: bool,
    store: Arc<StateStore>,
    interval: Duration,
    /// Source name → positions recorded by the last checkpoint.
    restored: HashMap<String, Vec<(String, Vec<u8>)>>,
}

struct PreparedStage {
    context: Arc<StageContext>,
    logic: StageLogic,
    version: Option<Arc<crate::plugin::Plugin>>,
    trial: Runner,
    concurrency: usize,
    mode: dispatch::Mode,
    ordered: bool,
    batch: BatchPolicy,
    group_by: Option<GroupBy>,
    policy: ErrorPolicy,
}

struct PreparedSink {
    name: Arc<str>,
    spec: Arc<dyn SinkSpec>,
    routes: Vec<String>,
    batch: BatchPolicy,
    group_by: Option<GroupBy>,
    retry: RetryPolicy,
}

/// Why a pipeline could not be prepared: a config error (exit 2).
pub type PrepareError = ConfigError;

impl Pipeline {
    /// Checks and prepares everything: connectors, plugins (built from
    /// source folders if needed, compiled, checked, initialised once).
    pub fn prepare(config: &PipelineConfig, runtime: &Runtime) -> Result<Self, PrepareError> {
        Self::prepare_with(config, runtime, &NativeStages::new())
    }

    /// Like [`Pipeline::prepare`], with native functions for the stages
    /// whose `plugin` is `native:NAME`.
    pub fn prepare_with(
        config: &PipelineConfig,
        runtime: &Runtime,
        natives: &NativeStages,
    ) -> Result<Self, PrepareError> {
        let sources = config
            .sources
            .iter()
            .map(|s| Ok((Arc::from(s.name.as_str()), connectors::parse_source(s, config)?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let sinks = config
            .sinks
            .iter()
            .map(|s| {
                Ok(PreparedSink {
                    name: s.name.as_str().into(),
                    spec: connectors::parse_sink(s, config)?.into(),
                    routes: s.route.as_ref().map(|r| r.names()).unwrap_or_default(),
                    batch: BatchPolicy {
                        max_size: s.batch.max_size,
                        max_wait: Duration::from_millis(s.batch.max_wait_ms),
                    },
                    group_by: s.batch.group_by.as_ref().map(|g| g.get_ref().clone()),
                    retry: RetryPolicy { retries: s.retries, backoff: Duration::from_millis(s.retry_backoff_ms) },
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let dead_letter = config
            .dead_letter
            .as_ref()
            .map(|d| {
                let spec = connectors::parse_sink_uri(d.uri.get_ref(), d.format, &toml::Table::new(), config)
                    .map_err(|m| config.error_at(&d.uri, format!("[dead_letter]: {m}")))?
                    .into();
                Ok((spec, RetryPolicy { retries: d.retries, backoff: Duration::from_millis(d.retry_backoff_ms) }))
            })
            .transpose()?;
        // One store for every stage's state; none when there are no stages
        // (exactly-once delivery keeps its checkpoints there too).
        let exactly_once = config.delivery == Delivery::ExactlyOnce;
        let store = match config.stages.is_empty() && !exactly_once {
            true => None,
            false => {
                Some(Arc::new(StateStore::open(&config.state_dir()).map_err(|e| ConfigError::new(e.to_string()))?))
            }
        };
        if let Some(store) = &store {
            settle_pending_transaction(store, &sources)?;
        }
        let stages = config
            .stages
            .iter()
            .map(|s| prepare_stage(s, config, runtime, natives, store.as_ref()))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let watched = config.stages.iter().filter(|s| s.watch).map(|s| s.name.clone()).collect();
        let drain_timeout = config.shutdown.drain_timeout();
        let budget = InFlightBudget::new(config.memory.max_in_flight_bytes());
        let checkpointing = match store {
            Some(store) => {
                let mut restored: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
                for record in store.all_positions().map_err(|e| ConfigError::new(e.to_string()))? {
                    if let Some(value) = record.value {
                        restored.entry(record.source).or_default().push((record.key, value));
                    }
                }
                Some(Checkpointing { store, interval: config.state.checkpoint_interval(), restored, exactly_once })
            }
            None => None,
        };
        Ok(Pipeline {
            sources,
            stages,
            sinks,
            dead_letter,
            watched,
            drain_timeout,
            budget,
            telemetry: None,
            checkpointing,
        })
    }

    /// The swappable plugins of the WASM stages (hot swap, admin API).
    pub fn hot_plugins(&self) -> Vec<Arc<HotPlugin>> {
        self.stages
            .iter()
            .filter_map(|s| match &s.logic {
                StageLogic::Wasm(hot) => Some(hot.clone()),
                StageLogic::Native(_) => None,
            })
            .collect()
    }

    /// Names of the stages with `watch = true`.
    pub fn watched(&self) -> &[String] {
        &self.watched
    }

    /// Registers this pipeline's counters with `telemetry` when it runs
    /// (`GET /metrics`).
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Runs until the sources end (bounded) or `shutdown` fires, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> RunReport {
        let control = Control::new(shutdown);
        let mut report = RunReport::default();
        let telemetry = self.telemetry.clone();
        if let Some(t) = &telemetry {
            t.budget(self.budget.clone());
        }
        let mut tasks = tokio::task::JoinSet::new();

        // Every sink opens before any source reads: one that cannot (a locked
        // or unwritable file) stops the run before a message moves.
        // Checkpoints tie the stages' state to the source positions it covers
        // (and, exactly-once, end the sinks' transaction).
        let (checkpoints, checkpointing) = match self.checkpointing {
            Some(c) => {
                let checkpoints = Checkpoints::with_delivery(c.restored, c.exactly_once);
                (Some(checkpoints), Some((c.store, c.interval)))
            }
            None => (None, None),
        };
        let mut opened = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            match sink.spec.open_in(checkpoints.as_ref()).await {
                Ok(s) => opened.push(s),
                Err(e) => return report.failed(format!("sink `{}`: {e:#}", sink.name)),
            }
        }
        let dead_letter_sink = match &self.dead_letter {
            Some((spec, retry)) => match spec.open_in(checkpoints.as_ref()).await {
                Ok(s) => Some((s, *retry)),
                Err(e) => return report.failed(format!("[dead_letter]: {e:#}")),
            },
            None => None,
        };

        // Dead letter.
        let dlq_stats = Arc::new(SinkStats::default());
        if let (Some(t), Some(_)) = (&telemetry, &self.dead_letter) {
            t.sink("dead_letter", "dead_letter", dlq_stats.clone());
        }
        let dlq_sender = dead_letter_sink.map(|(opened, retry)| {
            let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
            if let Some(t) = &telemetry {
                t.channel("dead_letter", "dead_letter", &tx);
            }
            let policy = BatchPolicy { max_size: 100, max_wait: Duration::from_millis(10) };
            let label = "[dead_letter]".to_string();
            let stats = dlq_stats.clone();
            tasks.spawn(sink::run(
                "dead_letter".into(),
                label,
                opened,
                rx,
                policy,
                None,
                retry,
                stats,
                control.clone(),
                None,
            ));
            tx
        });
        let dead_letter = DeadLetter::new(dlq_sender, control.clone());

        // Sinks, by route.
        let mut default_sinks = Vec::new();
        let mut routes: HashMap<Arc<str>, Vec<mpsc::Sender<Batch>>> = HashMap::new();
        let mut sink_stats = Vec::new();
        for (sink, opened) in self.sinks.into_iter().zip(opened) {
            let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
            let stats = Arc::new(SinkStats::default());
            sink_stats.push((sink.name.to_string(), stats.clone()));
            if let Some(t) = &telemetry {
                t.sink(&sink.name, "sink", stats.clone());
                t.channel(&sink.name, "sink", &tx);
            }
            let label = format!("sink `{}`", sink.name);
            if sink.routes.is_empty() {
                default_sinks.push(tx.clone());
            }
            for route in sink.routes {
                routes.entry(route.into()).or_default().push(tx.clone());
            }
            tasks.spawn(sink::run(
                sink.name,
                label,
                opened,
                rx,
                sink.batch,
                sink.group_by,
                sink.retry,
                stats,
                control.clone(),
                Some(dead_letter.clone()),
            ));
        }

        // Stages, last first, each feeding the one after it.
        let mut next_hop = Downstream::new(default_sinks, routes.clone());
        let mut workers = Vec::new();
        let mut stage_stats = Vec::new();
        let mut dispatched = Vec::new();
        let mut states = Vec::new();
        for prepared in self.stages.into_iter().rev() {
            let (input_tx, input_rx) = mpsc::channel(CHANNEL_BATCHES);
            let stats = Arc::new(StageStats::default());
            stage_stats.push((prepared.context.clone(), stats.clone()));
            if let Some(t) = &telemetry {
                t.stage(prepared.context.clone(), stats.clone());
                t.channel(&prepared.context.name, "stage", &input_tx);
            }
            let counter = stats.dispatched.clone();
            dispatched.push(counter.clone());
            states.push(prepared.context.state.clone());
            let sequencer = prepared.ordered.then(|| {
                let (tx, rx) = mpsc::channel(CHANNEL_BATCHES * prepared.concurrency);
                tasks.spawn({
                    let downstream = next_hop.clone();
                    async move {
                        stage::sequence(rx, downstream).await;
                        Ok(())
                    }
                });
                tx
            });
            let stage = Arc::new(Stage {
                context: prepared.context.clone(),
                logic: prepared.logic,
                policy: prepared.policy,
                downstream: next_hop.clone(),
                dead_letter: dead_letter.clone(),
                control: control.clone(),
                sequencer,
                stats,
                call_seconds: crate::telemetry::call_histogram(&prepared.context.name),
                batch_sizes: crate::telemetry::batch_histogram(&prepared.context.name),
            });
            let mut instance_senders = Vec::new();
            let mut trial = Some(prepared.trial);
            for index in 0..prepared.concurrency {
                let (tx, rx) = mpsc::channel(2);
                instance_senders.push(tx);
                let worker = Worker::new(stage.clone(), prepared.version.clone(), trial.take());
                let thread = std::thread::Builder::new()
                    .name(format!("weir-{}-{index}", prepared.context.name))
                    .spawn(move || worker.run(rx))
                    .expect("spawning a stage worker thread");
                workers.push(thread);
            }
            drop(stage);
            let options = dispatch::DispatchOptions {
                mode: prepared.mode,
                policy: prepared.batch,
                group_by: prepared.group_by,
                shutdown: control.shutdown().clone(),
                dispatched: counter,
            };
            tasks.spawn(async move {
                dispatch::dispatch(input_rx, instance_senders, options).await;
                Ok(())
            });
            next_hop = Downstream::new(vec![input_tx], routes.clone());
        }
        stage_stats.reverse();
        dispatched.reverse();
        drop(routes);

        // Sources feed the first stage (or, without stages, the sinks).
        let (source_tx, mut source_rx) = mpsc::channel::<Batch>(CHANNEL_BATCHES);
        tasks.spawn(async move {
            while let Some(batch) = source_rx.recv().await {
                next_hop.deliver(router::Outputs { default: batch, routed: Vec::new() }).await;
            }
            Ok(())
        });
        let checkpoints = checkpoints.zip(checkpointing).map(|(checkpoints, (store, interval))| {
            let state: Arc<dyn CheckpointStore> = Arc::new(PipelineState::new(store, states.clone()));
            let stop = CancellationToken::new();
            let coordinator = tokio::spawn({
                let (checkpoints, state, stop, control) =
                    (checkpoints.clone(), state.clone(), stop.clone(), control.clone());
                async move { checkpoints.run(interval, state, stop, control).await }
            });
            (checkpoints, state, stop, coordinator)
        });
        let mut source_tasks = tokio::task::JoinSet::new();
        for (name, spec) in self.sources {
            let mut ctx =
                SourceContext::new(name.clone(), source_tx.clone(), &control, dead_letter.clone(), self.budget.clone());
            if let Some((checkpoints, ..)) = &checkpoints {
                ctx = ctx.with_checkpoints(checkpoints.clone());
            }
            if let Some(t) = &telemetry {
                t.source(&name, ctx.stats());
            }
            source_tasks.spawn(async move {
                let source = spec.open().map_err(|e| anyhow::anyhow!("source `{name}`: {e:#}"))?;
                source.run(ctx).await.map_err(|e| anyhow::anyhow!("source `{name}`: {e:#}"))
            });
        }
        drop(source_tx);
        drop(dead_letter);

        let finished = {
            let control = control.clone();
            async move {
                let mut errors = Vec::new();
                while let Some(result) = source_tasks.join_next().await {
                    if let Some(e) = flatten(result) {
                        tracing::error!("{e}");
                        errors.push(e);
                        // A broken source stops the run; the others drain.
                        control.shutdown().cancel();
                    }
                }
                while let Some(result) = tasks.join_next().await {
                    if let Some(e) = flatten(result) {
                        tracing::error!("{e}");
                        errors.push(e);
                        control.shutdown().cancel();
                    }
                }
                let _ = tokio::task::spawn_blocking(move || {
                    for worker in workers {
                        let _ = worker.join();
                    }
                })
                .await;
                errors
            }
        };
        // Once stopping (signal, halt, broken source), the drain is bounded.
        let drain_timeout = self.drain_timeout;
        let watchdog = async {
            control.shutdown().cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::select! {
            errors = finished => report.errors.extend(errors),
            () = watchdog => {
                // Nothing more is acknowledged; dropping `finished` aborts the
                // tasks, and worker threads stuck in a call are left behind.
                control.abandon();
                let in_flight = in_flight(&sink_stats, &dlq_stats, &stage_stats, &dispatched);
                report.errors.push(format!(
                    "the drain timed out after {drain_timeout:?} ([shutdown] drain_timeout_ms) with messages still in \
                     flight: {in_flight}; nothing past the acknowledged position was committed, so they will be \
                     delivered again"
                ));
            }
        }
        if let Some((checkpoints, state, stop, coordinator)) = checkpoints {
            stop.cancel();
            let _ = coordinator.await;
            checkpoints.finish(state.as_ref(), &control).await;
        }

        report.halted = control.halt_reason();
        report.sinks = sink_stats.iter().map(|(n, s)| (n.clone(), s.written.load(Ordering::Relaxed))).collect();
        report.dead_lettered = dlq_stats.written.load(Ordering::Relaxed);
        report.stages = stage_stats
            .iter()
            .map(|(ctx, s)| {
                (
                    ctx.name.to_string(),
                    StageSummary {
                        processed: s.processed.load(Ordering::Relaxed),
                        dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
                        skipped: s.skipped.load(Ordering::Relaxed),
                        traps: s.traps.load(Ordering::Relaxed),
                        retries: s.retries.load(Ordering::Relaxed),
                        counters: ctx.counters.snapshot(),
                    },
                )
            })
            .collect();
        report
    }
}

fn flatten(result: Result<Result<()>, tokio::task::JoinError>) -> Option<String> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(format!("a pipeline task failed: {e}")),
    }
}

fn prepare_stage(
    stage: &StageConfig,
    config: &PipelineConfig,
    runtime: &Runtime,
    natives: &NativeStages,
    store: Option<&Arc<StateStore>>,
) -> Result<PreparedStage, ConfigError> {
    let at = |m: String| config.error_at(&stage.plugin, format!("stage `{}`: {m}", stage.name));
    let state = match store {
        Some(store) => {
            StageState::open(store.clone(), &stage.name, stage.state_quota()).map_err(|e| at(format!("{e:#}")))?
        }
        None => StageState::in_memory(),
    };
    let context = Arc::new(StageContext {
        name: stage.name.as_str().into(),
        config: stage.plugin_config(),
        state: Arc::new(state),
        counters: Arc::default(),
        limits: stage.limits(),
        log_rate: Arc::default(),
    });
    let logic = match stage.plugin.get_ref().strip_prefix("native:") {
        Some(name) => StageLogic::Native(
            natives.get(name).cloned().ok_or_else(|| at(format!("no native stage `{name}` is registered")))?,
        ),
        None => {
            let path = config.resolve(stage.plugin.get_ref());
            let wasm = resolve_plugin(&path).map_err(at)?;
            let plugin = runtime.load_file(&wasm).map_err(|e| at(format!("{e:#}")))?;
            StageLogic::Wasm(Arc::new(HotPlugin::new(runtime.clone(), context.clone(), plugin, path)))
        }
    };
    // A trial instance proves the plugin starts with this config before any
    // data moves; it then becomes the first worker's instance.
    let version = logic.version();
    let trial = logic.start(version.as_deref(), context.clone()).map_err(|e| at(e.to_string()))?;
    if let Some(plugin) = &version {
        tracing::info!(stage = stage.name, version = %plugin.version(), world = %plugin.world(), "plugin loaded");
    }
    let mode = match stage.dispatch {
        Dispatch::RoundRobin => dispatch::Mode::RoundRobin,
        Dispatch::Broadcast => dispatch::Mode::Broadcast,
        Dispatch::Partition => {
            dispatch::Mode::Partition(stage.partition_by.as_ref().map(|p| p.get_ref().clone()).unwrap_or(GroupBy::Key))
        }
    };
    Ok(PreparedStage {
        context,
        logic,
        version,
        trial,
        concurrency: stage.concurrency,
        mode,
        ordered: stage.ordered,
        batch: BatchPolicy { max_size: stage.batch.max_size, max_wait: Duration::from_millis(stage.batch.max_wait_ms) },
        group_by: stage.batch.group_by.as_ref().map(|g| g.get_ref().clone()),
        policy: ErrorPolicy {
            on_error: stage.on_error,
            retries: stage.retries,
            backoff: Duration::from_millis(stage.retry_backoff_ms),
            exhausted: stage.on_retry_exhausted,
        },
    })
}

/// A `.wasm` file as is; a source folder is built first.
fn resolve_plugin(path: &std::path::Path) -> Result<PathBuf, String> {
    if path.is_dir() {
        tracing::info!("building plugin {}", path.display());
        return crate::plugin::build::build(path).map_err(|e| format!("{e:#}"));
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    Err(format!("plugin {} not found (expected a .wasm component or a plugin source folder)", path.display()))
}
