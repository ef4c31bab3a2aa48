//! Exponential backoff, shared by reconnecting sources and retrying sinks.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The usual first wait.
pub const FIRST: Duration = Duration::from_millis(100);
/// The usual longest wait.
pub const MAX: Duration = Duration::from_secs(5);

/// Waits that double from `first` up to `max`, reset after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s.
    fn default() -> Self {
        Backoff::new(FIRST, MAX)
    }
}

impl Backoff {
    /// Starts at `first` and doubles up to `max` (or `first`, if larger).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max: max.max(first), next: first }
    }

    /// The wait the next [`Backoff::next_delay`] returns.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The next wait, doubling the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        // A zero first wait still grows, so a retry loop never spins.
        self.next = (self.next * 2).max(Duration::from_millis(1)).min(self.max);
        delay
    }

    /// Back to the first wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next wait; `false` if `stop` fired meanwhile.
    pub async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn a_zero_first_wait_still_grows() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::from_secs(5));
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert_eq!(backoff.next_delay(), Duration::from_millis(1));
        assert_eq!(backoff.next_delay(), Duration::from_millis(2));
    }
}
