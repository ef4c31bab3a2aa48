//! A connector's settings: the path and query parameters of its URI and the
//! keys of its `[[source]]` / `[[sink]]` table beyond the common ones. A
//! setting may be written either way, not both; whatever the connector does
//! not take is refused by name.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use super::SpecError;

/// Where a setting was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Query,
    Key,
}

#[derive(Debug)]
struct Setting {
    key: String,
    value: String,
    written: Written,
    taken: bool,
}

/// The settings of one connector, taken one by one by its parser.
#[derive(Debug)]
pub struct Settings {
    scheme: String,
    role: &'static str,
    /// Everything between `scheme://` and `?`.
    pub path: String,
    settings: Vec<Setting>,
    tables: BTreeMap<String, toml::Table>,
}

impl Settings {
    /// Splits `rest` (what follows `scheme://`) into path and query
    /// parameters; `role` is `source` or `sink` (for error messages).
    pub fn parse(rest: &str, scheme: &str, role: &'static str) -> Result<Self, SpecError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut settings = Settings {
            scheme: scheme.to_string(),
            role,
            path: path.to_string(),
            settings: Vec::new(),
            tables: BTreeMap::new(),
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if settings.settings.iter().any(|s| s.key == key) {
                return Err(SpecError::Twice { key: key.into_owned() });
            }
            settings.settings.push(Setting {
                key: key.into_owned(),
                value: value.into_owned(),
                written: Written::Query,
                taken: false,
            });
        }
        Ok(settings)
    }

    /// Adds the connector's keys of its `[[source]]` / `[[sink]]` table.
    /// Scalars become settings (a number is its decimal text); sub-tables
    /// (e.g. `properties`) are kept for [`Settings::take_table`].
    pub fn with_keys(mut self, keys: &toml::Table) -> Result<Self, SpecError> {
        for (key, value) in keys {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(table) => {
                    self.tables.insert(key.clone(), table.clone());
                    continue;
                }
                other => {
                    return Err(SpecError::BadValue {
                        key: key.clone(),
                        value: other.to_string(),
                        reason: format!("expected a string or a number, not {}", other.type_str()),
                        query: false,
                    });
                }
            };
            if self.settings.iter().any(|s| s.key == *key) {
                return Err(SpecError::BothWays { key: key.clone() });
            }
            self.settings.push(Setting { key: key.clone(), value: text, written: Written::Key, taken: false });
        }
        Ok(self)
    }

    /// The connector's scheme.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    fn written(&self, key: &str) -> Written {
        self.settings.iter().find(|s| s.key == key).map_or(Written::Key, |s| s.written)
    }

    fn raw(&self, key: &str) -> String {
        self.settings.iter().find(|s| s.key == key).map(|s| s.value.clone()).unwrap_or_default()
    }

    /// Takes a setting's raw value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.settings.iter_mut().find(|s| s.key == key).map(|s| {
            s.taken = true;
            s.value.clone()
        })
    }

    /// Takes and parses a setting.
    pub fn take_parsed<T: FromStr>(&mut self, key: &str) -> Result<Option<T>, SpecError>
    where
        T::Err: Display,
    {
        let taken = self.take(key);
        match taken {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|e: T::Err| SpecError::BadValue {
                key: key.into(),
                value: raw,
                reason: e.to_string(),
                query: self.written(key) == Written::Query,
            }),
        }
    }

    /// Takes and parses a setting that must lie in `range` (see
    /// [`crate::config::ranges`]).
    pub fn take_in_range<T>(&mut self, key: &str, range: &RangeInclusive<T>) -> Result<Option<T>, SpecError>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let Some(value) = self.take_parsed::<T>(key)? else { return Ok(None) };
        if !range.contains(&value) {
            return Err(SpecError::OutOfRange {
                key: key.into(),
                value: self.raw(key),
                query: self.written(key) == Written::Query,
                min: range.start().to_string(),
                max: range.end().to_string(),
            });
        }
        Ok(Some(value))
    }

    /// Marks every query parameter as taken: for a connector whose URI's
    /// query belongs to the remote end (an HTTP sink's target URL).
    pub fn take_query(&mut self) {
        for setting in self.settings.iter_mut().filter(|s| s.written == Written::Query) {
            setting.taken = true;
        }
    }

    /// Takes a sub-table of string values (e.g. client `properties`).
    pub fn take_table(&mut self, key: &str) -> Result<BTreeMap<String, String>, SpecError> {
        let Some(table) = self.tables.remove(key) else { return Ok(BTreeMap::new()) };
        table
            .into_iter()
            .map(|(name, value)| match value {
                toml::Value::String(s) => Ok((name, s)),
                other => Err(SpecError::BadValue {
                    key: format!("{key}.{name}"),
                    value: other.to_string(),
                    reason: "expected a string".into(),
                    query: false,
                }),
            })
            .collect()
    }

    /// Refuses settings nobody took.
    pub fn finish(self) -> Result<(), SpecError> {
        if let Some(s) = self.settings.iter().find(|s| !s.taken) {
            return Err(match s.written {
                Written::Query => SpecError::UnknownParameter { key: s.key.clone(), scheme: self.scheme },
                Written::Key => SpecError::UnknownKey { key: s.key.clone(), scheme: self.scheme, role: self.role },
            });
        }
        if let Some(key) = self.tables.keys().next() {
            return Err(SpecError::UnknownKey { key: key.clone(), scheme: self.scheme, role: self.role });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    #[test]
    fn a_setting_comes_from_the_query_or_the_table() {
        let mut s = Settings::parse("h/p?group=a", "kafka", "source")
            .and_then(|s| s.with_keys(&keys("start = \"latest\"\nclaim_idle_ms = 10")))
            .expect("parse");
        assert_eq!(s.take("group").as_deref(), Some("a"));
        assert_eq!(s.take("start").as_deref(), Some("latest"));
        assert_eq!(s.take_in_range::<u64>("claim_idle_ms", &(0..=100)).expect("range"), Some(10));
        s.finish().expect("all taken");
    }

    #[test]
    fn refusals_name_the_setting() {
        let both = Settings::parse("h/p?group=a", "redis", "source").and_then(|s| s.with_keys(&keys("group = \"b\"")));
        assert_eq!(
            both.expect_err("both").to_string(),
            "`group` is given both as a query parameter and as a key; keep one"
        );
        let s = Settings::parse("h/p", "file", "sink").and_then(|s| s.with_keys(&keys("maxlen = 5"))).expect("parse");
        assert_eq!(s.finish().expect_err("unused").to_string(), "key `maxlen` does not apply to a file:// sink");
        let s = Settings::parse("h/p?x=1", "file", "sink").expect("parse");
        assert_eq!(s.finish().expect_err("unused").to_string(), "unknown query parameter `x` for file://");
        let mut s = Settings::parse("h/p?db=99", "redis", "sink").expect("parse");
        assert_eq!(
            s.take_in_range::<u32>("db", &(0..=15)).expect_err("range").to_string(),
            "query parameter `db=99` is out of range: it must be between 0 and 15"
        );
    }
}
