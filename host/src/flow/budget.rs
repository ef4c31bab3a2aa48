//! The in-flight budget: how many bytes of source messages the pipeline may
//! hold between reading them and acknowledging them.
//!
//! Channels bound the number of batches in flight, not their size: with
//! large messages a few batches per channel can be gigabytes. Every source
//! batch therefore reserves its bytes here before it is handed on, and the
//! reservation travels with the batch's [`AckToken`], returning when the
//! last message of the batch is finished and dropped. Sources wait while the
//! budget is spent, which is backpressure measured in bytes.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::message::Message;

/// The budget is counted in KiB, so that a `u32` permit count covers any
/// batch.
const UNIT: usize = 1024;

/// Bytes of source messages in flight, shared by every source of a pipeline.
#[derive(Clone, Debug)]
pub struct InFlightBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl InFlightBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: usize) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).max(1);
        InFlightBudget { units: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// Waits until `bytes` fit, then reserves them. A batch larger than the
    /// whole budget waits for all of it and then runs alone.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).clamp(1, self.total_units);
        let permit =
            self.units.clone().acquire_many_owned(units).await.expect("the budget's semaphore is never closed");
        Reservation { _permit: permit }
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        (self.total_units as usize - self.units.available_permits()) * UNIT
    }
}

/// What `messages` weigh against the budget.
pub fn weigh(messages: &[Message]) -> usize {
    messages.iter().map(Message::size).sum()
}

/// Bytes reserved by one source batch; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn message(bytes: usize) -> Message {
        Message::from_value(vec![0; bytes])
    }

    #[tokio::test]
    async fn sources_wait_until_reserved_bytes_come_back() {
        let budget = InFlightBudget::new(10 * UNIT);
        let first = budget.reserve(weigh(&[message(6 * UNIT)])).await;
        assert_eq!(budget.in_use(), 6 * UNIT);
        let second = budget.reserve(5 * UNIT);
        tokio::pin!(second);
        assert!(second.as_mut().now_or_never().is_none(), "over budget: must wait");
        drop(first);
        let _second = second.await;
        assert_eq!(budget.in_use(), 5 * UNIT);
        // Larger than the whole budget: waits for all of it, then runs.
        drop(_second);
        let huge = budget.reserve(100 * UNIT).await;
        assert_eq!(budget.in_use(), 10 * UNIT);
        drop(huge);
        assert_eq!(budget.in_use(), 0);
    }
}
