//! `[[source]]`, `[[sink]]` and `[dead_letter]`: the connector tables.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::stage::{GroupBy, default_retry_backoff_ms};
use super::{Format, ranges};

/// A `[[source]]`.
///
/// Keys beyond the common ones belong to the connector (`group`, `start`,
/// `properties`, …): they are kept in `connector` and checked by the
/// connector the URI names, which refuses those it does not take.
#[derive(Debug, Deserialize)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// Connector URI (kafka://, redis://, file://, gen://, …).
    pub uri: Spanned<String>,
    /// Line format for file/stdio sources.
    #[serde(default)]
    pub format: Format,
    /// Most messages read per batch.
    pub batch_size: Option<usize>,
    /// The connector's own keys.
    #[serde(flatten)]
    pub connector: toml::Table,
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
    pub group_by: Option<Spanned<GroupBy>>,
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

/// A `[[sink]]`. Keys beyond the common ones belong to the connector, as
/// for [`SourceConfig`].
#[derive(Debug, Deserialize)]
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
    /// Retries of a failed write before the run stops (or `"forever"`).
    #[serde(default)]
    pub retries: SinkRetries,
    /// First backoff between write attempts; doubles, up to 5 s.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// The connector's own keys (`maxlen`, `properties`, `headers`, …),
    /// checked by the connector.
    #[serde(flatten)]
    pub connector: toml::Table,
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
