//! Why a connector URI or its settings were refused.

use std::fmt;

/// A refused connector URI or setting. The pipeline file loader turns it
/// into a `FILE:LINE: …` error, at the setting's own line when it is a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not `scheme://…`.
    #[error("`{uri}` is not a connector URI (expected scheme://..., e.g. file:///data/in.ndjson)")]
    NotAUri {
        /// What was written.
        uri: String,
    },
    /// No connector has this scheme (for this role).
    #[error("unknown connector `{scheme}://` (available here: {known})")]
    UnknownScheme {
        /// The scheme written.
        scheme: String,
        /// The schemes that would work here.
        known: String,
    },
    /// A query parameter appears twice.
    #[error("query parameter `{key}` is given twice")]
    Twice {
        /// The parameter.
        key: String,
    },
    /// A setting is both a query parameter and a key.
    #[error("`{key}` is given both as a query parameter and as a key; keep one")]
    BothWays {
        /// The setting.
        key: String,
    },
    /// A query parameter the connector does not know.
    #[error("unknown query parameter `{key}` for {scheme}://")]
    UnknownParameter {
        /// The parameter.
        key: String,
        /// The connector.
        scheme: String,
    },
    /// A table key the connector does not take.
    #[error("key `{key}` does not apply to a {scheme}:// {role}")]
    UnknownKey {
        /// The key.
        key: String,
        /// The connector.
        scheme: String,
        /// `source` or `sink`.
        role: &'static str,
    },
    /// A setting whose value does not parse.
    #[error("{}: {reason}", Setting { key, value, query: *query })]
    BadValue {
        /// The setting.
        key: String,
        /// Its value as written.
        value: String,
        /// Why it was refused.
        reason: String,
        /// Written as a query parameter (else as a key).
        query: bool,
    },
    /// A setting outside its range.
    #[error("{} is out of range: it must be between {min} and {max}", Setting { key, value, query: *query })]
    OutOfRange {
        /// The setting.
        key: String,
        /// Its value as written.
        value: String,
        /// Smallest allowed.
        min: String,
        /// Largest allowed.
        max: String,
        /// Written as a query parameter (else as a key).
        query: bool,
    },
    /// Anything else about this connector's URI or settings.
    #[error("{0}")]
    Invalid(String),
}

impl SpecError {
    /// The table key the error is about, when it was written as a key (so
    /// the error can point at its line).
    pub fn key(&self) -> Option<&str> {
        match self {
            SpecError::UnknownKey { key, .. } | SpecError::BothWays { key } => Some(key),
            SpecError::BadValue { key, query: false, .. } | SpecError::OutOfRange { key, query: false, .. } => {
                Some(key.split('.').next().unwrap_or(key))
            }
            _ => None,
        }
    }
}

impl From<String> for SpecError {
    fn from(message: String) -> Self {
        SpecError::Invalid(message)
    }
}

impl From<&str> for SpecError {
    fn from(message: &str) -> Self {
        SpecError::Invalid(message.to_string())
    }
}

/// How a setting is named in an error: as it was written.
struct Setting<'a> {
    key: &'a str,
    value: &'a str,
    query: bool,
}

impl fmt::Display for Setting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.query {
            write!(f, "query parameter `{}={}`", self.key, self.value)
        } else {
            write!(f, "`{}` = {}", self.key, self.value)
        }
    }
}
