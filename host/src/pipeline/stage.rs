//! A stage's instances at work: each worker thread owns one plugin instance
//! and turns input batches into outputs, applying the error policy.
//!
//! A trap discards the instance; the batch is then split in halves and each
//! half retried on a fresh instance, recursively, until the message(s) that
//! trap on their own are found. Only those get the error policy; every other
//! message of the batch is processed normally.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::logic::{Runner, StageLogic};
use super::router::{Downstream, Outputs};
use crate::config::{OnError, RetryExhausted};
use crate::flow::ack::AckToken;
use crate::flow::batch::Batch;
use crate::flow::control::Control;
use crate::flow::dead_letter::DeadLetter;
use crate::message::{Message, Outcome, Output};
use crate::plugin::{InstanceError, StageContext, TrapKind, World};

/// What a stage does with a message that failed or trapped.
#[derive(Debug, Clone, Copy)]
pub struct ErrorPolicy {
    /// The stage's `on_error`.
    pub on_error: OnError,
    /// Attempts for `retry`.
    pub retries: u32,
    /// First retry backoff (doubles per attempt).
    pub backoff: Duration,
    /// After the last retry.
    pub exhausted: RetryExhausted,
}

impl ErrorPolicy {
    /// The final action once retries (if any) are spent.
    fn final_action(&self) -> OnError {
        match (self.on_error, self.exhausted) {
            (OnError::Retry, RetryExhausted::DeadLetter) => OnError::DeadLetter,
            (OnError::Retry, RetryExhausted::Skip) => OnError::Skip,
            (OnError::Retry, RetryExhausted::Halt) => OnError::Halt,
            (other, _) => other,
        }
    }
}

/// Per-stage counters.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Messages that went into the plugin and came out processed.
    pub processed: AtomicU64,
    /// Messages sent to the dead letter.
    pub dead_lettered: AtomicU64,
    /// Messages skipped after a failure.
    pub skipped: AtomicU64,
    /// Traps (each one discarded an instance).
    pub traps: AtomicU64,
    /// Retry attempts.
    pub retries: AtomicU64,
    /// Messages the plugin emitted nothing for (filtered out).
    pub filtered: AtomicU64,
    /// Messages handed to this stage's workers.
    pub dispatched: Arc<AtomicU64>,
    /// Traps by [`TrapKind`], indexed by [`TrapKind::index`].
    pub trap_kinds: [AtomicU64; 4],
    /// Plugin instances (or native runners) alive now.
    pub instances: AtomicU64,
    /// Worker threads alive now (the stage's `concurrency` while it runs).
    pub workers: AtomicU64,
    /// Time workers spent processing batches, in nanoseconds.
    pub busy_nanos: AtomicU64,
}

impl StageStats {
    /// Messages dispatched to this stage and not yet resolved: processed,
    /// filtered out, dead-lettered or skipped.
    pub fn in_flight(&self) -> u64 {
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let resolved = load(&self.processed) + load(&self.dead_lettered) + load(&self.skipped);
        load(&self.dispatched).saturating_sub(resolved)
    }
}

/// A unit of work for one instance.
#[derive(Debug)]
pub struct Work {
    /// Dispatch order, for `ordered = true`.
    pub seq: u64,
    /// The messages.
    pub batch: Batch,
    /// The batch's group key (`batch.group_by`), handed to aggregators.
    pub group: Option<Vec<u8>>,
}

/// Everything a stage's workers share.
pub struct Stage {
    /// Name and plugin context (config, state, counters, limits).
    pub context: Arc<StageContext>,
    /// What the instances run.
    pub logic: StageLogic,
    /// Failure policy.
    pub policy: ErrorPolicy,
    /// Where outputs go.
    pub downstream: Downstream,
    /// Where failures go.
    pub dead_letter: DeadLetter,
    /// Run control.
    pub control: Control,
    /// With `ordered = true`: outputs go through the sequencer.
    pub sequencer: Option<mpsc::Sender<(u64, Outputs)>>,
    /// Counters.
    pub stats: Arc<StageStats>,
    /// Duration of each plugin call (`weir_plugin_call_seconds`).
    pub call_seconds: metrics::Histogram,
    /// Messages per batch (`weir_component_batch_size`).
    pub batch_sizes: metrics::Histogram,
}

/// Time one batch may spend in calls that trap, in CPU deadlines, before
/// isolation stops. Bisection finds a poison message in about log2(batch)
/// traps, and a panic costs microseconds; but a plugin that loops on every
/// message would cost 2N - 1 deadline-long calls. Past this budget the
/// messages not yet isolated all fail with the last trap's reason.
const TRAP_BUDGET_DEADLINES: u32 = 16;

/// A fatal stage error: the plugin cannot even be restarted.
struct Fatal(String);

/// One worker: an instance and the loop that feeds it.
pub(crate) struct Worker {
    stage: Arc<Stage>,
    /// The plugin version this worker runs; `None` for native logic.
    version: Option<Arc<crate::plugin::Plugin>>,
    instance: Option<Runner>,
    /// Time the batch being processed spent in trapping calls (see
    /// [`TRAP_BUDGET_DEADLINES`]).
    batch_trap_time: Duration,
}

type Result<T> = std::result::Result<T, Fatal>;

impl Worker {
    /// A worker, optionally starting from an already initialised instance.
    pub(crate) fn new(
        stage: Arc<Stage>,
        version: Option<Arc<crate::plugin::Plugin>>,
        instance: Option<Runner>,
    ) -> Self {
        stage.stats.workers.fetch_add(1, Ordering::Relaxed);
        if instance.is_some() {
            stage.stats.instances.fetch_add(1, Ordering::Relaxed);
        }
        Worker { stage, version, instance, batch_trap_time: Duration::ZERO }
    }

    /// Drops the instance (if any), keeping the instance gauge right.
    fn drop_instance(&mut self) {
        if self.instance.take().is_some() {
            self.stage.stats.instances.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Between batches: moves to the published plugin version, if it changed.
    /// The whole next batch (bisection included) then runs on that version.
    fn follow_swaps(&mut self) {
        let Some(current) = self.stage.logic.version() else { return };
        if self.version.as_ref().is_none_or(|v| !Arc::ptr_eq(v, &current)) {
            self.version = Some(current);
            self.drop_instance();
        }
    }

    /// Processes work until the dispatcher closes the channel.
    pub(crate) fn run(mut self, mut input: mpsc::Receiver<Work>) {
        while let Some(work) = input.blocking_recv() {
            if self.stage.control.is_halted() {
                // Halted: process nothing more. Dropped work stays unacknowledged.
                continue;
            }
            self.follow_swaps();
            let seq = work.seq;
            // Per batch: one histogram sample and one clock pair.
            self.stage.batch_sizes.record(work.batch.messages.len() as f64);
            let started = Instant::now();
            let outputs = match self.stage.logic.world() {
                World::Processor => self.process(work),
                World::Aggregator => self.aggregate(work),
            };
            self.stage.stats.busy_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match outputs {
                Ok(outputs) => self.deliver(seq, outputs),
                Err(Fatal(reason)) => self.stage.control.halt(format!("stage `{}`: {reason}", self.stage.context.name)),
            }
        }
    }

    fn deliver(&self, seq: u64, outputs: Outputs) {
        match &self.stage.sequencer {
            Some(sequencer) => {
                let _ = sequencer.blocking_send((seq, outputs));
            }
            None => self.stage.downstream.deliver_blocking(outputs),
        }
    }

    fn instance(&mut self) -> Result<&mut Runner> {
        if self.instance.is_none() {
            let instance = self
                .stage
                .logic
                .start(self.version.as_deref(), self.stage.context.clone())
                .map_err(|e| Fatal(format!("cannot start a fresh plugin instance: {e}")))?;
            self.instance = Some(instance);
            self.stage.stats.instances.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.instance.as_mut().expect("just set"))
    }

    fn process(&mut self, work: Work) -> Result<Outputs> {
        let Batch { messages, tokens, .. } = work.batch;
        self.batch_trap_time = Duration::ZERO;
        let mut resolved = self.isolate(&messages)?;
        if self.stage.policy.on_error == OnError::Retry {
            self.retry_failed(&messages, &mut resolved)?;
        }

        let mut outputs = Outputs::default();
        let mut failures = Failures::default();
        let mut processed = 0;
        let mut filtered = 0;
        for ((message, token), outcome) in messages.into_iter().zip(tokens).zip(resolved) {
            let outs = match outcome {
                Outcome::Keep => {
                    processed += 1;
                    outputs.push(message, token, None);
                    continue;
                }
                Outcome::Fail(reason) => {
                    failures.push(message, token, reason);
                    continue;
                }
                Outcome::Emit(outs) => match self.check_routes(outs) {
                    Ok(outs) => outs,
                    Err(reason) => {
                        failures.push(message, token, reason);
                        continue;
                    }
                },
            };
            processed += 1;
            match outs.len() {
                0 => {
                    filtered += 1;
                    token.done(1)
                }
                n => token.add(n - 1),
            }
            for output in outs {
                let (message, route) = output.into_parts();
                let route = route.and_then(|r| self.stage.downstream.route(&r));
                outputs.push(message, token.clone(), route);
            }
        }
        self.stage.stats.processed.fetch_add(processed, Ordering::Relaxed);
        self.stage.stats.filtered.fetch_add(filtered, Ordering::Relaxed);
        self.apply_policy(failures)?;
        Ok(outputs)
    }

    /// Outputs routed to a name no sink has are a failure of their input.
    fn check_routes(&self, outputs: Vec<Output>) -> std::result::Result<Vec<Output>, String> {
        match outputs.iter().filter_map(|o| o.route.as_deref()).find(|r| self.stage.downstream.route(r).is_none()) {
            Some(route) => Err(format!("output routed to `{route}`, but no sink has route = \"{route}\"")),
            None => Ok(outputs),
        }
    }

    /// Runs `messages` through the plugin; on a trap, bisects until the
    /// trapping messages are alone. One outcome per message, by position.
    fn isolate(&mut self, messages: &[Message]) -> Result<Vec<Outcome>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let result = self.instance()?.process(messages);
        self.stage.call_seconds.record(started.elapsed());
        match result {
            Ok(outcomes) => Ok(outcomes),
            Err(InstanceError::Trap(reason)) => {
                self.discard_instance(&reason, messages.len());
                self.batch_trap_time += started.elapsed();
                if messages.len() == 1 {
                    return Ok(vec![Outcome::Fail(reason)]);
                }
                let budget = self.stage.context.limits.deadline.saturating_mul(TRAP_BUDGET_DEADLINES);
                if self.batch_trap_time >= budget {
                    let reason = format!(
                        "{reason} (not isolated: this batch spent {:.1?} in calls that trapped, the budget of \
                         {TRAP_BUDGET_DEADLINES} deadlines, so these {} messages fail together)",
                        self.batch_trap_time,
                        messages.len()
                    );
                    return Ok(vec![Outcome::Fail(reason); messages.len()]);
                }
                let (left, right) = messages.split_at(messages.len() / 2);
                let mut resolved = self.isolate(left)?;
                resolved.extend(self.isolate(right)?);
                Ok(resolved)
            }
            // The plugin answered, but not in a way that says which message
            // is at fault: the whole batch fails.
            Err(InstanceError::Contract(reason)) => {
                tracing::warn!(stage = &*self.stage.context.name, batch = messages.len(), "{reason}");
                Ok(vec![Outcome::Fail(reason); messages.len()])
            }
            Err(other) => Err(Fatal(other.to_string())),
        }
    }

    fn discard_instance(&mut self, reason: &str, batch: usize) {
        self.stage.stats.traps.fetch_add(1, Ordering::Relaxed);
        self.stage.stats.trap_kinds[TrapKind::of(reason).index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(stage = &*self.stage.context.name, batch, "instance trapped, replacing it: {reason}");
        self.drop_instance();
    }

    /// `retry`: runs the failed messages again, with exponential backoff.
    fn retry_failed(&mut self, messages: &[Message], resolved: &mut [Outcome]) -> Result<()> {
        let policy = self.stage.policy;
        for attempt in 0..policy.retries {
            let failed: Vec<usize> = (0..resolved.len()).filter(|&i| matches!(resolved[i], Outcome::Fail(_))).collect();
            if failed.is_empty() || self.stage.control.is_halted() {
                break;
            }
            std::thread::sleep(policy.backoff.saturating_mul(1 << attempt.min(16)));
            self.stage.stats.retries.fetch_add(failed.len() as u64, Ordering::Relaxed);
            // Failures are rare: copying the failed messages is fine here.
            let again: Vec<Message> = failed.iter().map(|&i| messages[i].clone()).collect();
            for (i, result) in failed.into_iter().zip(self.isolate(&again)?) {
                resolved[i] = result;
            }
        }
        Ok(())
    }

    fn apply_policy(&self, failures: Failures) -> Result<()> {
        if failures.messages.is_empty() {
            return Ok(());
        }
        let stage = &self.stage.context.name;
        match self.stage.policy.final_action() {
            OnError::DeadLetter => {
                self.stage.stats.dead_lettered.fetch_add(failures.messages.len() as u64, Ordering::Relaxed);
                for reason in &failures.reasons {
                    tracing::warn!(stage = &**stage, "message dead-lettered: {reason}");
                }
                let batch = Batch { messages: failures.messages, tokens: failures.tokens, route: None };
                self.stage.dead_letter.send_blocking(batch, failures.reasons, stage);
            }
            OnError::Skip => {
                self.stage.stats.skipped.fetch_add(failures.messages.len() as u64, Ordering::Relaxed);
                for (token, reason) in failures.tokens.iter().zip(&failures.reasons) {
                    tracing::warn!(stage = &**stage, "message skipped: {reason}");
                    token.done(1);
                }
            }
            OnError::Halt | OnError::Retry => {
                return Err(Fatal(format!("a message failed: {}", failures.reasons[0])));
            }
        }
        Ok(())
    }

    fn aggregate(&mut self, work: Work) -> Result<Outputs> {
        let Batch { messages, tokens, .. } = work.batch;
        let attempts = if self.stage.policy.on_error == OnError::Retry { self.stage.policy.retries + 1 } else { 1 };
        let mut last_error = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(self.stage.policy.backoff.saturating_mul(1 << (attempt - 1).min(16)));
                self.stage.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let started = Instant::now();
            let result = self.instance()?.process_batch(work.group.as_deref(), &messages);
            self.stage.call_seconds.record(started.elapsed());
            let outs = match result {
                Ok(Ok(outs)) => outs,
                Ok(Err(reason)) => {
                    last_error = reason;
                    continue;
                }
                Err(InstanceError::Trap(reason)) => {
                    self.discard_instance(&reason, messages.len());
                    last_error = reason;
                    continue;
                }
                Err(InstanceError::Contract(reason)) => {
                    last_error = reason;
                    continue;
                }
                Err(other) => return Err(Fatal(other.to_string())),
            };
            let outs = match self.check_routes(outs) {
                Ok(outs) => outs,
                Err(reason) => {
                    last_error = reason;
                    break;
                }
            };
            self.stage.stats.processed.fetch_add(messages.len() as u64, Ordering::Relaxed);
            // Every output derives from the whole batch: the inputs are done
            // when all outputs are.
            let group = AckToken::group(tokens, outs.len());
            let mut outputs = Outputs::default();
            for output in outs {
                let (message, route) = output.into_parts();
                let route = route.and_then(|r| self.stage.downstream.route(&r));
                outputs.push(message, group.clone(), route);
            }
            return Ok(outputs);
        }
        // All-or-nothing: every message of the batch gets the policy.
        let mut failures = Failures::default();
        for (message, token) in messages.into_iter().zip(tokens) {
            failures.push(message, token, format!("aggregator failed the batch: {last_error}"));
        }
        self.apply_policy(failures)?;
        Ok(Outputs::default())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.drop_instance();
        self.stage.stats.workers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Failures {
    messages: Vec<Message>,
    tokens: Vec<AckToken>,
    reasons: Vec<String>,
}

impl Failures {
    fn push(&mut self, message: Message, token: AckToken, reason: String) {
        self.messages.push(message);
        self.tokens.push(token);
        self.reasons.push(reason);
    }
}

/// `ordered = true`: releases each work item's outputs in dispatch order.
pub(crate) async fn sequence(mut input: mpsc::Receiver<(u64, Outputs)>, downstream: Downstream) {
    let mut pending = std::collections::BTreeMap::new();
    let mut next = 0u64;
    while let Some((seq, outputs)) = input.recv().await {
        pending.insert(seq, outputs);
        while let Some(outputs) = pending.remove(&next) {
            downstream.deliver(outputs).await;
            next += 1;
        }
    }
}
