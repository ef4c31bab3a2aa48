//! `weir state list|show|reset PIPELINE`: inspect and reset the saved state
//! of a pipeline's stages (not while that pipeline runs: the store is
//! locked by it, and the command says so).

use std::path::Path;

use base64::Engine;

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, report_error};
use crate::config::PipelineConfig;
use crate::store::StateStore;

/// What to do with the state.
#[derive(Debug, clap::Subcommand)]
pub(super) enum StateCommand {
    /// One line per stage: keys and bytes of saved state.
    List {
        /// The pipeline file (TOML).
        file: std::path::PathBuf,
    },
    /// A stage's saved entries, one ndjson line each (`key`/`value` as text,
    /// or `key_b64`/`value_b64` when not UTF-8), sorted by key.
    Show {
        /// The pipeline file (TOML).
        file: std::path::PathBuf,
        /// The stage.
        stage: String,
        /// Print at most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Deletes a stage's saved state (the next run starts it empty), and
    /// with `--positions` the source positions the last checkpoint recorded
    /// (the next run starts where the brokers' committed positions say).
    Reset {
        /// The pipeline file (TOML).
        file: std::path::PathBuf,
        /// The stage.
        #[arg(required_unless_present = "positions")]
        stage: Option<String>,
        /// Also forget the recorded source positions.
        #[arg(long)]
        positions: bool,
    },
}

pub(super) fn state(command: StateCommand) -> i32 {
    let file = match &command {
        StateCommand::List { file } | StateCommand::Show { file, .. } | StateCommand::Reset { file, .. } => file,
    };
    let (config, store) = match open(file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let known = |stage: &str| config.stages.iter().any(|s| s.name == stage);
    let result = match command {
        StateCommand::List { .. } => store
            .stages()
            .map(|summaries| {
                for stage in &config.stages {
                    let summary = summaries.iter().find(|s| s.stage == stage.name);
                    let (keys, bytes) = summary.map_or((0, 0), |s| (s.keys, s.bytes));
                    println!("{}\t{keys} keys\t{bytes} bytes", stage.name);
                }
                // State of stages no longer in the file is still shown (and
                // can be reset).
                for summary in summaries.iter().filter(|s| !known(&s.stage)) {
                    println!(
                        "{}\t{} keys\t{} bytes\t(not in the pipeline file)",
                        summary.stage, summary.keys, summary.bytes
                    );
                }
            })
            .and_then(|()| store.all_positions())
            .map(|positions| {
                // Where the last checkpoint left each source (re-applied on restart).
                for record in positions {
                    let value = record.value.unwrap_or_default();
                    let shown = match std::str::from_utf8(&value) {
                        Ok(text) if text.len() <= 64 => text.to_string(),
                        _ => format!("{} bytes", value.len()),
                    };
                    let part = if record.key.is_empty() { String::new() } else { format!(" {}", record.key) };
                    println!("source {}{part}\tcheckpoint position {shown}", record.source);
                }
            }),
        StateCommand::Show { stage, limit, .. } => store.load(&stage).map(|entries| {
            let mut entries: Vec<_> = entries.into_iter().collect();
            entries.sort();
            for (key, value) in entries.iter().take(limit) {
                let mut line = serde_json::Map::new();
                put(&mut line, "key", key);
                put(&mut line, "value", value);
                println!("{}", serde_json::Value::Object(line));
            }
            if entries.len() > limit {
                eprintln!("({} more entries; raise --limit to see them)", entries.len() - limit);
            }
        }),
        StateCommand::Reset { stage, positions, .. } => stage
            .map_or(Ok(()), |stage| {
                store.reset(&stage).map(|keys| {
                    println!("stage `{stage}`: deleted {keys} keys from {}", store.file().display());
                })
            })
            .and_then(|()| match positions {
                true => store.reset_positions().map(|count| {
                    println!("forgot {count} recorded source positions in {}", store.file().display());
                }),
                false => Ok(()),
            }),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            report_error(e);
            EXIT_RUNTIME
        }
    }
}

fn open(file: &Path) -> Result<(PipelineConfig, StateStore), i32> {
    let config = PipelineConfig::load(file).map_err(|e| {
        report_error(e);
        EXIT_USAGE
    })?;
    let store = StateStore::open(&config.state_dir()).map_err(|e| {
        report_error(e);
        EXIT_RUNTIME
    })?;
    Ok((config, store))
}

/// `name`: the bytes as text, or `name_b64` when they are not UTF-8.
fn put(line: &mut serde_json::Map<String, serde_json::Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => line.insert(name.to_string(), text.into()),
        Err(_) => line.insert(format!("{name}_b64"), base64::engine::general_purpose::STANDARD.encode(bytes).into()),
    };
}
