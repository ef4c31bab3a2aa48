//! The subscription backlog of a Pulsar source on `/metrics`:
//! `weir_source_lag_events` (the subscription's backlog, messages not yet
//! acknowledged, delivered or not) and `weir_source_pending_events`
//! (delivered to this consumer and not yet acknowledged), one series per
//! source topic, summed over a partitioned topic's partitions.
//!
//! pulsar-rs answers a consumer-stats request only on the consumer itself
//! (`&mut`), which the read loop owns, so the read loop asks on a timer of
//! this module rather than a task of its own (as Kafka's and Redis's
//! pollers are): one request per topic partition every two seconds, with a
//! deadline, never per message.

use std::time::Duration;

use pulsar::{Consumer, TokioExecutor};
use tokio::time::{Interval, MissedTickBehavior};

use crate::connectors::lag::{self, Gauges, Reading};

/// How often the backlog is asked for.
const INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait for the broker's answer: the read loop waits meanwhile.
const DEADLINE: Duration = Duration::from_secs(2);

/// The backlog gauges of one source, and when to read them next.
pub(super) struct Backlog {
    tick: Interval,
    gauges: Gauges,
    topic: String,
    source: String,
}

impl Backlog {
    /// The backlog reporter of source `source` on `topic`, or `None` when
    /// nothing serves `/metrics` (a request per tick would be wasted).
    pub(super) fn new(source: &str, topic: &str) -> Option<Backlog> {
        if !lag::enabled() {
            return None;
        }
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(Backlog { tick, gauges: Gauges::new(source), topic: topic.to_string(), source: source.to_string() })
    }

    /// Waits for the next reading to be due; never, without a reporter.
    pub(super) async fn due(backlog: &mut Option<Backlog>) {
        match backlog {
            Some(b) => {
                b.tick.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Asks the broker for the subscription's figures on every partition of
    /// the topic and sets the gauges. A failed or late answer keeps the last
    /// values (the read loop notices a broken connection itself).
    pub(super) async fn report(&mut self, consumer: &mut Consumer<Vec<u8>, TokioExecutor>) {
        let answer = tokio::time::timeout(DEADLINE, consumer.get_stats()).await;
        // The next reading is due an interval after this one ended, so that
        // slow answers never starve the read loop.
        self.tick.reset();
        let stats = match answer {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => {
                tracing::debug!(source = self.source, "Pulsar backlog look-up failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(source = self.source, "Pulsar backlog look-up took over {DEADLINE:?}");
                return;
            }
        };
        let (backlog, unacked) = stats
            .iter()
            .fold((0, 0), |(b, u), s| (b + s.msg_backlog.unwrap_or(0), u + s.unacked_messages.unwrap_or(0)));
        self.gauges.publish(&[Reading {
            partition: self.topic.clone(),
            lag: backlog,
            pending: Some(unacked),
            committed: None,
        }]);
    }
}
