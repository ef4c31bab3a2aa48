//! The live status line of `weir run` on a terminal: messages read and
//! written (with the share of the input read, when the sources are files),
//! the rate and the elapsed time, redrawn in place a few times a second.
//! Only when stderr is a terminal (not in pipes, files or CI logs).
//!
//! It reads the pipeline's counters through [`Telemetry::totals`], so it adds
//! no work on the data path.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::telemetry::{Telemetry, Totals};

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(250);
/// The rate is taken over this window, so it follows changes but does not jitter.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Whether a status line belongs on stderr: a terminal that can redraw a
/// line, with text logs, outside CI.
pub(super) fn wanted(json_logs: bool) -> bool {
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    std::io::stderr().is_terminal() && !json_logs && !dumb && !ci
}

/// Redraws the status line until dropped; then clears it.
pub(super) struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts redrawing from `telemetry`'s totals (on the current runtime).
    pub(super) fn start(telemetry: Arc<Telemetry>) -> Progress {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples: std::collections::VecDeque<(Instant, u64)> = Default::default();
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let now = Instant::now();
                let totals = telemetry.totals();
                samples.push_back((now, totals.read));
                while samples.len() > 2 && now.duration_since(samples[0].0) > RATE_WINDOW {
                    samples.pop_front();
                }
                let (at, read) = samples[0];
                let window = now.duration_since(at).as_secs_f64();
                let rate = if window > 0.0 { (totals.read - read) as f64 / window } else { 0.0 };
                // Drawn, then the cursor goes back to the line's start: a
                // log line written meanwhile overwrites it instead of
                // following it.
                let mut stderr = std::io::stderr().lock();
                let _ = write!(stderr, "\x1b[2K{}\r", line(&totals, rate, now.duration_since(started)));
                let _ = stderr.flush();
            }
        });
        Progress { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\x1b[2K\r");
        let _ = stderr.flush();
    }
}

/// The status line's text.
fn line(totals: &Totals, rate: f64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let failed = if totals.failed > 0 { format!(" · failed {}", grouped(totals.failed)) } else { String::new() };
    let share = match totals.input {
        Some((read, size)) => format!(" ({}%)", (read.min(size) * 100 / size)),
        None => String::new(),
    };
    format!(
        "read {}{share} · written {}{failed} · {} msg/s · {:02}:{:02}:{:02}",
        grouped(totals.read),
        grouped(totals.written),
        grouped(rate.round() as u64),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_moved() {
        let totals = Totals { read: 1_234_567, read_bytes: 0, written: 999, failed: 0, input: None };
        assert_eq!(
            line(&totals, 4100.4, Duration::from_secs(3723)),
            "read 1,234,567 · written 999 · 4,100 msg/s · 01:02:03"
        );
        let totals = Totals { failed: 12, ..totals };
        assert!(line(&totals, 0.0, Duration::ZERO).contains(" · failed 12 · "));
        // Files of known size: the share read, rounded down (100% only at the end).
        let totals = Totals { input: Some((2_999, 3_000)), ..totals };
        assert!(line(&totals, 0.0, Duration::ZERO).starts_with("read 1,234,567 (99%) · written"));
        let totals = Totals { input: Some((3_000, 3_000)), ..totals };
        assert!(line(&totals, 0.0, Duration::ZERO).starts_with("read 1,234,567 (100%) · written"));
    }
}
