//! What the broker sources share to report how far behind they are:
//! `weir_source_lag_events`, `weir_source_pending_events` and
//! `weir_source_committed_offset` gauges, one series per partition (a Kafka
//! `topic/N`, a Redis stream), labelled `component` (the source) and
//! `kind="source"`.
//!
//! Lag is a property of the broker, not of the messages weir handles, so it
//! is not counted on the data path: each connector polls its broker on a
//! timer in a task of its own ([`Poller`]) and sets the gauges. Nothing is
//! polled unless `/metrics` is served (see [`enable`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Whether a metrics recorder is installed: without one the gauges go
/// nowhere and the broker round trips would be wasted.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns lag polling on for the sources started from now on (called once
/// the `/metrics` recorder is installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// A source's lag poller; stopped (and waited for) with [`Poller::stop`],
/// cancelled when dropped.
pub(crate) struct Poller {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Poller {
    /// Runs `poll` every `interval` (the first time at once), unless lag
    /// polling is off. A round is never cut short: `poll` gets the stop
    /// token and checks it between its broker calls, so that
    /// [`Poller::stop`] returns only once nothing of the poller still runs
    /// (a Kafka round holds the source's consumer, which must be closed by
    /// the source itself).
    pub(crate) fn start<F, Fut>(interval: Duration, mut poll: F) -> Poller
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stop = CancellationToken::new();
        if !ENABLED.load(Ordering::Relaxed) {
            return Poller { stop, task: None };
        }
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => poll(stop.clone()).await,
                    }
                }
            }
        });
        Poller { stop, task: Some(task) }
    }

    /// Stops polling and waits for a round under way to end.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One partition's reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    /// `topic/N` (Kafka) or the stream (Redis).
    pub partition: String,
    /// Messages not yet consumed by the group.
    pub lag: u64,
    /// Messages delivered and not yet acknowledged (Redis).
    pub pending: Option<u64>,
    /// The group's committed offset (Kafka).
    pub committed: Option<i64>,
}

/// The gauges of one source.
pub(crate) struct Gauges {
    source: String,
    /// Partitions given a value last time, and whether with a pending count.
    shown: HashMap<String, bool>,
}

impl Gauges {
    /// The gauges of source `source`.
    pub(crate) fn new(source: &str) -> Self {
        Gauges { source: source.to_string(), shown: HashMap::new() }
    }

    /// Sets the gauges of `readings`. A partition read last time and missing
    /// now (revoked in a rebalance) gets lag 0: another member reports it,
    /// so sums over the group's processes stay right.
    pub(crate) fn publish(&mut self, readings: &[Reading]) {
        use metrics::gauge;
        let labels = |partition: &str| {
            [("component", self.source.clone()), ("kind", "source".to_string()), ("partition", partition.to_string())]
        };
        let now: HashMap<String, bool> = readings.iter().map(|r| (r.partition.clone(), r.pending.is_some())).collect();
        for (gone, pending) in self.shown.iter().filter(|(p, _)| !now.contains_key(*p)) {
            gauge!("weir_source_lag_events", &labels(gone)).set(0.0);
            if *pending {
                gauge!("weir_source_pending_events", &labels(gone)).set(0.0);
            }
        }
        for reading in readings {
            let labels = labels(&reading.partition);
            gauge!("weir_source_lag_events", &labels).set(reading.lag as f64);
            if let Some(pending) = reading.pending {
                gauge!("weir_source_pending_events", &labels).set(pending as f64);
            }
            if let Some(committed) = reading.committed {
                gauge!("weir_source_committed_offset", &labels).set(committed as f64);
            }
        }
        self.shown = now;
    }
}
