//! `weir run FILE`.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, report_error};
use crate::config::PipelineConfig;
use crate::pipeline::{Pipeline, RunReport};
use crate::plugin::Runtime;

pub(super) fn run(file: &Path) -> i32 {
    let config = match PipelineConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            report_error(e);
            return EXIT_USAGE;
        }
    };
    let runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            report_error(format!("{e:#}"));
            return EXIT_RUNTIME;
        }
    };
    let pipeline = match Pipeline::prepare(&config, &runtime) {
        Ok(p) => p,
        Err(mut e) => {
            e.file.get_or_insert_with(|| file.to_path_buf());
            report_error(e);
            return EXIT_USAGE;
        }
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
        pipeline.run(shutdown).await
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
