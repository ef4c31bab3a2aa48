//! The batch buffer: written by the host, read by the plugin.

use std::fmt;

use crate::layout::{BATCH_HEADER_WORDS, BATCH_MAGIC, HEADER_WORDS, MESSAGE_WORDS, VERSION, message_flags as flag};
use crate::words::{Fault, align8, check_header, fault, put, span, table, text, word, words};

/// Where a message was read from (the WIT `origin` record, borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginRef<'a> {
    /// Topic, stream or file name.
    pub name: &'a str,
    /// Partition, for partitioned sources.
    pub partition: Option<u32>,
    /// Numeric position.
    pub offset: Option<u64>,
    /// Opaque position.
    pub id: Option<&'a str>,
}

/// A batch would not fit the layout's 32-bit offsets (over 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the batch does not fit in a packed buffer (over 4 GiB)")
    }
}

impl std::error::Error for TooLarge {}

/// Writes a batch into a reusable buffer: [`BatchWriter::new`] with the
/// message and header counts, one [`BatchWriter::push`] per message, then
/// [`BatchWriter::finish`].
pub struct BatchWriter<'b> {
    buf: &'b mut Vec<u8>,
    count: usize,
    header_count: usize,
    pushed: usize,
    headers_pushed: usize,
    /// The last origin name written: consecutive messages of one topic share it.
    last_origin: Option<(u32, u32)>,
}

const MESSAGES_OFF: usize = BATCH_HEADER_WORDS * 4;

impl<'b> BatchWriter<'b> {
    /// Starts a batch of `count` messages carrying `header_count` headers in
    /// all. `buf` is cleared; its capacity is reused.
    pub fn new(buf: &'b mut Vec<u8>, count: usize, header_count: usize) -> Result<Self, TooLarge> {
        let headers_off = MESSAGES_OFF + count.checked_mul(MESSAGE_WORDS * 4).ok_or(TooLarge)?;
        let data_off =
            headers_off.checked_add(header_count.checked_mul(HEADER_WORDS * 4).ok_or(TooLarge)?).ok_or(TooLarge)?;
        let (Ok(count32), Ok(headers32), Ok(headers_off32)) =
            (u32::try_from(count), u32::try_from(header_count), u32::try_from(headers_off))
        else {
            return Err(TooLarge);
        };
        u32::try_from(data_off).map_err(|_| TooLarge)?;
        buf.clear();
        buf.resize(data_off, 0);
        buf[..4].copy_from_slice(&BATCH_MAGIC);
        put(buf, 1, VERSION);
        put(buf, 2, count32);
        put(buf, 3, headers32);
        put(buf, 4, MESSAGES_OFF as u32);
        put(buf, 5, headers_off32);
        Ok(BatchWriter { buf, count, header_count, pushed: 0, headers_pushed: 0, last_origin: None })
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(u32, u32), TooLarge> {
        let off = u32::try_from(self.buf.len()).map_err(|_| TooLarge)?;
        let len = u32::try_from(bytes.len()).map_err(|_| TooLarge)?;
        off.checked_add(len).ok_or(TooLarge)?;
        self.buf.extend_from_slice(bytes);
        Ok((off, len))
    }

    /// Appends one message. Panics if more messages or headers are pushed
    /// than announced to [`BatchWriter::new`] (a bug in the caller).
    pub fn push<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        timestamp_ms: Option<u64>,
        origin: Option<OriginRef<'_>>,
    ) -> Result<(), TooLarge> {
        assert!(self.pushed < self.count, "more messages pushed than announced");
        let mut entry = [0u32; MESSAGE_WORDS];
        let mut flags = 0;
        if let Some(key) = key {
            flags |= flag::KEY;
            (entry[1], entry[2]) = self.data(key)?;
        }
        (entry[3], entry[4]) = self.data(value)?;
        entry[5] = self.headers_pushed as u32;
        let headers_off = word(self.buf, 5) as usize;
        for (name, value) in headers {
            assert!(self.headers_pushed < self.header_count, "more headers pushed than announced");
            let name = self.data(name.as_bytes())?;
            let value = self.data(value)?;
            let at = headers_off / 4 + self.headers_pushed * HEADER_WORDS;
            for (i, w) in [name.0, name.1, value.0, value.1].into_iter().enumerate() {
                put(self.buf, at + i, w);
            }
            self.headers_pushed += 1;
        }
        entry[6] = self.headers_pushed as u32 - entry[5];
        if let Some(ts) = timestamp_ms {
            flags |= flag::TIMESTAMP;
            (entry[7], entry[8]) = (ts as u32, (ts >> 32) as u32);
        }
        if let Some(origin) = origin {
            flags |= flag::ORIGIN;
            let reuse = self
                .last_origin
                .filter(|&(off, len)| self.buf[off as usize..(off + len) as usize] == *origin.name.as_bytes());
            (entry[9], entry[10]) = match reuse {
                Some(name) => name,
                None => self.data(origin.name.as_bytes())?,
            };
            self.last_origin = Some((entry[9], entry[10]));
            if let Some(partition) = origin.partition {
                flags |= flag::PARTITION;
                entry[11] = partition;
            }
            if let Some(offset) = origin.offset {
                flags |= flag::OFFSET;
                (entry[12], entry[13]) = (offset as u32, (offset >> 32) as u32);
            }
            if let Some(id) = origin.id {
                flags |= flag::ID;
                (entry[14], entry[15]) = self.data(id.as_bytes())?;
            }
        }
        entry[0] = flags;
        let at = MESSAGES_OFF / 4 + self.pushed * MESSAGE_WORDS;
        for (i, w) in entry.into_iter().enumerate() {
            put(self.buf, at + i, w);
        }
        self.pushed += 1;
        Ok(())
    }

    /// Completes the batch. Panics if fewer messages or headers were pushed
    /// than announced (a bug in the caller).
    pub fn finish(self) -> Result<(), TooLarge> {
        assert_eq!(self.pushed, self.count, "fewer messages pushed than announced");
        assert_eq!(self.headers_pushed, self.header_count, "fewer headers pushed than announced");
        align8(self.buf);
        let total = u32::try_from(self.buf.len()).map_err(|_| TooLarge)?;
        put(self.buf, 6, total);
        Ok(())
    }
}

/// A checked, read-only view of a batch.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    buf: &'a [u8],
    messages: &'a [u8],
    headers: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Checks every table, span and string of `buf` and returns a view.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Fault> {
        check_header(buf, "packed batch", BATCH_MAGIC, BATCH_HEADER_WORDS, 6)?;
        let count = word(buf, 2);
        let header_count = word(buf, 3);
        let messages = table(buf, "message", word(buf, 4), count, MESSAGE_WORDS)?;
        let headers = table(buf, "header", word(buf, 5), header_count, HEADER_WORDS)?;
        let batch = Batch { buf, messages, headers };
        let total = buf.len();
        let mut next_header = 0u32;
        for i in 0..count as usize {
            let e = &messages[i * MESSAGE_WORDS * 4..(i + 1) * MESSAGE_WORDS * 4];
            let flags = word(e, 0);
            if flags & !flag::ALL != 0 {
                return Err(fault!("message {i}: unknown flag bits {flags:#x}"));
            }
            let check = |off, len, field: &str| {
                span(total, off, len)
                    .ok_or_else(|| fault!("message {i}: {field} span {off}+{len} is outside the {total}-byte batch"))
            };
            if flags & flag::KEY != 0 {
                check(word(e, 1), word(e, 2), "key")?;
            }
            check(word(e, 3), word(e, 4), "value")?;
            if word(e, 5) != next_header {
                return Err(fault!("message {i}: headers start at {} instead of {next_header}", word(e, 5)));
            }
            next_header = next_header
                .checked_add(word(e, 6))
                .filter(|&n| n <= header_count)
                .ok_or_else(|| fault!("message {i}: {} headers run past the header table", word(e, 6)))?;
            if flags & flag::ORIGIN != 0 {
                let name = check(word(e, 9), word(e, 10), "origin name")?;
                text(buf, name, || format!("message {i}: origin name"))?;
                if flags & flag::ID != 0 {
                    let id = check(word(e, 14), word(e, 15), "origin id")?;
                    text(buf, id, || format!("message {i}: origin id"))?;
                }
            } else if flags & (flag::PARTITION | flag::OFFSET | flag::ID) != 0 {
                return Err(fault!("message {i}: origin fields without an origin"));
            }
        }
        if next_header != header_count {
            return Err(fault!("messages use {next_header} headers but the table holds {header_count}"));
        }
        for h in 0..header_count as usize {
            let e = &headers[h * HEADER_WORDS * 4..(h + 1) * HEADER_WORDS * 4];
            let name = span(total, word(e, 0), word(e, 1))
                .ok_or_else(|| fault!("header {h}: name span is outside the batch"))?;
            text(buf, name, || format!("header {h}: name"))?;
            span(total, word(e, 2), word(e, 3)).ok_or_else(|| fault!("header {h}: value span is outside the batch"))?;
        }
        Ok(batch)
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len() / (MESSAGE_WORDS * 4)
    }

    /// Whether the batch has no messages.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Message `index` (panics if out of range).
    pub fn message(&self, index: usize) -> MessageView<'a> {
        let entry = &self.messages[index * MESSAGE_WORDS * 4..(index + 1) * MESSAGE_WORDS * 4];
        MessageView(Entry::new(self.buf, entry, self.headers))
    }

    /// The messages in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = MessageView<'a>> + '_ {
        (0..self.len()).map(|i| self.message(i))
    }
}

/// A message or output entry, its words read once, with the buffer and the
/// header table its spans point into. Both entries share their first nine
/// words: flags, key, value, header range, timestamp (same flag bits).
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a, const N: usize> {
    pub(crate) buf: &'a [u8],
    pub(crate) w: [u32; N],
    pub(crate) headers: &'a [u8],
}

/// Flag bits (word 0) common to message and output entries.
const KEY: u32 = flag::KEY;
const TIMESTAMP: u32 = flag::TIMESTAMP;
const _: () = assert!(
    KEY == crate::layout::output_flags::KEY && TIMESTAMP == crate::layout::output_flags::TIMESTAMP,
    "message and output entries share their key and timestamp flag bits"
);

impl<'a, const N: usize> Entry<'a, N> {
    pub(crate) fn new(buf: &'a [u8], entry: &'a [u8], headers: &'a [u8]) -> Self {
        Entry { buf, w: words(entry), headers }
    }

    #[inline]
    pub(crate) fn flag(&self, bit: u32) -> bool {
        self.w[0] & bit != 0
    }

    /// The span at words `off_word`, `off_word + 1`.
    #[inline]
    pub(crate) fn bytes(&self, off_word: usize) -> &'a [u8] {
        let off = self.w[off_word] as usize;
        &self.buf[off..off + self.w[off_word + 1] as usize]
    }

    #[inline]
    pub(crate) fn u64_at(&self, lo_word: usize) -> u64 {
        u64::from(self.w[lo_word]) | (u64::from(self.w[lo_word + 1]) << 32)
    }

    pub(crate) fn key(&self) -> Option<&'a [u8]> {
        self.flag(KEY).then(|| self.bytes(1))
    }

    pub(crate) fn value(&self) -> &'a [u8] {
        self.bytes(3)
    }

    pub(crate) fn headers(&self) -> HeaderIter<'a> {
        let (first, count) = (self.w[5] as usize, self.w[6] as usize);
        HeaderIter { buf: self.buf, table: &self.headers[first * HEADER_WORDS * 4..(first + count) * HEADER_WORDS * 4] }
    }

    pub(crate) fn timestamp_ms(&self) -> Option<u64> {
        self.flag(TIMESTAMP).then(|| self.u64_at(7))
    }
}

/// The accessors message and output views share, delegated to their entry.
macro_rules! entry_accessors {
    () => {
        /// The key; `None` (no key) is distinct from `Some(b"")`.
        pub fn key(&self) -> Option<&'a [u8]> {
            self.0.key()
        }

        /// The value.
        pub fn value(&self) -> &'a [u8] {
            self.0.value()
        }

        /// The headers in order (names may repeat).
        pub fn headers(&self) -> $crate::batch::HeaderIter<'a> {
            self.0.headers()
        }

        /// Number of headers.
        pub fn header_count(&self) -> usize {
            self.0.w[6] as usize
        }

        /// Milliseconds since the Unix epoch, when set.
        pub fn timestamp_ms(&self) -> Option<u64> {
            self.0.timestamp_ms()
        }
    };
}
pub(crate) use entry_accessors;

/// One message of a parsed [`Batch`]: every accessor borrows the buffer.
#[derive(Clone, Copy)]
pub struct MessageView<'a>(Entry<'a, MESSAGE_WORDS>);

impl<'a> MessageView<'a> {
    entry_accessors!();

    /// Where the message was read from, when the source has positions.
    pub fn origin(&self) -> Option<OriginRef<'a>> {
        if !self.0.flag(flag::ORIGIN) {
            return None;
        }
        // Parsed: names and ids are UTF-8.
        let as_str = |b: &'a [u8]| std::str::from_utf8(b).unwrap_or_default();
        Some(OriginRef {
            name: as_str(self.0.bytes(9)),
            partition: self.0.flag(flag::PARTITION).then_some(self.0.w[11]),
            offset: self.0.flag(flag::OFFSET).then(|| self.0.u64_at(12)),
            id: self.0.flag(flag::ID).then(|| as_str(self.0.bytes(14))),
        })
    }
}

/// The headers of one message or output: `(name, value)` pairs in order.
#[derive(Clone)]
pub struct HeaderIter<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) table: &'a [u8],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.table.is_empty() {
            return None;
        }
        let (entry, rest) = self.table.split_at(HEADER_WORDS * 4);
        self.table = rest;
        let w: [u32; HEADER_WORDS] = words(entry);
        let slice = |i: usize| {
            let off = w[i] as usize;
            &self.buf[off..off + w[i + 1] as usize]
        };
        // SAFETY: `Batch::parse` and `Reply::parse`, the only ways to get a
        // `HeaderIter`, checked that every header name in the table is UTF-8.
        Some((unsafe { std::str::from_utf8_unchecked(slice(0)) }, slice(2)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.table.len() / (HEADER_WORDS * 4);
        (n, Some(n))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}
