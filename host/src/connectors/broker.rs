//! Settings every broker connector (Kafka, Redis, Pulsar, …) shares: the
//! consumer group, the consumer name and where a new reader starts.

use super::{Settings, SpecError};

/// Where a reader with no committed position starts; `P` is the broker's
/// own kind of position (a timestamp, an entry ID, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<P> {
    /// The oldest retained message (the default).
    Earliest,
    /// Only messages produced from now on.
    Latest,
    /// A broker-specific position.
    At(P),
}

impl<P> Start<P> {
    /// Takes the `start` setting: `earliest` (default), `latest`, or what
    /// `position` accepts; `expected` names the latter in the refusal
    /// (e.g. "a timestamp in milliseconds since the epoch").
    pub fn take(
        settings: &mut Settings,
        position: impl Fn(&str) -> Option<P>,
        expected: &str,
    ) -> Result<Self, SpecError> {
        match settings.take("start").as_deref() {
            None | Some("earliest") => Ok(Start::Earliest),
            Some("latest") => Ok(Start::Latest),
            Some(other) => position(other)
                .map(Start::At)
                .ok_or_else(|| SpecError::Invalid(format!("start `{other}`: expected earliest, latest or {expected}"))),
        }
    }
}

/// Takes the `group` setting; by default `weir-<source name>`, so two
/// sources of one pipeline never share a group by accident.
pub fn take_group(settings: &mut Settings, key: &str, source: &str) -> Result<String, SpecError> {
    match settings.take(key) {
        Some(group) if group.is_empty() => Err(SpecError::Invalid(format!("`{key}` must not be empty"))),
        Some(group) => Ok(group),
        None => Ok(format!("weir-{source}")),
    }
}

/// Takes the `consumer` setting (a consumer or client name), refusing an
/// empty one.
pub fn take_consumer(settings: &mut Settings) -> Result<Option<String>, SpecError> {
    match settings.take("consumer") {
        Some(name) if name.is_empty() => Err(SpecError::Invalid("`consumer` must not be empty".into())),
        other => Ok(other),
    }
}
