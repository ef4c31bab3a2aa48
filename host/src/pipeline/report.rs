//! What a run reports: per sink, per stage and the dead letter, and what
//! was still in flight when a drain gave up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sink::SinkStats;
use super::stage::StageStats;
use crate::plugin::StageContext;

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Messages written, per sink.
    pub sinks: Vec<(String, u64)>,
    /// Messages written to the dead letter.
    pub dead_lettered: u64,
    /// Per-stage counters.
    pub stages: Vec<(String, StageSummary)>,
    /// Why the pipeline halted, if it did (the run failed).
    pub halted: Option<String>,
    /// Errors of sources or sinks that stopped the run.
    pub errors: Vec<String>,
}

/// Counters of one stage after a run.
#[derive(Debug, Default, Clone)]
pub struct StageSummary {
    /// Messages processed.
    pub processed: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages skipped.
    pub skipped: u64,
    /// Traps.
    pub traps: u64,
    /// Retry attempts (per message).
    pub retries: u64,
    /// Plugin-defined counters.
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl RunReport {
    /// A run that failed before it started.
    pub(super) fn failed(mut self, error: String) -> Self {
        self.errors.push(error);
        self
    }

    /// Whether the run succeeded.
    pub fn success(&self) -> bool {
        self.halted.is_none() && self.errors.is_empty()
    }
}

/// What was still in flight when a drain timed out, per sink and stage.
pub(super) fn in_flight(
    sinks: &[(String, Arc<SinkStats>)],
    dead_letter: &SinkStats,
    stages: &[(Arc<StageContext>, Arc<StageStats>)],
    dispatched: &[Arc<AtomicU64>],
) -> String {
    let mut parts = Vec::new();
    for ((context, stats), dispatched) in stages.iter().zip(dispatched) {
        let done = stats.processed.load(Ordering::Relaxed)
            + stats.dead_lettered.load(Ordering::Relaxed)
            + stats.skipped.load(Ordering::Relaxed);
        let waiting = dispatched.load(Ordering::Relaxed).saturating_sub(done);
        if waiting > 0 {
            parts.push(format!("stage `{}`: {waiting} messages in its instances", context.name));
        }
    }
    let dead_letter = ("[dead_letter]".to_string(), dead_letter);
    let sinks = sinks.iter().map(|(name, stats)| (format!("sink `{name}`"), &**stats)).chain([dead_letter]);
    for (label, stats) in sinks {
        let pending = stats.pending.load(Ordering::Relaxed);
        if pending == 0 {
            continue;
        }
        match stats.last_error.lock().as_deref() {
            Some(error) => parts.push(format!("{label}: {pending} messages not written (last error: {error})")),
            None => parts.push(format!("{label}: {pending} messages being written")),
        }
    }
    if parts.is_empty() {
        "no batch in a stage or sink (a source did not finish)".to_string()
    } else {
        parts.join("; ")
    }
}
