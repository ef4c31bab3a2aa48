//! `weir run FILE`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
        let access = a.token().map_err(|m| config.admin_error("token_env", format!("[admin]: {m}")))?;
        let access =
            crate::admin::Access { token: access, token_env: a.token_env().to_string(), max_body: a.max_body_bytes() };
        let listener =
            std::net::TcpListener::bind(a.listen()).and_then(|l| l.set_nonblocking(true).map(|()| l)).map_err(|e| {
                config.admin_error("listen", format!("[admin] listen: cannot listen on {}: {e}", a.listen()))
            })?;
        Ok::<_, crate::config::ConfigError>((listener, access))
    }) {
        Some(Err(mut e)) => {
            e.file = file.map(Path::to_path_buf);
            report_error(e);
            return EXIT_USAGE;
        }
        Some(Ok(admin)) => Some(admin),
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
    // The registry only holds handles to counters the engine keeps anyway:
    // the progress line and `GET /metrics` read it. `/metrics` lives on the
    // admin listener: without one, no recorder.
    let telemetry = crate::telemetry::Telemetry::new();
    telemetry.plugins(&pipeline.hot_plugins());
    let pipeline = pipeline.with_telemetry(telemetry.clone());
    let metrics = admin
        .as_ref()
        .and_then(|_| crate::telemetry::install())
        .map(|handle| crate::admin::Metrics { telemetry: telemetry.clone(), handle });
    let progress = super::progress::wanted(super::json_logs());
    let report = tokio.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone(), config.shutdown.drain_timeout()));
        let hot = pipeline.hot_plugins();
        tokio::spawn(reload_on_hangup(hot.clone()));
        if let Some((listener, access)) = admin {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    if access.token.is_none() {
                        tracing::info!(
                            "admin API on http://{addr}, read-only: set {} to allow swap and rollback",
                            access.token_env
                        );
                    } else if !crate::admin::is_loopback(&addr) {
                        tracing::warn!(
                            "admin API on http://{addr}: plain HTTP, the token crosses the network unencrypted; \
                             keep it on a trusted network or behind a TLS proxy"
                        );
                    } else {
                        tracing::info!("admin API on http://{addr}");
                    }
                    tokio::spawn(crate::admin::serve(listener, hot.clone(), access, metrics.clone(), shutdown.clone()));
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
        let progress = progress.then(|| super::progress::Progress::start(telemetry.clone()));
        let report = pipeline.run(shutdown).await;
        drop(progress);
        drop(watches);
        report
    });
    // A drain that timed out may leave a write stuck in the blocking pool:
    // do not wait for it.
    tokio.shutdown_timeout(Duration::from_secs(1));
    summarise(&report);
    if report.success() { EXIT_OK } else { EXIT_RUNTIME }
}

/// First SIGINT/SIGTERM: stop the sources, drain, commit, exit 0 (the
/// pipeline bounds the drain by `drain_timeout`; should it not return, this
/// exits 1 shortly after). Second: exit at once, acknowledging nothing further.
async fn watch_signals(shutdown: CancellationToken, drain_timeout: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!(
        "stopping: draining in-flight messages for at most {drain_timeout:?} (signal again to exit at once)"
    );
    shutdown.cancel();
    let last_resort = drain_timeout + Duration::from_secs(5);
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = tokio::time::sleep(last_resort) => {
            eprintln!("error: weir did not stop within {last_resort:?} of the signal; exiting without committing more");
            std::process::exit(super::EXIT_RUNTIME);
        }
    }
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

/// The process's peak resident memory (Linux `VmHWM`), in MiB.
fn peak_memory_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

fn summarise(report: &RunReport) {
    let sinks: Vec<String> = report.sinks.iter().map(|(name, n)| format!("{name}={n}")).collect();
    let peak = peak_memory_mib().map_or_else(String::new, |mib| format!(", peak memory {mib} MiB"));
    tracing::info!("run finished: written [{}], dead-lettered {}{peak}", sinks.join(", "), report.dead_lettered);
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
