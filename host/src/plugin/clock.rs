//! The guest's monotonic clock, with sleeps that end at the call's deadline.
//!
//! A CPU deadline is enforced by epoch interruption, which only fires while
//! guest code runs: a guest blocked in a host call (a WASI sleep, i.e.
//! `poll` on a clock pollable) would otherwise hold its instance, and
//! shutdown, for as long as it asked. Here every clock subscription is cut
//! short at the current call's deadline, and the call is marked as cut: it
//! then ends as a deadline trap whatever the guest does after waking (the
//! epoch clock alone would race the guest's wake-up on a busy machine, and a
//! guest that woke first could finish a call that ran past its deadline).

use std::time::{Duration, Instant};

use wasmtime::component::Resource;
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::{self, Host};

use super::instance::InstanceState;

/// Slack past the deadline, so that the epoch has moved on when the guest
/// wakes (the epoch clock ticks every few milliseconds).
const WAKE_SLACK: Duration = Duration::from_millis(20);

/// When the running call must have ended, if a call runs, and whether a
/// sleep of it was cut at that point.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallDeadline {
    at: Option<Instant>,
    cut: bool,
}

impl CallDeadline {
    /// Starts a call that may run for `budget`.
    pub(crate) fn start(budget: Duration) -> Self {
        CallDeadline { at: Instant::now().checked_add(budget + WAKE_SLACK), cut: false }
    }

    /// `requested`, cut short at the deadline (and then remembered as cut).
    fn clamp(&mut self, requested: Duration) -> Duration {
        match self.at {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                self.cut |= requested > left;
                requested.min(left)
            }
            None => requested,
        }
    }

    /// Whether a sleep of this call was cut at the deadline: the call then
    /// ran past it, whatever it returned. Clears the mark.
    pub(crate) fn take_cut(&mut self) -> bool {
        std::mem::take(&mut self.cut)
    }
}

impl Host for InstanceState {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.clocks().now()
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.clocks().resolution()
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.clocks().now()?;
        self.subscribe_duration(when.saturating_sub(now))
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let clamped = self.call_deadline_mut().clamp(Duration::from_nanos(duration));
        let nanos = u64::try_from(clamped.as_nanos()).unwrap_or(u64::MAX);
        self.clocks().subscribe_duration(nanos)
    }
}

/// Replaces WASI's monotonic clock in `linker` with the deadline-aware one.
pub(crate) fn add_to_linker(linker: &mut wasmtime::component::Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result =
        monotonic_clock::add_to_linker::<InstanceState, wasmtime::component::HasSelf<InstanceState>>(linker, |s| s);
    linker.allow_shadowing(false);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_end_at_the_deadline_and_only_during_a_call() {
        let mut idle = CallDeadline::default();
        assert_eq!(idle.clamp(Duration::from_secs(3600)), Duration::from_secs(3600));
        assert!(!idle.take_cut());
        let mut call = CallDeadline::start(Duration::from_millis(100));
        assert_eq!(call.clamp(Duration::from_millis(1)), Duration::from_millis(1));
        assert!(!call.take_cut(), "a sleep that fits is not cut");
        let clamped = call.clamp(Duration::from_secs(3600));
        assert!(clamped <= Duration::from_millis(100) + WAKE_SLACK, "{clamped:?}");
        assert!(call.take_cut(), "a sleep past the deadline is cut");
        assert!(!call.take_cut(), "taking the mark clears it");
    }
}
