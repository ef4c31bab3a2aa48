//! The pipeline file (TOML): parsing and validation.
//!
//! Everything that can be checked before the pipeline starts is checked here
//! or in the connector and plugin constructors it feeds, and every refusal
//! names the key, with its line when TOML gives one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// A refusal of a pipeline file: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in, when known.
    pub file: Option<PathBuf>,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key.
    pub message: String,
}

impl ConfigError {
    /// An error at a spanned value of `source`.
    pub fn at(source: &str, span: std::ops::Range<usize>, message: impl Into<String>) -> Self {
        ConfigError { file: None, line: Some(line_of(source, span.start)), message: message.into() }
    }

    /// An error without a position.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError { file: None, line: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: {}", file.display(), self.message),
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            (None, Some(line)) => write!(f, "line {line}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where messages come from.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Processing stages, run in order.
    #[serde(default, rename = "stage")]
    pub stages: Vec<StageConfig>,
    /// Where outputs go.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    /// Where failed messages go (`on_error = "dead-letter"`).
    pub dead_letter: Option<DeadLetterConfig>,
    /// The admin HTTP listener.
    pub admin: Option<AdminConfig>,
    /// Where stage state is kept.
    #[serde(default)]
    pub state: StateConfig,
    /// The folder relative paths are resolved from (the file's folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The pipeline file, when the pipeline came from one (`weir relay`
    /// builds one in memory).
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// The file's text, for error positions.
    #[serde(skip)]
    pub text: String,
}

/// Message format of line-oriented connectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One line is one value; no key, no headers.
    Raw,
    /// One JSON envelope per line: key, value, headers, timestamp_ms.
    #[default]
    Ndjson,
}

/// A `[[source]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// Connector URI (see DESIGN.md: kafka://, redis://, file://, gen://, ...).
    pub uri: Spanned<String>,
    /// Line format for file/stdio sources.
    #[serde(default)]
    pub format: Format,
    /// Most messages read per batch.
    pub batch_size: Option<usize>,
    /// Consumer group (brokers).
    pub group: Option<String>,
    /// Consumer name within the group (brokers).
    pub consumer: Option<String>,
    /// Start position: earliest, latest, or a timestamp / ID.
    pub start: Option<String>,
    /// Redis: take over entries another consumer left pending for longer
    /// than this many milliseconds (`XAUTOCLAIM`); 0 = never. Default 30000.
    pub claim_idle_ms: Option<u64>,
    /// Connector-specific client properties, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Dispatch of a stage's input over its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Dispatch {
    /// Batches go to the next free instance.
    #[default]
    RoundRobin,
    /// Every instance sees every message.
    Broadcast,
    /// By hash of the key or a header: per-key order is kept.
    Partition,
}

/// A stage's failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Send the original message to `[dead_letter]`, with the reason.
    DeadLetter,
    /// Log, count, acknowledge, move on.
    Skip,
    /// Try again `retries` times with backoff, then `on_retry_exhausted`.
    Retry,
    /// Stop the pipeline, acknowledge nothing past the failure, exit 1.
    #[default]
    Halt,
}

/// What `retry` falls back to when retries run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RetryExhausted {
    /// Dead-letter the message.
    #[default]
    DeadLetter,
    /// Skip it.
    Skip,
    /// Halt the pipeline.
    Halt,
}

/// Batch settings of a stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageBatchConfig {
    /// Most messages per plugin call.
    #[serde(default = "default_stage_batch_size")]
    pub max_size: usize,
    /// Longest a message waits for its batch to fill.
    #[serde(default = "default_stage_batch_wait")]
    pub max_wait_ms: u64,
    /// Group batches by `key` or `header:NAME` (aggregators receive the group
    /// as their batch key).
    pub group_by: Option<Spanned<String>>,
}

fn default_stage_batch_size() -> usize {
    256
}
fn default_stage_batch_wait() -> u64 {
    10
}

impl Default for StageBatchConfig {
    fn default() -> Self {
        StageBatchConfig {
            max_size: default_stage_batch_size(),
            max_wait_ms: default_stage_batch_wait(),
            group_by: None,
        }
    }
}

/// Per-instance limits of a stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory cap per instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// CPU time one batch may take, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
}

fn default_memory_mb() -> u64 {
    crate::plugin::Limits::DEFAULT_MEMORY_MB
}
fn default_deadline_ms() -> u64 {
    crate::plugin::Limits::DEFAULT_DEADLINE_MS
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { memory_mb: default_memory_mb(), deadline_ms: default_deadline_ms() }
    }
}

/// A `[[stage]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique name (tags logs, names state).
    pub name: String,
    /// A `.wasm` component or a plugin source folder (built first).
    pub plugin: Spanned<String>,
    /// Number of instances, each its own store.
    #[serde(default = "one")]
    pub concurrency: usize,
    /// How messages are spread over the instances.
    #[serde(default)]
    pub dispatch: Dispatch,
    /// `key` or `header:NAME`, for `dispatch = "partition"`.
    pub partition_by: Option<Spanned<String>>,
    /// Round-robin only: keep input order in the output.
    #[serde(default)]
    pub ordered: bool,
    /// Batching of the stage's input.
    #[serde(default)]
    pub batch: StageBatchConfig,
    /// What happens to a message the plugin fails or traps on.
    #[serde(default)]
    pub on_error: OnError,
    /// Attempts for `on_error = "retry"`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry backoff; doubles each attempt.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Fallback after the last retry.
    #[serde(default)]
    pub on_retry_exhausted: RetryExhausted,
    /// Per-instance resource limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Values handed to the plugin's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, Spanned<toml::Value>>,
    /// Hot-swap when the plugin file changes.
    #[serde(default)]
    pub watch: bool,
}

fn one() -> usize {
    1
}
fn default_retries() -> u32 {
    3
}
fn default_retry_backoff_ms() -> u64 {
    100
}

/// A route name, or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Routes {
    /// One route.
    One(String),
    /// Several routes.
    Many(Vec<String>),
}

impl Routes {
    /// The route names.
    pub fn names(&self) -> Vec<String> {
        match self {
            Routes::One(r) => vec![r.clone()],
            Routes::Many(rs) => rs.clone(),
        }
    }
}

/// Batch settings of a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkBatchConfig {
    /// Most messages per write.
    #[serde(default = "default_sink_batch_size")]
    pub max_size: usize,
    /// Longest a message waits for its batch to fill.
    #[serde(default = "default_sink_batch_wait")]
    pub max_wait_ms: u64,
    /// One write per group: `key`, `header:NAME` or `route`.
    pub group_by: Option<Spanned<String>>,
}

fn default_sink_batch_size() -> usize {
    1000
}
fn default_sink_batch_wait() -> u64 {
    50
}

impl Default for SinkBatchConfig {
    fn default() -> Self {
        SinkBatchConfig { max_size: default_sink_batch_size(), max_wait_ms: default_sink_batch_wait(), group_by: None }
    }
}

/// A `[[sink]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name.
    pub name: String,
    /// Connector URI.
    pub uri: Spanned<String>,
    /// Line format for file/stdio sinks.
    #[serde(default)]
    pub format: Format,
    /// Outputs routed here; a sink without a route is a default sink.
    pub route: Option<Routes>,
    /// Batching of writes.
    #[serde(default)]
    pub batch: SinkBatchConfig,
    /// Stream length cap (Redis).
    pub maxlen: Option<u64>,
    /// Connector-specific client properties, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[dead_letter]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Connector URI.
    pub uri: Spanned<String>,
    /// Line format for file/stdio.
    #[serde(default)]
    pub format: Format,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address, e.g. `127.0.0.1:9090`.
    pub listen: Spanned<String>,
}

/// `[state]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Folder for stage state; default `.weir/state` beside the pipeline file.
    pub dir: Option<String>,
}

impl PipelineConfig {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            message: format!("cannot read pipeline file: {e}"),
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut config = Self::parse(&text, &base_dir).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates pipeline text; relative paths resolve from `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: PipelineConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        config.base_dir = base_dir.to_path_buf();
        config.text = text.to_string();
        config.validate()?;
        Ok(config)
    }

    /// Resolves a path from the pipeline file's folder.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    /// An error at a spanned value.
    pub fn error_at<T>(&self, value: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.text, value.span(), message)
    }

    /// An error about `key` of the table that holds `anchor` (e.g. a stage's
    /// `on_error`, anchored at its `plugin`): at the key's own line when it is
    /// written in that table, else at the anchor's.
    pub fn error_at_key<T>(&self, anchor: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        let start = anchor.span().start.min(self.text.len());
        let table_start = self.text[..start].rfind("\n[").map_or(0, |i| i + 1);
        let table_end = self.text[start..].find("\n[").map_or(self.text.len(), |i| start + i);
        let mut offset = table_start;
        for line in self.text[table_start..table_end].split_inclusive('\n') {
            let trimmed = line.trim_start();
            let written = trimmed.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
                || line.contains(&format!("{{ {key} ="))
                || line.contains(&format!(", {key} ="));
            if written {
                return ConfigError { file: None, line: Some(line_of(&self.text, offset)), message: message.into() };
            }
            offset += line.len();
        }
        self.error_at(anchor, message)
    }

    /// The state folder.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(self.state.dir.as_deref().unwrap_or(".weir/state"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::new("no [[source]]: a pipeline needs at least one source"));
        }
        if self.sinks.is_empty() {
            return Err(ConfigError::new("no [[sink]]: a pipeline needs at least one sink"));
        }
        unique_names("source", self.sources.iter().map(|s| (&s.name, &s.uri)), self)?;
        unique_names("stage", self.stages.iter().map(|s| (&s.name, &s.plugin)), self)?;
        unique_names("sink", self.sinks.iter().map(|s| (&s.name, &s.uri)), self)?;
        if !self.sinks.iter().any(|s| s.route.is_none()) {
            return Err(ConfigError::new(
                "no default sink: every [[sink]] has a `route`, so outputs without a route would have nowhere to go",
            ));
        }
        for source in &self.sources {
            if source.batch_size == Some(0) {
                return Err(
                    self.error_at(&source.uri, format!("source `{}`: batch_size must be at least 1", source.name))
                );
            }
        }
        for stage in &self.stages {
            self.validate_stage(stage)?;
        }
        for sink in &self.sinks {
            let at = |m: String| self.error_at(&sink.uri, format!("sink `{}`: {m}", sink.name));
            if sink.batch.max_size == 0 {
                return Err(at("batch.max_size must be at least 1".into()));
            }
            if let Some(group_by) = &sink.batch.group_by {
                GroupBy::parse(group_by.get_ref(), true)
                    .map_err(|m| self.error_at(group_by, format!("sink `{}`: batch.group_by: {m}", sink.name)))?;
            }
        }
        Ok(())
    }

    fn validate_stage(&self, stage: &StageConfig) -> Result<(), ConfigError> {
        let at = |key: &str, m: &str| self.error_at_key(&stage.plugin, key, format!("stage `{}`: {m}", stage.name));
        if stage.concurrency == 0 {
            return Err(at("concurrency", "concurrency must be at least 1"));
        }
        if stage.batch.max_size == 0 {
            return Err(at("max_size", "batch.max_size must be at least 1"));
        }
        if stage.limits.memory_mb == 0 {
            return Err(at("memory_mb", "limits.memory_mb must be at least 1"));
        }
        if stage.limits.deadline_ms == 0 {
            return Err(at("deadline_ms", "limits.deadline_ms must be at least 1"));
        }
        if stage.ordered && stage.dispatch != Dispatch::RoundRobin {
            return Err(at(
                "ordered",
                "`ordered = true` applies to dispatch = \"round-robin\" only (partition keeps per-key order already)",
            ));
        }
        match (&stage.partition_by, stage.dispatch) {
            (Some(p), Dispatch::Partition) => {
                GroupBy::parse(p.get_ref(), false)
                    .map_err(|m| self.error_at(p, format!("stage `{}`: partition_by: {m}", stage.name)))?;
            }
            (Some(p), _) => {
                return Err(
                    self.error_at(p, format!("stage `{}`: partition_by needs dispatch = \"partition\"", stage.name))
                );
            }
            (None, _) => {}
        }
        if let Some(group_by) = &stage.batch.group_by {
            GroupBy::parse(group_by.get_ref(), false)
                .map_err(|m| self.error_at(group_by, format!("stage `{}`: batch.group_by: {m}", stage.name)))?;
        }
        let needs_dead_letter = stage.on_error == OnError::DeadLetter
            || (stage.on_error == OnError::Retry && stage.on_retry_exhausted == RetryExhausted::DeadLetter);
        if needs_dead_letter && self.dead_letter.is_none() {
            let key = if stage.on_error == OnError::Retry { "on_retry_exhausted" } else { "on_error" };
            return Err(at(
                key,
                &format!("`{key}` sends failures to the dead letter, but the file has no [dead_letter] section"),
            ));
        }
        for (key, value) in &stage.config {
            if matches!(value.get_ref(), toml::Value::Array(_) | toml::Value::Table(_)) {
                return Err(self.error_at(
                    value,
                    format!("stage `{}`: config.{key} must be a string, number or boolean", stage.name),
                ));
            }
        }
        Ok(())
    }
}

fn unique_names<'a, T: 'a>(
    kind: &str,
    items: impl Iterator<Item = (&'a String, &'a Spanned<T>)>,
    config: &PipelineConfig,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (name, at) in items {
        if name.is_empty() {
            return Err(config.error_at(at, format!("a [[{kind}]] has an empty name")));
        }
        if !seen.insert(name) {
            return Err(config.error_at(at, format!("two [[{kind}]] entries are named `{name}`")));
        }
    }
    Ok(())
}

fn toml_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let line = error.span().map(|s| line_of(text, s.start));
    let mut message = error.message().trim().to_string();
    // Type errors point at the value; name the key it belongs to.
    if let Some(key) = error.span().and_then(|s| key_before(text, s.start)) {
        if !message.contains(&format!("`{key}`")) {
            message = format!("`{key}`: {message}");
        }
    }
    ConfigError { file: None, line, message }
}

/// The key of the `key = value` whose value starts at `offset`.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?.trim_end().strip_suffix('=')?.trim_end();
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '"'))
        .map_or(0, |i| i + 1);
    let key = before[start..].trim_matches('"');
    (!key.is_empty()).then(|| key.to_string())
}

/// What a dynamic batch or partition key is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// The message key.
    Key,
    /// A header's value.
    Header(String),
    /// The route the output took (sinks only).
    Route,
}

impl GroupBy {
    /// Parses `key`, `header:NAME` or (when `allow_route`) `route`.
    pub fn parse(text: &str, allow_route: bool) -> Result<Self, String> {
        match text {
            "key" => Ok(GroupBy::Key),
            "route" if allow_route => Ok(GroupBy::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(GroupBy::Header(name.to_string())),
                _ if allow_route => Err(format!("`{text}` is not one of `key`, `header:NAME`, `route`")),
                _ => Err(format!("`{text}` is not one of `key`, `header:NAME`")),
            },
        }
    }

    /// The group of a message (`route` is handled by the caller).
    pub fn of<'m>(&self, message: &'m crate::message::Message) -> Option<&'m [u8]> {
        match self {
            GroupBy::Key => message.key.as_deref(),
            GroupBy::Header(name) => message.header(name),
            GroupBy::Route => None,
        }
    }
}

impl StageConfig {
    /// The `config` table as the strings handed to `init`.
    pub fn plugin_config(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let text = match v.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }

    /// The per-instance limits.
    pub fn limits(&self) -> crate::plugin::Limits {
        crate::plugin::Limits {
            memory_bytes: (self.limits.memory_mb * 1024 * 1024) as usize,
            deadline: std::time::Duration::from_millis(self.limits.deadline_ms),
        }
    }
}
