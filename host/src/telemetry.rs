//! Prometheus metrics for `GET /metrics` on the admin listener.
//!
//! The engine already counts what it does, per batch, in plain atomics (the
//! stage, sink and source stats behind the run summary). Rather than count a
//! second time on the hot path, a scrape copies those totals into the
//! `metrics` recorder and renders its text; only the plugin call duration is
//! and the batch size are recorded as they happen (one histogram sample per
//! call, one per batch). Without an admin listener no recorder is installed
//! and the histogram handles are no-ops.
//!
//! Names follow the usual pipeline conventions: `weir_` prefix, one series
//! per `component` (source, stage or sink name) and `kind`.
//!
//! Two kinds of series are sampled rather than counted: the batches waiting
//! in each stage's and sink's input channel, read at scrape time, and the
//! broker sources' lag, which each connector polls from its broker on a
//! timer of its own (`connectors::lag`) once [`install`] turned it on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, WeakSender};

use crate::flow::batch::Batch;
use crate::flow::budget::InFlightBudget;
use crate::pipeline::sink::SinkStats;
use crate::pipeline::stage::StageStats;
use crate::plugin::swap::HotPlugin;
use crate::plugin::{StageContext, TrapKind};

/// Buckets of `weir_plugin_call_seconds`: 50 µs to 10 s.
const CALL_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Buckets of `weir_component_batch_size`: powers of two up to 16384.
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// The process's recorder, installed at most once.
static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("weir_plugin_call_seconds".into()), CALL_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("weir_component_batch_size".into()), BATCH_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            // Broker sources poll their lag only when it is served.
            crate::connectors::lag::enable();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("weir_component_received_events_total", "Messages a source read, or a stage was handed.");
    describe_counter!("weir_component_received_bytes_total", "Bytes (keys, values, headers) a source handed on.");
    describe_counter!("weir_component_processed_events_total", "Messages a stage processed without failure.");
    describe_counter!("weir_component_sent_events_total", "Messages a sink wrote.");
    describe_counter!("weir_component_dead_lettered_events_total", "Messages a stage sent to the dead letter.");
    describe_counter!("weir_component_skipped_events_total", "Messages a stage skipped after a failure.");
    describe_counter!("weir_component_retried_events_total", "Retry attempts of a stage.");
    describe_counter!("weir_component_errors_total", "Errors by type: plugin traps, failed sink writes.");
    describe_gauge!("weir_component_pending_events", "Messages a sink holds, received and not yet written.");
    describe_gauge!("weir_in_flight_bytes", "Bytes of source messages read and not yet acknowledged.");
    describe_counter!("weir_plugin_counter_total", "Plugin-defined counters (counter-add).");
    describe_histogram!("weir_plugin_call_seconds", "Duration of one plugin call (one batch).");
    describe_gauge!("weir_uptime_seconds", "Seconds since the pipeline started.");
    describe_counter!("weir_component_filtered_events_total", "Messages a stage emitted nothing for.");
    describe_counter!("weir_component_traps_total", "Plugin traps by reason: panic, deadline, memory, other.");
    describe_gauge!("weir_component_instances", "Plugin instances running in a stage.");
    describe_gauge!("weir_component_in_flight_events", "Messages handed to a stage's instances, not yet resolved.");
    describe_counter!("weir_component_busy_milliseconds_total", "Time a stage's workers spent processing batches.");
    describe_gauge!("weir_component_utilization", "Share of time a stage's workers were busy since the last scrape.");
    describe_histogram!("weir_component_batch_size", "Messages per batch a stage processed.");
    describe_gauge!("weir_plugin_info", "1 for the plugin version a stage runs, 0 for versions it ran before.");
    describe_counter!("weir_plugin_swaps_total", "Hot swaps (and rollbacks) of a stage's plugin.");
    describe_counter!("weir_plugin_swaps_refused_total", "Plugin versions refused by a stage.");
    describe_gauge!(
        "weir_source_lag_events",
        "Messages of a source partition its group has not consumed (Kafka: high watermark less the committed \
         offset; Redis: the group's lag)."
    );
    describe_gauge!("weir_source_pending_events", "Entries delivered to a Redis source's group, not yet acknowledged.");
    describe_gauge!("weir_source_committed_offset", "The offset a Kafka source's group committed, per partition.");
    describe_gauge!("weir_component_buffered_batches", "Batches waiting in the channel in front of a stage or sink.");
}

/// What a running pipeline registers for `/metrics`.
pub struct Telemetry {
    parts: Mutex<Parts>,
    started: Instant,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { parts: Mutex::default(), started: Instant::now() }
    }
}

#[derive(Default)]
struct Parts {
    sources: Vec<(String, Arc<crate::flow::SourceStats>)>,
    stages: Vec<StageEntry>,
    sinks: Vec<(String, &'static str, Arc<SinkStats>)>,
    budget: Option<InFlightBudget>,
    plugins: Vec<PluginEntry>,
    /// The channel in front of each stage and sink, with its name and kind.
    /// Weak: a scrape must not keep a channel open.
    channels: Vec<(String, &'static str, WeakSender<Batch>)>,
}

/// A stage and its busy time at the previous scrape (for utilization).
struct StageEntry {
    context: Arc<StageContext>,
    stats: Arc<StageStats>,
    last: (Instant, u64),
}

/// A swappable plugin and the version last shown as running.
struct PluginEntry {
    hot: Arc<HotPlugin>,
    shown: Option<String>,
}

/// Totals over the whole pipeline, for the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages the sources read.
    pub read: u64,
    /// Bytes the sources read.
    pub read_bytes: u64,
    /// Messages the sinks wrote (the dead letter excluded).
    pub written: u64,
    /// Messages dead-lettered, skipped or trapped on.
    pub failed: u64,
    /// Bytes read of the sources' input and its size, when every source
    /// knows the size of its input (files).
    pub input: Option<(u64, u64)>,
}

impl Telemetry {
    /// An empty registry, shared by the pipeline and the admin listener.
    pub fn new() -> Arc<Self> {
        Arc::new(Telemetry::default())
    }

    pub(crate) fn source(&self, name: &str, stats: Arc<crate::flow::SourceStats>) {
        self.parts.lock().sources.push((name.to_string(), stats));
    }

    pub(crate) fn stage(&self, context: Arc<StageContext>, stats: Arc<StageStats>) {
        let last = (Instant::now(), stats.busy_nanos.load(Ordering::Relaxed));
        self.parts.lock().stages.push(StageEntry { context, stats, last });
    }

    pub(crate) fn sink(&self, name: &str, kind: &'static str, stats: Arc<SinkStats>) {
        self.parts.lock().sinks.push((name.to_string(), kind, stats));
    }

    /// Registers the channel in front of stage or sink `name`, whose
    /// waiting batches a scrape counts.
    pub(crate) fn channel(&self, name: &str, kind: &'static str, sender: &mpsc::Sender<Batch>) {
        self.parts.lock().channels.push((name.to_string(), kind, sender.downgrade()));
    }

    pub(crate) fn budget(&self, budget: InFlightBudget) {
        self.parts.lock().budget = Some(budget);
    }

    /// Registers the stages' swappable plugins (version info and swaps).
    pub fn plugins(&self, plugins: &[Arc<HotPlugin>]) {
        let entries = plugins.iter().map(|hot| PluginEntry { hot: hot.clone(), shown: None });
        self.parts.lock().plugins.extend(entries);
    }

    /// Sums of the registered counters, without a recorder.
    pub fn totals(&self) -> Totals {
        let parts = self.parts.lock();
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut totals = Totals::default();
        let mut input = Some((0, 0));
        for (_, stats) in &parts.sources {
            totals.read += load(&stats.events);
            totals.read_bytes += load(&stats.bytes);
            let size = load(&stats.input_size);
            input = input.filter(|_| size > 0).map(|(read, total)| (read + load(&stats.input_read), total + size));
        }
        totals.input = input.filter(|(_, size)| *size > 0);
        for (_, kind, stats) in &parts.sinks {
            if *kind == "sink" {
                totals.written += load(&stats.written);
            }
        }
        for entry in &parts.stages {
            totals.failed += load(&entry.stats.dead_lettered) + load(&entry.stats.skipped);
        }
        totals
    }

    /// Copies the current totals into the recorder and renders the text
    /// exposition format.
    pub fn render(&self, handle: &PrometheusHandle) -> String {
        use metrics::{counter, gauge};
        let mut parts = self.parts.lock();
        for (name, stats) in &parts.sources {
            let labels = [("component", name.clone()), ("kind", "source".to_string())];
            counter!("weir_component_received_events_total", &labels).absolute(stats.events.load(Ordering::Relaxed));
            counter!("weir_component_received_bytes_total", &labels).absolute(stats.bytes.load(Ordering::Relaxed));
        }
        let now = Instant::now();
        for StageEntry { context, stats, last } in &mut parts.stages {
            let name = context.name.to_string();
            let labels = [("component", name.clone()), ("kind", "stage".to_string())];
            let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            counter!("weir_component_received_events_total", &labels).absolute(load(&stats.dispatched));
            counter!("weir_component_processed_events_total", &labels).absolute(load(&stats.processed));
            counter!("weir_component_dead_lettered_events_total", &labels).absolute(load(&stats.dead_lettered));
            counter!("weir_component_skipped_events_total", &labels).absolute(load(&stats.skipped));
            counter!("weir_component_retried_events_total", &labels).absolute(load(&stats.retries));
            let trap = [("component", name.clone()), ("kind", "stage".to_string()), ("error_type", "trap".to_string())];
            counter!("weir_component_errors_total", &trap).absolute(load(&stats.traps));
            counter!("weir_component_filtered_events_total", &labels).absolute(load(&stats.filtered));
            for kind in TrapKind::ALL {
                let labels = [("component", name.clone()), ("reason", kind.label().to_string())];
                counter!("weir_component_traps_total", &labels).absolute(load(&stats.trap_kinds[kind.index()]));
            }
            gauge!("weir_component_instances", &labels).set(load(&stats.instances) as f64);
            gauge!("weir_component_in_flight_events", &labels).set(stats.in_flight() as f64);
            let busy = load(&stats.busy_nanos);
            counter!("weir_component_busy_milliseconds_total", &labels).absolute(busy / 1_000_000);
            gauge!("weir_component_utilization", &labels).set(utilization(*last, (now, busy), load(&stats.workers)));
            *last = (now, busy);
            for (counter_name, value) in context.counters.snapshot() {
                let labels = [("component", name.clone()), ("name", counter_name)];
                counter!("weir_plugin_counter_total", &labels).absolute(value);
            }
        }
        for (name, kind, stats) in &parts.sinks {
            let labels = [("component", name.clone()), ("kind", kind.to_string())];
            counter!("weir_component_sent_events_total", &labels).absolute(stats.written.load(Ordering::Relaxed));
            gauge!("weir_component_pending_events", &labels).set(stats.pending.load(Ordering::Relaxed) as f64);
            let failed =
                [("component", name.clone()), ("kind", kind.to_string()), ("error_type", "write_failed".to_string())];
            counter!("weir_component_errors_total", &failed).absolute(stats.failed_writes.load(Ordering::Relaxed));
        }
        for PluginEntry { hot, shown } in &mut parts.plugins {
            let name = hot.stage().to_string();
            let status = hot.status();
            let version = hot.current().version().short();
            if shown.as_ref().is_some_and(|old| *old != version) {
                let old = [("component", name.clone()), ("version", shown.take().unwrap_or_default())];
                gauge!("weir_plugin_info", &old).set(0.0);
            }
            gauge!("weir_plugin_info", "component" => name.clone(), "version" => version.clone()).set(1.0);
            *shown = Some(version);
            counter!("weir_plugin_swaps_total", "component" => name.clone()).absolute(status.swaps);
            counter!("weir_plugin_swaps_refused_total", "component" => name).absolute(status.refused);
        }
        for (name, kind, sender) in &parts.channels {
            // A channel whose senders are all gone is draining or done.
            let waiting = sender.upgrade().map_or(0, |tx| tx.max_capacity() - tx.capacity());
            let labels = [("component", name.clone()), ("kind", kind.to_string())];
            gauge!("weir_component_buffered_batches", &labels).set(waiting as f64);
        }
        if let Some(budget) = &parts.budget {
            gauge!("weir_in_flight_bytes").set(budget.in_use() as f64);
        }
        drop(parts);
        gauge!("weir_uptime_seconds").set(self.started.elapsed().as_secs_f64());
        handle.render()
    }
}

/// Share of `workers`' time spent busy between two (time, busy ns) samples.
fn utilization(before: (Instant, u64), after: (Instant, u64), workers: u64) -> f64 {
    let wall = after.0.duration_since(before.0).as_nanos() as f64 * workers.max(1) as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    (after.1.saturating_sub(before.1) as f64 / wall).clamp(0.0, 1.0)
}

/// The histogram of one stage's batch sizes (a no-op without a recorder).
pub(crate) fn batch_histogram(stage: &str) -> metrics::Histogram {
    metrics::histogram!("weir_component_batch_size", "component" => stage.to_string())
}

/// The histogram of one stage's plugin calls (a no-op without a recorder).
pub(crate) fn call_histogram(stage: &str) -> metrics::Histogram {
    metrics::histogram!("weir_plugin_call_seconds", "component" => stage.to_string())
}
