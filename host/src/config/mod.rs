//! The pipeline file (TOML): parsing and validation.
//!
//! Everything that can be checked before the pipeline starts is checked here
//! or in the connector and plugin constructors it feeds, and every refusal
//! names the key, with its line when TOML gives one.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod io;
pub mod ranges;
mod service;
mod stage;

pub use io::{DeadLetterConfig, Routes, SinkBatchConfig, SinkConfig, SinkRetries, SourceConfig};
pub use service::{AdminConfig, MemoryConfig, ShutdownConfig, StateConfig};
pub use stage::{Dispatch, GroupBy, LimitsConfig, OnError, RetryExhausted, StageBatchConfig, StageConfig};

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
    /// The delivery guarantee: `at-least-once` (default) or `exactly-once`
    /// (Kafka to Kafka only).
    #[serde(default)]
    pub delivery: Delivery,
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
    /// How a stopping pipeline drains.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// How much memory messages in flight may take.
    #[serde(default)]
    pub memory: MemoryConfig,
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

/// The pipeline's delivery guarantee (`delivery` at the top of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every input reaches the sinks at least once: after a crash, what was
    /// written but not yet committed is written again.
    #[default]
    AtLeastOnce,
    /// Kafka to Kafka: the outputs of a checkpoint interval and the input
    /// offsets they cover are committed in one Kafka transaction, so a
    /// `read_committed` reader sees every input's outputs exactly once.
    ExactlyOnce,
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
            let owner = format!("source `{}`", source.name);
            let check = |key, value: Option<u64>, range| match value {
                Some(value) => self.check_range(&source.uri, &owner, key, value, range),
                None => Ok(()),
            };
            check("batch_size", source.batch_size.map(|n| n as u64), &ranges::BATCH_SIZE)?;
        }
        for stage in &self.stages {
            self.validate_stage(stage)?;
        }
        if let Some(admin) = &self.admin {
            self.validate_admin(admin)?;
        }
        for sink in &self.sinks {
            let owner = format!("sink `{}`", sink.name);
            let check = |key, value, range| self.check_range(&sink.uri, &owner, key, value, range);
            check("batch.max_size", sink.batch.max_size as u64, &ranges::BATCH_SIZE)?;
            check("batch.max_wait_ms", sink.batch.max_wait_ms, &ranges::MAX_WAIT_MS)?;
            check("retry_backoff_ms", sink.retry_backoff_ms, &ranges::RETRY_BACKOFF_MS)?;
        }
        if let Some(dead_letter) = &self.dead_letter {
            let backoff = dead_letter.retry_backoff_ms;
            self.check_range(
                &dead_letter.uri,
                "[dead_letter]",
                "retry_backoff_ms",
                backoff,
                &ranges::RETRY_BACKOFF_MS,
            )?;
        }
        let drain = &self.shutdown.drain_timeout_ms;
        ranges::check("drain_timeout_ms", *drain.get_ref(), &ranges::DRAIN_TIMEOUT_MS)
            .map_err(|m| self.error_at(drain, format!("[shutdown]: {m}")))?;
        if self.delivery == Delivery::ExactlyOnce {
            self.validate_exactly_once()?;
        }
        let interval = &self.state.checkpoint_interval_ms;
        ranges::check("checkpoint_interval_ms", *interval.get_ref(), &ranges::CHECKPOINT_INTERVAL_MS)
            .map_err(|m| self.error_at(interval, format!("[state]: {m}")))?;
        let in_flight = &self.memory.max_in_flight_mb;
        ranges::check("max_in_flight_mb", *in_flight.get_ref(), &ranges::MAX_IN_FLIGHT_MB)
            .map_err(|m| self.error_at(in_flight, format!("[memory]: {m}")))?;
        Ok(())
    }

    /// `delivery = "exactly-once"` needs Kafka on both ends, on one cluster
    /// (the transaction that writes the outputs also commits the group's
    /// offsets), and one source (one consumer group per transaction).
    fn validate_exactly_once(&self) -> Result<(), ConfigError> {
        const WHY: &str = "`delivery = \"exactly-once\"` needs Kafka on both ends";
        let brokers =
            |uri: &str| uri.strip_prefix("kafka://").map(|rest| rest.split('/').next().unwrap_or("").to_string());
        let mut cluster: Option<String> = None;
        let mut same_cluster = |uri: &Spanned<String>, what: &str| -> Result<(), ConfigError> {
            let Some(found) = brokers(uri.get_ref()) else {
                return Err(self.error_at(
                    uri,
                    format!("{what} `{}` is not Kafka: {WHY} (kafka:// sources, sinks and dead letter)", uri.get_ref()),
                ));
            };
            match &cluster {
                Some(first) if *first != found => Err(self.error_at(
                    uri,
                    format!("{what} is on brokers `{found}`, another is on `{first}`: {WHY} on one cluster"),
                )),
                _ => {
                    cluster = Some(found);
                    Ok(())
                }
            }
        };
        for source in &self.sources {
            same_cluster(&source.uri, &format!("source `{}`", source.name))?;
        }
        if let [_, second, ..] = self.sources.as_slice() {
            return Err(self.error_at(
                &second.uri,
                "`delivery = \"exactly-once\"` takes one [[source]] (it may read several topics: `kafka://host:port/a,b`)",
            ));
        }
        for sink in &self.sinks {
            same_cluster(&sink.uri, &format!("sink `{}`", sink.name))?;
        }
        if let Some(dead_letter) = &self.dead_letter {
            same_cluster(&dead_letter.uri, "[dead_letter]")?;
        }
        Ok(())
    }

    /// Refuses `key` (e.g. `batch.max_size`) of the table anchored at
    /// `anchor` when `value` is outside `range`, at the key's own line.
    pub(super) fn check_range<T>(
        &self,
        anchor: &Spanned<T>,
        owner: &str,
        key: &str,
        value: u64,
        range: &std::ops::RangeInclusive<u64>,
    ) -> Result<(), ConfigError> {
        let written = key.rsplit('.').next().unwrap_or(key);
        ranges::check(key, value, range)
            .map(drop)
            .map_err(|m| self.error_at_key(anchor, written, format!("{owner}: {m}")))
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
        if let Err(m) = safe_name(name) {
            return Err(config.error_at_key(at, "name", format!("[[{kind}]] name `{name}`: {m}")));
        }
        if !seen.insert(name) {
            return Err(config.error_at(at, format!("two [[{kind}]] entries are named `{name}`")));
        }
    }
    Ok(())
}

/// Longest stage, source or sink name.
pub const MAX_NAME_LEN: usize = 128;

/// Names become file names (a stage's state file) and parts of broker
/// identifiers (consumer groups), so they are kept to a safe set.
fn safe_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("character {bad:?} is not allowed (use letters, digits, `_`, `.` and `-`)"));
    }
    if name.starts_with('.') {
        return Err("must not start with `.`".into());
    }
    Ok(())
}

fn toml_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let line = error.span().map(|s| line_of(text, s.start));
    let mut message = error.message().trim().to_string();
    // Type errors point at the value; name the key it belongs to.
    if let Some(key) = error.span().and_then(|s| key_before(text, s.start))
        && !message.contains(&format!("`{key}`"))
    {
        message = format!("`{key}`: {message}");
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
