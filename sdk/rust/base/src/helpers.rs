//! Conveniences on the generated types: builders, header and JSON access.

use crate::{Header, Message, Outcome, Output};

impl Message {
    /// The value as UTF-8 text, if it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The key as UTF-8 text, if there is a key and it is valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_slice())
    }

    /// Parses the value as JSON into any deserialisable type.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.value).map_err(|e| format!("value is not valid JSON: {e}"))
    }

    /// Turns the message into an output with the same key, value, headers and
    /// timestamp, bound for the default next hop.
    pub fn into_output(self) -> Output {
        Output { key: self.key, value: self.value, headers: self.headers, timestamp_ms: self.timestamp_ms, route: None }
    }
}

impl From<Message> for Output {
    fn from(message: Message) -> Self {
        message.into_output()
    }
}

impl Output {
    /// A new output with this value and nothing else.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Output { key: None, value: value.into(), headers: Vec::new(), timestamp_ms: None, route: None }
    }

    /// Sends this output to the sinks whose `route` is `route`.
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Replaces the value.
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// Replaces the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets header `name`, replacing any header of that name.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        self.headers.retain(|h| h.name != name);
        self.headers.push(Header { name, value: value.into() });
        self
    }

    /// Serialises `value` as JSON and uses it as the output's value.
    pub fn with_json<T: serde::Serialize>(self, value: &T) -> Result<Self, String> {
        let bytes = serde_json::to_vec(value).map_err(|e| format!("cannot encode JSON: {e}"))?;
        Ok(self.with_value(bytes))
    }
}

impl Outcome {
    /// Filters the message out: it produces nothing and is acknowledged.
    pub fn drop() -> Self {
        Outcome::Emit(Vec::new())
    }

    /// Emits exactly one output (a map).
    pub fn one(output: impl Into<Output>) -> Self {
        Outcome::Emit(vec![output.into()])
    }

    /// Emits any number of outputs (a flat-map).
    pub fn many(outputs: impl IntoIterator<Item = Output>) -> Self {
        Outcome::Emit(outputs.into_iter().collect())
    }

    /// Fails the message; the stage's `on_error` policy decides what happens.
    pub fn fail(reason: impl Into<String>) -> Self {
        Outcome::Fail(reason.into())
    }
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Outcome::one(output)
    }
}

impl From<Message> for Outcome {
    fn from(message: Message) -> Self {
        Outcome::one(message)
    }
}

impl From<Option<Output>> for Outcome {
    fn from(output: Option<Output>) -> Self {
        match output {
            Some(output) => Outcome::one(output),
            None => Outcome::drop(),
        }
    }
}

impl<E: std::fmt::Display> From<Result<Output, E>> for Outcome {
    fn from(result: Result<Output, E>) -> Self {
        match result {
            Ok(output) => Outcome::one(output),
            Err(e) => Outcome::fail(e.to_string()),
        }
    }
}
