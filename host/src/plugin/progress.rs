//! Progress of long steps (a plugin build, a first compile, a toolchain
//! install): a spinner with the step and its running time on a terminal,
//! then one line saying how long it took.
//!
//! Off a terminal (CI logs, pipes) there is no spinner: the start and end
//! lines alone, so logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// One long step in progress. Finish it with [`Step::done`]; dropped
/// without that (an error), the spinner is cleared and nothing is claimed.
pub struct Step {
    what: String,
    /// What the end line says before its time (`what` unless set).
    ending: Option<String>,
    started: Instant,
    spinner: Option<ProgressBar>,
    /// Whether the start and end lines go to the log (`weir run`, where
    /// `--log-format json` must hold) rather than plain to stderr.
    logged: bool,
}

impl Step {
    /// Starts a step: `what` says what is happening ("building greet with
    /// componentize-py").
    pub fn start(what: impl Into<String>) -> Step {
        Step::begin(what.into(), false)
    }

    /// [`Step::start`], with the start and end lines written as log events.
    pub fn start_logged(what: impl Into<String>) -> Step {
        Step::begin(what.into(), true)
    }

    fn begin(what: String, logged: bool) -> Step {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner().with_message(what.clone());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        if logged {
            tracing::info!("{what}");
        } else if spinner.is_none() {
            eprintln!("{what} ...");
        }
        Step { what, ending: None, started: Instant::now(), spinner, logged }
    }

    /// Words the end line as `ending` ("compiled X") rather than the start's.
    pub fn ending(mut self, ending: impl Into<String>) -> Step {
        self.ending = Some(ending.into());
        self
    }

    /// Prints a line (a tool's output) above the spinner.
    pub fn println(&self, line: &str) {
        match &self.spinner {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Ends the step with one line saying how long it took, and returns that.
    pub fn done(self) -> Duration {
        let took = self.started.elapsed();
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
        let line = match &self.ending {
            Some(ending) => format!("{ending} in {}", seconds(took)),
            None => format!("{}: done in {}", self.what, seconds(took)),
        };
        match self.logged {
            true => tracing::info!("{line}"),
            false => eprintln!("{line}"),
        }
        took
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
    }
}

/// `1.2s`, `25s`: what a person reads at a glance.
pub fn seconds(took: Duration) -> String {
    if took < Duration::from_secs(10) { format!("{:.1}s", took.as_secs_f64()) } else { format!("{}s", took.as_secs()) }
}
