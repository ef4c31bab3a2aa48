//! Run control shared by every task: stop (signal or end of input) and halt
//! (a failure under `on_error = "halt"`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Shared run state.
#[derive(Clone)]
pub struct Control {
    shutdown: CancellationToken,
    halted: Arc<AtomicBool>,
    /// Fires on halt, to wake whoever waits for work that will now never finish.
    halt_signal: CancellationToken,
    halt_reason: Arc<Mutex<Option<String>>>,
}

impl Control {
    /// Control for a run stopped by `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Control { shutdown, halted: Arc::default(), halt_signal: CancellationToken::new(), halt_reason: Arc::default() }
    }

    /// Fires when sources must stop reading.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The flag ack trackers watch.
    pub fn halted_flag(&self) -> Arc<AtomicBool> {
        self.halted.clone()
    }

    /// Fires when the pipeline halts.
    pub fn halt_signal(&self) -> &CancellationToken {
        &self.halt_signal
    }

    /// Whether the pipeline halted.
    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Halts: nothing more is acknowledged, sources stop, the run fails with
    /// `reason` (the first reason wins).
    pub fn halt(&self, reason: String) {
        {
            let mut slot = self.halt_reason.lock();
            if slot.is_none() {
                tracing::error!("halting the pipeline: {reason}");
                *slot = Some(reason);
            }
        }
        self.halted.store(true, Ordering::Release);
        self.halt_signal.cancel();
        self.shutdown.cancel();
    }

    /// The drain gave up: nothing more is acknowledged and whoever waits for
    /// work is woken, without a halt reason (the caller reports why).
    pub fn abandon(&self) {
        self.halted.store(true, Ordering::Release);
        self.halt_signal.cancel();
        self.shutdown.cancel();
    }

    /// Why the pipeline halted, if it did.
    pub fn halt_reason(&self) -> Option<String> {
        self.halt_reason.lock().clone()
    }
}
