//! `weir run FILE`.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, report_error};
use crate::config::PipelineConfig;
use crate::pipeline::{Pipeline, RunReport};
use crate::plugin::Runtime;
use crate::plugin::swap::{HotPlugin, Reloaded};
use crate::plugin::watch;

/// `weir run` (`dev = false`) and `weir dev` (`dev = true`: every stage's
/// plugin origin is watched, rebuilt and hot-swapped, one line per swap).
pub(super) fn run(file: &Path, dev: bool) -> i32 {
    let config = match PipelineConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            report_error(e);
            return EXIT_USAGE;
        }
    };
    run_config(&config, Some(file), dev)
}

/// Runs a loaded pipeline (from `file`, when it came from one): everything
/// `weir run` does after reading its file, shared with `weir relay`.
pub(super) fn run_config(config: &PipelineConfig, file: Option<&Path>, dev: bool) -> i32 {
    let runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            report_error(format!("{e:#}"));
            return EXIT_RUNTIME;
        }
    };
    let pipeline = match Pipeline::prepare(config, &runtime) {
        Ok(p) => p,
        Err(mut e) => {
            match file {
                Some(file) => {
                    e.file.get_or_insert_with(|| file.to_path_buf());
                }
                // A pipeline built in memory: its line numbers mean nothing.
                None => e.line = None,
            }
            report_error(e);
            return EXIT_USAGE;
        }
    };
    let admin = match config.admin.as_ref().map(|a| {
        std::net::TcpListener::bind(a.listen.get_ref()).and_then(|l| l.set_nonblocking(true).map(|()| l)).map_err(|e| {
            config.error_at(&a.listen, format!("[admin] listen: cannot listen on {}: {e}", a.listen.get_ref()))
        })
    }) {
        Some(Err(mut e)) => {
            e.file = file.map(Path::to_path_buf);
            report_error(e);
            return EXIT_USAGE;
        }
        Some(Ok(listener)) => Some(listener),
        None => None,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("weir-io").build();
    let tokio = match tokio {
        Ok(t) => t,
        Err(e) => {
            report_error(format!("cannot start the async runtime: {e}"));
            return EXIT_RUNTIME;
        }
    };
    let report = tokio.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let hot = pipeline.hot_plugins();
        tokio::spawn(reload_on_hangup(hot.clone()));
        if let Some(listener) = admin {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tracing::info!(
                        "admin API on http://{}",
                        listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
                    );
                    tokio::spawn(crate::admin::serve(listener, hot.clone(), shutdown.clone()));
                }
                Err(e) => report_error(format!("admin listener: {e}")),
            }
        }
        let mut watches = Vec::new();
        for plugin in hot.iter().filter(|h| dev || pipeline.watched().iter().any(|w| w == h.stage())) {
            match watch::watch(plugin.clone(), print_reload) {
                Ok(guard) => watches.push(guard),
                Err(e) => report_error(format!("stage `{}`: cannot watch its plugin: {e:#}", plugin.stage())),
            }
        }
        let report = pipeline.run(shutdown).await;
        drop(watches);
        report
    });
    summarise(&report);
    if report.success() { EXIT_OK } else { EXIT_RUNTIME }
}

/// First SIGINT/SIGTERM: stop the sources, drain, commit, exit 0. Second:
/// exit at once, acknowledging nothing further.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("stopping: draining in-flight messages (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("weir: second signal, exiting without draining");
    std::process::exit(130);
}

/// SIGHUP: reload every stage's plugin from its configured path.
async fn reload_on_hangup(hot: Vec<Arc<HotPlugin>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading every stage's plugin");
        for plugin in &hot {
            let plugin = plugin.clone();
            let _ = tokio::task::spawn_blocking(move || print_reload(&plugin, plugin.reload())).await;
        }
    }
}

/// One line per swap attempt, for the person at the terminal.
fn print_reload(hot: &HotPlugin, result: Result<Option<Reloaded>, String>) {
    match result {
        Ok(Some(r)) => eprintln!(
            "weir: stage `{}` swapped {} → {} (build {:.1?}, swap {:.1?})",
            hot.stage(),
            r.swapped.from,
            r.swapped.to,
            r.build,
            r.swapped.prepare
        ),
        Ok(None) => tracing::debug!(stage = hot.stage(), "plugin unchanged"),
        Err(reason) => eprintln!(
            "weir: stage `{}` keeps running {}: the new version was refused: {reason}",
            hot.stage(),
            hot.current().version()
        ),
    }
}

fn summarise(report: &RunReport) {
    let sinks: Vec<String> = report.sinks.iter().map(|(name, n)| format!("{name}={n}")).collect();
    tracing::info!("run finished: written [{}], dead-lettered {}", sinks.join(", "), report.dead_lettered);
    for (stage, s) in &report.stages {
        tracing::info!(stage, processed = s.processed, dead_lettered = s.dead_lettered, skipped = s.skipped, traps = s.traps, counters = ?s.counters, "stage summary");
    }
    if let Some(reason) = &report.halted {
        report_error(format!("pipeline halted: {reason}"));
    }
    for e in &report.errors {
        report_error(e);
    }
}
