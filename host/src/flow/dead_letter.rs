//! The dead letter: failed messages, unchanged, plus the headers
//! `weir-error` (the reason) and `weir-stage` (where it failed).

use tokio::sync::mpsc;

use super::batch::Batch;
use super::control::Control;

/// Header carrying the failure reason.
pub const ERROR_HEADER: &str = "weir-error";
/// Header carrying the stage (or source) name.
pub const STAGE_HEADER: &str = "weir-stage";

/// A handle to the dead-letter sink, or to its absence.
#[derive(Clone)]
pub struct DeadLetter {
    sender: Option<mpsc::Sender<Batch>>,
    control: Control,
}

impl DeadLetter {
    pub(crate) fn new(sender: Option<mpsc::Sender<Batch>>, control: Control) -> Self {
        DeadLetter { sender, control }
    }

    fn prepare(&self, mut batch: Batch, reasons: Vec<String>, stage: &str) -> Option<Batch> {
        if self.sender.is_none() {
            // Validation only allows dead-letter policies with a dead letter;
            // this is a source's undecodable input with nowhere to go.
            let reason = reasons.into_iter().next().unwrap_or_default();
            self.control
                .halt(format!("{stage}: {reason} (configure [dead_letter] to keep such messages and continue)"));
            return None;
        }
        for (message, reason) in batch.messages.iter_mut().zip(reasons) {
            message.set_header(ERROR_HEADER, reason);
            message.set_header(STAGE_HEADER, stage);
        }
        Some(batch)
    }

    /// Sends from a worker thread. `reasons[i]` is why `batch.messages[i]` failed.
    pub fn send_blocking(&self, batch: Batch, reasons: Vec<String>, stage: &str) {
        if batch.is_empty() {
            return;
        }
        if let (Some(batch), Some(sender)) = (self.prepare(batch, reasons, stage), &self.sender) {
            // A closed channel means the run is being torn down: the messages
            // stay unacknowledged and will be redelivered.
            let _ = sender.blocking_send(batch);
        }
    }

    /// Sends from a task.
    pub async fn send_async(&self, batch: Batch, reasons: Vec<String>, stage: &str) {
        if let (Some(batch), Some(sender)) = (self.prepare(batch, reasons, stage), &self.sender) {
            let _ = sender.send(batch).await;
        }
    }
}
