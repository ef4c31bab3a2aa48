//! Reading a message where it lies: [`Processor::decide_in_place`] sees a
//! [`MessageRef`] borrowed from the host's packed batch (or from an owned
//! [`Message`] in the record world) and can keep, drop or fail the message
//! without a single copy.
//!
//! [`Processor::decide_in_place`]: crate::Processor::decide_in_place

use weir_packed::{HeaderIter, MessageView};

use crate::{Header, Message};

/// A message read in place: the same information as a [`Message`], borrowed.
#[derive(Clone, Copy)]
pub struct MessageRef<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    Packed(MessageView<'a>),
    Owned(&'a Message),
}

impl<'a> MessageRef<'a> {
    pub(crate) fn packed(view: MessageView<'a>) -> Self {
        MessageRef(Repr::Packed(view))
    }

    pub(crate) fn owned(message: &'a Message) -> Self {
        MessageRef(Repr::Owned(message))
    }

    /// The key; `None` (no key) is distinct from an empty key.
    pub fn key(&self) -> Option<&'a [u8]> {
        match self.0 {
            Repr::Packed(view) => view.key(),
            Repr::Owned(message) => message.key.as_deref(),
        }
    }

    /// The value.
    pub fn value(&self) -> &'a [u8] {
        match self.0 {
            Repr::Packed(view) => view.value(),
            Repr::Owned(message) => &message.value,
        }
    }

    /// The value as UTF-8 text, if it is valid UTF-8.
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value()).ok()
    }

    /// Parses the value as JSON (borrowing from it where the type allows).
    pub fn json<T: serde::Deserialize<'a>>(&self) -> Result<T, String> {
        serde_json::from_slice(self.value()).map_err(|e| format!("value is not valid JSON: {e}"))
    }

    /// The headers in order: `(name, value)`; names may repeat.
    pub fn headers(&self) -> HeadersRef<'a> {
        match self.0 {
            Repr::Packed(view) => HeadersRef(HeadersRepr::Packed(view.headers())),
            Repr::Owned(message) => HeadersRef(HeadersRepr::Owned(message.headers.iter())),
        }
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, value)| value)
    }

    /// Milliseconds since the Unix epoch, when known.
    pub fn timestamp_ms(&self) -> Option<u64> {
        match self.0 {
            Repr::Packed(view) => view.timestamp_ms(),
            Repr::Owned(message) => message.timestamp_ms,
        }
    }
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    /// Views an owned message the same way, so one function can serve both
    /// `decide_in_place` and `process`.
    fn from(message: &'a Message) -> Self {
        MessageRef::owned(message)
    }
}

/// The headers of a [`MessageRef`].
pub struct HeadersRef<'a>(HeadersRepr<'a>);

enum HeadersRepr<'a> {
    Packed(HeaderIter<'a>),
    Owned(std::slice::Iter<'a, Header>),
}

impl<'a> Iterator for HeadersRef<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            HeadersRepr::Packed(iter) => iter.next(),
            HeadersRepr::Owned(iter) => iter.next().map(|h| (h.name.as_str(), h.value.as_slice())),
        }
    }
}

/// What [`Processor::decide_in_place`](crate::Processor::decide_in_place)
/// can decide about a message without copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the message unchanged (`keep`: nothing crosses back).
    Keep,
    /// Filter the message out.
    Drop,
    /// Fail the message; the stage's `on_error` policy applies.
    Fail(String),
}
