//! The stage's `config` table, as handed to `init`.

use std::str::FromStr;

/// Configuration values from the stage's `config = { ... }` table.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps the key-value pairs the host passes to `init`.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or an error that names the missing key.
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("missing config key `{name}`"))
    }

    /// Parses `name` into `T`, or returns `default` when it is not set.
    pub fn parse_or<T: FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| format!("config key `{name}` = {raw:?}: {e}")),
        }
    }

    /// All entries, in the order the host passed them.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}
