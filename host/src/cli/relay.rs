//! `weir relay --input URI --output URI [--plugin P] [--format F]`: a
//! one-line pipeline (one source, an optional processor stage, one sink),
//! run exactly like `weir run` runs a file.

use std::path::{Path, PathBuf};

use super::{EXIT_USAGE, report_error};
use crate::config::PipelineConfig;

/// What `weir relay` was asked.
#[derive(Debug, Clone)]
pub(super) struct RelayArgs {
    pub input: String,
    pub output: String,
    pub plugin: Option<PathBuf>,
    pub format: Option<String>,
}

/// The pipeline text `weir relay` runs.
pub(super) fn pipeline_text(args: &RelayArgs) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let format = args.format.as_deref().map(|f| format!("format = {}\n", quote(f))).unwrap_or_default();
    let mut text = format!("[[source]]\nname = \"input\"\nuri = {}\n{format}", quote(&args.input));
    if let Some(plugin) = &args.plugin {
        text += &format!("\n[[stage]]\nname = \"plugin\"\nplugin = {}\n", quote(&plugin.to_string_lossy()));
    }
    text += &format!("\n[[sink]]\nname = \"output\"\nuri = {}\n{format}", quote(&args.output));
    text
}

/// Builds the pipeline in memory and runs it.
pub(super) fn relay(args: &RelayArgs) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf());
    let config = match PipelineConfig::parse(&pipeline_text(args), &cwd) {
        Ok(config) => config,
        Err(mut e) => {
            e.line = None;
            report_error(format!("relay: {e}"));
            return EXIT_USAGE;
        }
    };
    super::run::run_config(&config, None, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_valid_pipeline() {
        let args = RelayArgs {
            input: "file:///tmp/a \"b\".ndjson".into(),
            output: "redis://127.0.0.1:6379/out?maxlen=10".into(),
            plugin: Some(PathBuf::from("plugins/passthrough")),
            format: Some("raw".into()),
        };
        let config = PipelineConfig::parse(&pipeline_text(&args), Path::new("/")).unwrap();
        assert_eq!(config.sources[0].uri.get_ref(), &args.input);
        assert_eq!(config.sources[0].format, crate::config::Format::Raw);
        assert_eq!(config.stages[0].plugin.get_ref(), "plugins/passthrough");
        assert_eq!(config.sinks[0].uri.get_ref(), &args.output);
        let bare = RelayArgs { plugin: None, format: None, ..args };
        let config = PipelineConfig::parse(&pipeline_text(&bare), Path::new("/")).unwrap();
        assert!(config.stages.is_empty());
        assert_eq!(config.sinks[0].format, crate::config::Format::Ndjson);
    }
}
