//! The message type that flows through a pipeline.
//!
//! It is the WIT `message` record itself, so a batch is handed to a
//! record-world plugin without conversion; this module adds the conveniences
//! the host needs, and the host's own [`Outcome`].

use crate::plugin::bindings::RecordOutcome;
pub use crate::plugin::bindings::{Header, Message, Origin, Output};

/// What became of one input message (of a plugin call or a native stage).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Zero outputs filter the message out, one maps it, several flat-map it.
    Emit(Vec<Output>),
    /// Forward the input unchanged to the default next hop (the packed
    /// worlds' `keep`): the input message moves on, nothing is copied.
    Keep,
    /// The message cannot be processed; the stage's `on_error` policy applies.
    Fail(String),
}

impl From<RecordOutcome> for Outcome {
    fn from(outcome: RecordOutcome) -> Self {
        match outcome {
            RecordOutcome::Emit(outputs) => Outcome::Emit(outputs),
            RecordOutcome::Fail(reason) => Outcome::Fail(reason),
        }
    }
}

impl Message {
    /// A message with this value and nothing else.
    pub fn from_value(value: impl Into<Vec<u8>>) -> Self {
        Message { key: None, value: value.into(), headers: Vec::new(), timestamp_ms: None, origin: None }
    }

    /// Bytes of key, value and headers: what the message weighs in memory,
    /// near enough for budgets.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header { name: name.into(), value: value.into() });
        self
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_slice())
    }

    /// Sets header `name`, replacing an existing one of that name.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        match self.headers.iter_mut().find(|h| h.name == name) {
            Some(header) => header.value = value.into(),
            None => self.headers.push(Header { name: name.to_string(), value: value.into() }),
        }
    }
}

impl Output {
    /// Splits an output into the message it carries and its route.
    pub fn into_parts(self) -> (Message, Option<String>) {
        let Output { key, value, headers, timestamp_ms, route } = self;
        (Message { key, value, headers, timestamp_ms, origin: None }, route)
    }
}
