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

pub mod ranges;

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
    /// Longest message accepted (file, stdio, gen); default 8 MiB.
    pub max_message_bytes: Option<usize>,
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
    /// Most outputs one call (one batch) may produce.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u64,
    /// Most output bytes (keys, values, headers) one call may produce, in MiB.
    #[serde(default = "default_max_output_mb")]
    pub max_output_mb: u64,
    /// Most bytes (keys and values) the stage's state may hold, in MiB.
    #[serde(default = "default_state_mb")]
    pub state_mb: u64,
}

fn default_memory_mb() -> u64 {
    crate::plugin::Limits::DEFAULT_MEMORY_MB
}
fn default_deadline_ms() -> u64 {
    crate::plugin::Limits::DEFAULT_DEADLINE_MS
}
fn default_max_outputs() -> u64 {
    crate::plugin::Limits::DEFAULT_MAX_OUTPUTS
}
fn default_max_output_mb() -> u64 {
    crate::plugin::Limits::DEFAULT_MAX_OUTPUT_MB
}
fn default_state_mb() -> u64 {
    crate::plugin::state::DEFAULT_STATE_MB
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mb: default_memory_mb(),
            deadline_ms: default_deadline_ms(),
            max_outputs: default_max_outputs(),
            max_output_mb: default_max_output_mb(),
            state_mb: default_state_mb(),
        }
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
    /// Retries of a failed write before the run stops (or `"forever"`).
    #[serde(default)]
    pub retries: SinkRetries,
    /// First backoff between write attempts; doubles, up to 5 s.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
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
    /// Retries of a failed write before the run stops (or `"forever"`).
    #[serde(default)]
    pub retries: SinkRetries,
    /// First backoff between write attempts; doubles, up to 5 s.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
}

/// How often a sink retries a failed write: a number of retries after the
/// first attempt (then the run stops with the error), or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkRetries {
    /// At most this many retries.
    Bounded(u32),
    /// Until the write succeeds or the run is stopped.
    Forever,
}

impl SinkRetries {
    /// Default retries of a sink write: about 25 s of backoff at the default
    /// `retry_backoff_ms`, enough to ride out a broker restart.
    pub const DEFAULT: u32 = 10;
}

impl Default for SinkRetries {
    fn default() -> Self {
        SinkRetries::Bounded(Self::DEFAULT)
    }
}

impl<'de> Deserialize<'de> for SinkRetries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SinkRetries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of retries or \"forever\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SinkRetries, E> {
                let range = ranges::SINK_RETRIES;
                match u32::try_from(v) {
                    Ok(n) if range.contains(&u64::from(n)) => Ok(SinkRetries::Bounded(n)),
                    _ => Err(E::custom(format!(
                        "`retries` = {v} is out of range: it must be between {} and {}, or \"forever\"",
                        range.start(),
                        range.end()
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SinkRetries, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SinkRetries, E> {
                match v {
                    "forever" => Ok(SinkRetries::Forever),
                    other => Err(E::custom(format!("`retries` = \"{other}\": expected a number or \"forever\""))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[memory]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most bytes (keys, values, headers) of source messages read and not yet
    /// acknowledged, across the pipeline, in MiB; sources wait beyond it.
    #[serde(default = "default_max_in_flight_mb")]
    pub max_in_flight_mb: Spanned<u64>,
}

fn default_max_in_flight_mb() -> Spanned<u64> {
    Spanned::new(0..0, 256)
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { max_in_flight_mb: default_max_in_flight_mb() }
    }
}

impl MemoryConfig {
    /// The in-flight budget, in bytes.
    pub fn max_in_flight_bytes(&self) -> usize {
        (*self.max_in_flight_mb.get_ref() << 20) as usize
    }
}

/// `[shutdown]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest a stopping pipeline (signal or halt) waits for in-flight
    /// messages before it exits 1 without committing them.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: Spanned<u64>,
}

fn default_drain_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout_ms: default_drain_timeout_ms() }
    }
}

impl ShutdownConfig {
    /// The drain timeout.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(*self.drain_timeout_ms.get_ref())
    }
}

/// `[admin]`: the admin HTTP listener (see [`crate::admin`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; default `127.0.0.1:9090`. An address that is not a
    /// loopback one is refused unless an admin token is set.
    pub listen: Option<Spanned<String>>,
    /// The environment variable holding the bearer token that the endpoints
    /// which change things require; default `WEIR_ADMIN_TOKEN`.
    pub token_env: Option<Spanned<String>>,
    /// Largest plugin upload, in MiB; default 64.
    pub max_body_mb: Option<u64>,
    /// Never accepted (the token does not go in the file): read only to
    /// refuse it with a useful message.
    #[serde(default)]
    token: Option<toml::Value>,
}

impl AdminConfig {
    /// The listen address.
    pub fn listen(&self) -> &str {
        self.listen.as_ref().map_or(crate::admin::DEFAULT_LISTEN, |l| l.get_ref())
    }

    /// The environment variable the token is read from.
    pub fn token_env(&self) -> &str {
        self.token_env.as_ref().map_or(crate::admin::DEFAULT_TOKEN_ENV, |e| e.get_ref())
    }

    /// The largest plugin upload, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        (self.max_body_mb.unwrap_or(crate::admin::DEFAULT_MAX_BODY_MB) as usize) << 20
    }

    /// The token from the environment: `None` when the variable is unset or
    /// empty, an error when its value is not fit to be a token.
    pub fn token(&self) -> Result<Option<crate::admin::Token>, String> {
        crate::admin::Token::from_env(self.token_env())
    }
}

impl PipelineConfig {
    /// An error about `key` of `[admin]`: at the key's line when it is
    /// written, else at the table's.
    pub fn admin_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if line.trim_start().starts_with("[admin]") {
                let at = offset + line.len() - line.trim_start().len() + 1;
                return self.error_at_key(&Spanned::new(at..at, ()), key, message);
            }
            offset += line.len();
        }
        ConfigError::new(message)
    }

    fn validate_admin(&self, admin: &AdminConfig) -> Result<(), ConfigError> {
        let env = admin.token_env();
        if admin.token.is_some() {
            return Err(self.admin_error(
                "token",
                format!(
                    "[admin] token: the token does not go in the pipeline file (anyone who can read the file, \
                     or its history, could read it); set the environment variable {env} instead, or name \
                     another variable with `token_env`"
                ),
            ));
        }
        let env_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if env.is_empty() || !env.chars().all(env_name) || env.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.admin_error(
                "token_env",
                format!("[admin] token_env = {env:?} is not an environment variable name (letters, digits, `_`)"),
            ));
        }
        if let Some(mb) = admin.max_body_mb {
            ranges::check("max_body_mb", mb, &ranges::ADMIN_MAX_BODY_MB)
                .map_err(|m| self.admin_error("max_body_mb", format!("[admin]: {m}")))?;
        }
        let token = admin.token().map_err(|m| self.admin_error("token_env", format!("[admin]: {m}")))?;
        let listen = admin.listen();
        if token.is_none() && !crate::admin::is_loopback(listen) {
            return Err(self.admin_error(
                "listen",
                format!(
                    "[admin] listen = {listen:?} is not a loopback address and no admin token is set, so anyone \
                     who can reach that port could replace a stage's code; set the environment variable {env} \
                     to a secret of at least {} characters (e.g. `export {env}=$(openssl rand -hex 32)`) \
                     before starting weir, or listen on 127.0.0.1",
                    crate::admin::MIN_TOKEN_LEN
                ),
            ));
        }
        Ok(())
    }
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
            let owner = format!("source `{}`", source.name);
            let check = |key, value: Option<u64>, range| match value {
                Some(value) => self.check_range(&source.uri, &owner, key, value, range),
                None => Ok(()),
            };
            check("batch_size", source.batch_size.map(|n| n as u64), &ranges::BATCH_SIZE)?;
            check("max_message_bytes", source.max_message_bytes.map(|n| n as u64), &ranges::MAX_MESSAGE_BYTES)?;
            check("claim_idle_ms", source.claim_idle_ms, &ranges::CLAIM_IDLE_MS)?;
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
            if let Some(maxlen) = sink.maxlen {
                check("maxlen", maxlen, &ranges::MAXLEN)?;
            }
            check("retry_backoff_ms", sink.retry_backoff_ms, &ranges::RETRY_BACKOFF_MS)?;
            if let Some(group_by) = &sink.batch.group_by {
                GroupBy::parse(group_by.get_ref(), true)
                    .map_err(|m| self.error_at(group_by, format!("sink `{}`: batch.group_by: {m}", sink.name)))?;
            }
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
        let in_flight = &self.memory.max_in_flight_mb;
        ranges::check("max_in_flight_mb", *in_flight.get_ref(), &ranges::MAX_IN_FLIGHT_MB)
            .map_err(|m| self.error_at(in_flight, format!("[memory]: {m}")))?;
        Ok(())
    }

    /// Refuses `key` (e.g. `batch.max_size`) of the table anchored at
    /// `anchor` when `value` is outside `range`, at the key's own line.
    fn check_range<T>(
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

    fn validate_stage(&self, stage: &StageConfig) -> Result<(), ConfigError> {
        let at = |key: &str, m: &str| self.error_at_key(&stage.plugin, key, format!("stage `{}`: {m}", stage.name));
        let owner = format!("stage `{}`", stage.name);
        let check = |key, value, range| self.check_range(&stage.plugin, &owner, key, value, range);
        check("concurrency", stage.concurrency as u64, &ranges::CONCURRENCY)?;
        check("batch.max_size", stage.batch.max_size as u64, &ranges::BATCH_SIZE)?;
        check("batch.max_wait_ms", stage.batch.max_wait_ms, &ranges::MAX_WAIT_MS)?;
        check("limits.memory_mb", stage.limits.memory_mb, &ranges::MEMORY_MB)?;
        check("limits.deadline_ms", stage.limits.deadline_ms, &ranges::DEADLINE_MS)?;
        check("limits.max_outputs", stage.limits.max_outputs, &ranges::MAX_OUTPUTS)?;
        check("limits.max_output_mb", stage.limits.max_output_mb, &ranges::MAX_OUTPUT_MB)?;
        check("limits.state_mb", stage.limits.state_mb, &ranges::STATE_MB)?;
        check("retries", u64::from(stage.retries), &ranges::RETRIES)?;
        check("retry_backoff_ms", stage.retry_backoff_ms, &ranges::RETRY_BACKOFF_MS)?;
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

    /// The quota of the stage's state, in bytes.
    pub fn state_quota(&self) -> usize {
        (self.limits.state_mb << 20) as usize
    }

    /// The per-instance limits.
    pub fn limits(&self) -> crate::plugin::Limits {
        crate::plugin::Limits {
            memory_bytes: (self.limits.memory_mb * 1024 * 1024) as usize,
            deadline: std::time::Duration::from_millis(self.limits.deadline_ms),
            max_outputs: self.limits.max_outputs as usize,
            max_output_bytes: (self.limits.max_output_mb * 1024 * 1024) as usize,
        }
    }
}
