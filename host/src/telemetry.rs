//! Prometheus metrics for `GET /metrics` on the admin listener.
//!
//! The engine already counts what it does, per batch, in plain atomics (the
//! stage, sink and source stats behind the run summary). Rather than count a
//! second time on the hot path, a scrape copies those totals into the
//! `metrics` recorder and renders its text; only the plugin call duration is
//! recorded as it happens (one histogram sample per call). Without an admin
//! listener no recorder is installed and the histogram handle is a no-op.
//!
//! Names follow the usual pipeline conventions: `weir_` prefix, one series
//! per `component` (source, stage or sink name) and `kind`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

use crate::flow::budget::InFlightBudget;
use crate::pipeline::sink::SinkStats;
use crate::pipeline::stage::StageStats;
use crate::plugin::StageContext;

/// Buckets of `weir_plugin_call_seconds`: 50 µs to 10 s.
const CALL_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

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
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("weir_component_received_events_total", "Messages a source handed to the pipeline.");
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
}

/// What a running pipeline registers for `/metrics`.
#[derive(Default)]
pub struct Telemetry {
    parts: Mutex<Parts>,
}

#[derive(Default)]
struct Parts {
    sources: Vec<(String, Arc<crate::flow::SourceStats>)>,
    stages: Vec<(Arc<StageContext>, Arc<StageStats>)>,
    sinks: Vec<(String, &'static str, Arc<SinkStats>)>,
    budget: Option<InFlightBudget>,
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
        self.parts.lock().stages.push((context, stats));
    }

    pub(crate) fn sink(&self, name: &str, kind: &'static str, stats: Arc<SinkStats>) {
        self.parts.lock().sinks.push((name.to_string(), kind, stats));
    }

    pub(crate) fn budget(&self, budget: InFlightBudget) {
        self.parts.lock().budget = Some(budget);
    }

    /// Copies the current totals into the recorder and renders the text
    /// exposition format.
    pub fn render(&self, handle: &PrometheusHandle) -> String {
        use metrics::{counter, gauge};
        let parts = self.parts.lock();
        for (name, stats) in &parts.sources {
            let labels = [("component", name.clone()), ("kind", "source".to_string())];
            counter!("weir_component_received_events_total", &labels).absolute(stats.events.load(Ordering::Relaxed));
            counter!("weir_component_received_bytes_total", &labels).absolute(stats.bytes.load(Ordering::Relaxed));
        }
        for (context, stats) in &parts.stages {
            let name = context.name.to_string();
            let labels = [("component", name.clone()), ("kind", "stage".to_string())];
            let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            counter!("weir_component_processed_events_total", &labels).absolute(load(&stats.processed));
            counter!("weir_component_dead_lettered_events_total", &labels).absolute(load(&stats.dead_lettered));
            counter!("weir_component_skipped_events_total", &labels).absolute(load(&stats.skipped));
            counter!("weir_component_retried_events_total", &labels).absolute(load(&stats.retries));
            let trap = [("component", name.clone()), ("kind", "stage".to_string()), ("error_type", "trap".to_string())];
            counter!("weir_component_errors_total", &trap).absolute(load(&stats.traps));
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
        if let Some(budget) = &parts.budget {
            gauge!("weir_in_flight_bytes").set(budget.in_use() as f64);
        }
        drop(parts);
        handle.render()
    }
}

/// The histogram of one stage's plugin calls (a no-op without a recorder).
pub(crate) fn call_histogram(stage: &str) -> metrics::Histogram {
    metrics::histogram!("weir_plugin_call_seconds", "component" => stage.to_string())
}
