//! `[[stage]]`: a plugin, its instances, batching, limits and failure policy.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, PipelineConfig, ranges};

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
    pub group_by: Option<Spanned<GroupBy>>,
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
    pub partition_by: Option<Spanned<GroupBy>>,
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
pub(super) fn default_retry_backoff_ms() -> u64 {
    100
}

/// What a dynamic batch or partition key is taken from: parsed when the file
/// is read, so a bad value is refused at its line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum GroupBy {
    /// The message key.
    Key,
    /// A header's value.
    Header(String),
    /// The route the output took (sinks only).
    Route,
}

impl TryFrom<String> for GroupBy {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        GroupBy::parse(&text)
    }
}

impl GroupBy {
    /// Parses `key`, `header:NAME` or `route`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "key" => Ok(GroupBy::Key),
            "route" => Ok(GroupBy::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(GroupBy::Header(name.to_string())),
                _ => Err(format!("`{text}` is not one of `key`, `header:NAME`, `route`")),
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

impl PipelineConfig {
    pub(super) fn validate_stage(&self, stage: &StageConfig) -> Result<(), ConfigError> {
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
            (Some(p), Dispatch::Partition) if *p.get_ref() == GroupBy::Route => {
                return Err(self.error_at(
                    p,
                    format!(
                        "stage `{}`: partition_by: `route` applies to sinks only (use `key` or `header:NAME`)",
                        stage.name
                    ),
                ));
            }
            (Some(_), Dispatch::Partition) => {}
            (Some(p), _) => {
                return Err(
                    self.error_at(p, format!("stage `{}`: partition_by needs dispatch = \"partition\"", stage.name))
                );
            }
            (None, _) => {}
        }
        if let Some(group_by) = stage.batch.group_by.as_ref().filter(|g| *g.get_ref() == GroupBy::Route) {
            return Err(self.error_at(
                group_by,
                format!(
                    "stage `{}`: batch.group_by: `route` applies to sinks only (use `key` or `header:NAME`)",
                    stage.name
                ),
            ));
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
