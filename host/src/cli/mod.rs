//! The `weir` command line.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or config error.

mod build;
mod check;
mod new;
mod progress;
mod relay;
mod run;
mod state;
mod test;
mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the run failed (halt, broken connector, ...).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code: bad usage, bad pipeline file, refused plugin.
pub const EXIT_USAGE: i32 = 2;

/// weir: stream processing with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `debug` or `weir=debug`. Also WEIR_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    /// Log line format: `text` for people, `json` (one object per line,
    /// for log shippers). Also WEIR_LOG_FORMAT.
    #[arg(long, global = true, value_enum, env = "WEIR_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Never install a missing plugin toolchain (the wasm32-wasip2 target,
    /// componentize-py, the JS toolchain): refuse with the command to run
    /// instead. Also WEIR_NO_PROVISION=1.
    #[arg(long, global = true)]
    no_provision: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline file until its sources end or it is stopped (Ctrl-C).
    Run {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// Run a pipeline, rebuilding and hot-swapping each stage's plugin when
    /// its source (or .wasm) changes.
    Dev {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// A live view of a running pipeline: per source, stage and sink, the
    /// messages in and out per second, totals, errors and lag, read from the
    /// admin API's /metrics once a second. `q` quits.
    Top {
        /// The admin listener (`[admin] listen`).
        #[arg(default_value = crate::admin::DEFAULT_LISTEN, value_name = "ADDR")]
        addr: String,
    },
    /// Check a plugin: the world it implements, its exports and imports.
    Check {
        /// A .wasm component.
        plugin: PathBuf,
    },
    /// Build a plugin source folder into a .wasm component.
    Build {
        /// The plugin folder: a Rust crate (Cargo.toml), a Python module
        /// (app.py or pyproject.toml) or a JavaScript module (package.json).
        dir: PathBuf,
        /// Which form of the world an SDK plugin is built against: `packed`
        /// (one buffer per batch, the default) or `record` (typed WIT records).
        #[arg(long, value_enum, default_value_t = AbiArg::Packed)]
        abi: AbiArg,
        /// JavaScript only: compile ahead of time with componentize-js `--aot`
        /// (needs weval), into NAME.aot.wasm.
        #[arg(long)]
        aot: bool,
    },
    /// Create a plugin folder: a working processor, a test fixture and a
    /// pipeline file.
    New {
        /// The folder to create; its name is the plugin's name.
        name: PathBuf,
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: new::Lang,
    },
    /// Run a plugin over fixture files (no connectors) and compare its
    /// outputs with the expected ones; exit 1 with a diff on mismatch.
    Test {
        /// A .wasm component or a plugin folder (built first).
        plugin: PathBuf,
        /// Input messages, ndjson envelopes.
        #[arg(long, value_name = "IN.ndjson")]
        input: PathBuf,
        /// Expected outputs, one line each; `{"fail": "reason"}` for a failed input.
        #[arg(long, value_name = "OUT.ndjson")]
        expect: PathBuf,
        /// A config entry for the plugin's init (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Inspect or reset the saved state of a pipeline's stages.
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
    /// Move messages from one connector to another, optionally through a
    /// plugin: a one-line pipeline, e.g.
    /// `weir relay --input file:///in.ndjson --output redis://127.0.0.1:6379/events`.
    Relay {
        /// Source URI (file://, stdio://, gen://, redis://, ...).
        #[arg(long, value_name = "URI")]
        input: String,
        /// Sink URI (file://, stdio://, redis://, null://, ...).
        #[arg(long, value_name = "URI")]
        output: String,
        /// A processor stage: a .wasm component or a plugin source folder.
        #[arg(long, value_name = "PLUGIN")]
        plugin: Option<PathBuf>,
        /// Line format of file/stdio connectors (default ndjson).
        #[arg(long, value_name = "FORMAT", value_parser = ["raw", "ndjson"])]
        format: Option<String>,
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    init_logging(cli.log.as_deref(), cli.log_format);
    crate::plugin::toolchain::set_provisioning(!cli.no_provision);
    match cli.command {
        Command::Run { file } => run::run(&file, false),
        Command::Dev { file } => run::run(&file, true),
        Command::Top { addr } => top::top(&addr),
        Command::Check { plugin } => check::check(&plugin),
        Command::Build { dir, abi, aot } => build::build(&dir, abi.into(), aot),
        Command::New { name, lang } => new::new(&name, lang),
        Command::Test { plugin, input, expect, config } => test::test(&plugin, &input, &expect, &config),
        Command::State { command } => state::state(command),
        Command::Relay { input, output, plugin, format } => {
            relay::relay(&relay::RelayArgs { input, output, plugin, format })
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO message key=value`, coloured on a terminal.
    Text,
    /// `{"timestamp":..,"level":"INFO","target":..,"message":..,"stage":..}` per line.
    Json,
}

fn init_logging(filter: Option<&str>, format: LogFormat) {
    let _ = LOG_FORMAT.set(format);
    let filter =
        filter.map(str::to_string).or_else(|| std::env::var("WEIR_LOG").ok()).unwrap_or_else(|| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("weir: ignoring log filter `{filter}`: {e}");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).init(),
        // Event fields (message, stage, source, sink, ...) at the top level
        // of each object, so a shipper needs no nested paths.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

/// Prints an error the way every weir command does.
fn report_error(message: impl std::fmt::Display) {
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        // One JSON object per line, errors included.
        tracing::error!(target: "weir", "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// Whether log lines are JSON (no progress line then: a log shipper reads stderr).
fn json_logs() -> bool {
    LOG_FORMAT.get() == Some(&LogFormat::Json)
}

/// The log format chosen at start, for [`report_error`].
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// `weir build --abi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AbiArg {
    /// The packed worlds (`processor-packed`, `aggregator-packed`).
    Packed,
    /// The record worlds (`processor`, `aggregator`).
    Record,
}

impl From<AbiArg> for crate::plugin::build::Abi {
    fn from(abi: AbiArg) -> Self {
        match abi {
            AbiArg::Packed => crate::plugin::build::Abi::Packed,
            AbiArg::Record => crate::plugin::build::Abi::Record,
        }
    }
}
