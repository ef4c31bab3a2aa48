//! Query parameters of connector URIs, with unknown ones refused by name.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// The path and query parameters of a URI after `scheme://`.
#[derive(Debug)]
pub struct Params {
    scheme: &'static str,
    /// Everything before `?`.
    pub path: String,
    pairs: Vec<(String, String, bool)>,
}

impl Params {
    /// Splits `rest` (what follows `scheme://`) into path and parameters.
    pub fn parse(rest: &str, scheme: &'static str) -> Result<Self, String> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut pairs = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if pairs.iter().any(|(k, _, _): &(String, String, bool)| *k == key) {
                return Err(format!("query parameter `{key}` is given twice"));
            }
            pairs.push((key.into_owned(), value.into_owned(), false));
        }
        Ok(Params { scheme, path: path.to_string(), pairs })
    }

    /// Takes a parameter's raw value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.pairs.iter_mut().find(|(k, _, _)| k == key).map(|(_, v, used)| {
            *used = true;
            v.clone()
        })
    }

    /// Takes and parses a parameter.
    pub fn take_parsed<T: FromStr>(&mut self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.take(key) {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|e| format!("query parameter `{key}={raw}`: {e}")),
        }
    }

    /// Takes and parses a parameter that must lie in `range` (see
    /// [`crate::config::ranges`]).
    pub fn take_in_range<T>(&mut self, key: &str, range: &RangeInclusive<T>) -> Result<Option<T>, String>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let Some(raw) = self.take(key) else { return Ok(None) };
        let value: T = raw.parse().map_err(|e| format!("query parameter `{key}={raw}`: {e}"))?;
        if !range.contains(&value) {
            return Err(format!(
                "query parameter `{key}={raw}` is out of range: it must be between {} and {}",
                range.start(),
                range.end()
            ));
        }
        Ok(Some(value))
    }

    /// Refuses parameters nobody took.
    pub fn finish(self) -> Result<(), String> {
        match self.pairs.iter().find(|(_, _, used)| !used) {
            Some((key, _, _)) => Err(format!("unknown query parameter `{key}` for {}://", self.scheme)),
            None => Ok(()),
        }
    }
}
