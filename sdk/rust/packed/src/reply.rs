//! The reply buffer: written by the plugin, read (and distrusted) by the host.

use crate::batch::{Entry, entry_accessors};
use crate::layout::{
    HEADER_WORDS, OUTCOME_WORDS, OUTPUT_WORDS, REPLY_HEADER_WORDS, REPLY_MAGIC, ROUTE_WORDS, VERSION, outcome_kind,
    output_flags as flag,
};
use crate::words::{Fault, align8, check_header, fault, put, span, table, text, word};

/// Builds a reply: outcomes in input order. Outputs pushed with
/// [`ReplyWriter::output`] belong to the next [`ReplyWriter::emit`].
///
/// Variable-length bytes go straight into the final buffer; the tables are
/// collected aside and appended by [`ReplyWriter::finish`], so nothing is
/// copied twice.
#[derive(Default)]
pub struct ReplyWriter {
    data: Vec<u8>,
    outcomes: Vec<u32>,
    outputs: Vec<u32>,
    headers: Vec<u32>,
    routes: Vec<u32>,
    emitted: u32,
    pending: u32,
}

impl ReplyWriter {
    /// An empty reply.
    pub fn new() -> Self {
        let mut writer = ReplyWriter::default();
        writer.data.resize(REPLY_HEADER_WORDS * 4, 0);
        writer
    }

    /// Appends bytes to the data area.
    fn data(&mut self, bytes: &[u8]) -> (u32, u32) {
        let off = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        (off, bytes.len() as u32)
    }

    /// The index of `route` in the route table, adding it on first use.
    fn route(&mut self, route: &str) -> u32 {
        let found = self.routes.chunks_exact(ROUTE_WORDS).position(|r| {
            let (off, len) = (r[0] as usize, r[1] as usize);
            self.data[off..off + len] == *route.as_bytes()
        });
        match found {
            Some(index) => index as u32,
            None => {
                let (off, len) = self.data(route.as_bytes());
                self.routes.extend([off, len]);
                (self.routes.len() / ROUTE_WORDS - 1) as u32
            }
        }
    }

    /// Adds an output to the next [`ReplyWriter::emit`].
    pub fn output<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        timestamp_ms: Option<u64>,
        route: Option<&str>,
    ) {
        let mut entry = [0u32; OUTPUT_WORDS];
        let mut flags = 0;
        if let Some(key) = key {
            flags |= flag::KEY;
            (entry[1], entry[2]) = self.data(key);
        }
        (entry[3], entry[4]) = self.data(value);
        entry[5] = (self.headers.len() / HEADER_WORDS) as u32;
        for (name, value) in headers {
            let name = self.data(name.as_bytes());
            let value = self.data(value);
            self.headers.extend([name.0, name.1, value.0, value.1]);
        }
        entry[6] = (self.headers.len() / HEADER_WORDS) as u32 - entry[5];
        if let Some(ts) = timestamp_ms {
            flags |= flag::TIMESTAMP;
            (entry[7], entry[8]) = (ts as u32, (ts >> 32) as u32);
        }
        if let Some(route) = route {
            flags |= flag::ROUTE;
            entry[9] = self.route(route);
        }
        entry[0] = flags;
        self.outputs.extend(entry);
        self.pending += 1;
    }

    /// Ends an outcome that emits the outputs added since the last outcome
    /// (none: the input is filtered out).
    pub fn emit(&mut self) {
        self.outcomes.extend([outcome_kind::EMIT, self.emitted, self.pending, 0]);
        self.emitted += self.pending;
        self.pending = 0;
    }

    /// An outcome that forwards the input unchanged.
    pub fn keep(&mut self) {
        debug_assert_eq!(self.pending, 0, "outputs added before keep()");
        self.outcomes.extend([outcome_kind::KEEP, 0, 0, 0]);
    }

    /// An outcome that fails the input with `reason`.
    pub fn fail(&mut self, reason: &str) {
        debug_assert_eq!(self.pending, 0, "outputs added before fail()");
        let (off, len) = self.data(reason.as_bytes());
        self.outcomes.extend([outcome_kind::FAIL, off, len, 0]);
    }

    /// Number of outcomes so far.
    pub fn outcome_count(&self) -> usize {
        self.outcomes.len() / OUTCOME_WORDS
    }

    /// Assembles the reply.
    pub fn finish(mut self) -> Vec<u8> {
        let append = |data: &mut Vec<u8>, words: &[u32]| {
            align8(data);
            let off = data.len() as u32;
            data.reserve(words.len() * 4);
            for w in words {
                data.extend_from_slice(&w.to_le_bytes());
            }
            off
        };
        let outcomes_off = append(&mut self.data, &self.outcomes);
        let outputs_off = append(&mut self.data, &self.outputs);
        let headers_off = append(&mut self.data, &self.headers);
        let routes_off = append(&mut self.data, &self.routes);
        let total = self.data.len() as u32;
        let header = [
            u32::from_le_bytes(REPLY_MAGIC),
            VERSION,
            (self.outcomes.len() / OUTCOME_WORDS) as u32,
            (self.outputs.len() / OUTPUT_WORDS) as u32,
            (self.headers.len() / HEADER_WORDS) as u32,
            (self.routes.len() / ROUTE_WORDS) as u32,
            outcomes_off,
            outputs_off,
            headers_off,
            routes_off,
            total,
            0,
        ];
        for (i, w) in header.into_iter().enumerate() {
            put(&mut self.data, i, w);
        }
        self.data
    }
}

/// A checked, read-only view of a reply.
pub struct Reply<'a> {
    buf: &'a [u8],
    outcomes: &'a [u8],
    outputs: &'a [u8],
    headers: &'a [u8],
    routes: Vec<&'a str>,
}

/// What became of one input.
pub enum OutcomeView<'a> {
    /// Emit these outputs (none: filtered out).
    Emit(OutputIter<'a>),
    /// Forward the input unchanged.
    Keep,
    /// Fail the input with this reason.
    Fail(&'a str),
}

impl<'a> Reply<'a> {
    /// Checks every table, range, span and string of `buf`: a reply to a
    /// batch of `inputs` messages (1 for an aggregator, which may not
    /// `keep`).
    pub fn parse(buf: &'a [u8], inputs: usize, allow_keep: bool) -> Result<Self, Fault> {
        check_header(buf, "packed reply", REPLY_MAGIC, REPLY_HEADER_WORDS, 10)?;
        let (outcome_count, output_count, header_count, route_count) =
            (word(buf, 2), word(buf, 3), word(buf, 4), word(buf, 5));
        if outcome_count as usize != inputs {
            return Err(fault!("reply has {outcome_count} outcomes for {inputs} input messages"));
        }
        let outcomes = table(buf, "outcome", word(buf, 6), outcome_count, OUTCOME_WORDS)?;
        let outputs = table(buf, "output", word(buf, 7), output_count, OUTPUT_WORDS)?;
        let headers = table(buf, "header", word(buf, 8), header_count, HEADER_WORDS)?;
        let route_table = table(buf, "route", word(buf, 9), route_count, ROUTE_WORDS)?;
        let total = buf.len();

        let mut routes = Vec::with_capacity(route_count as usize);
        for r in 0..route_count as usize {
            let (off, len) = (word(route_table, r * 2), word(route_table, r * 2 + 1));
            let range = span(total, off, len)
                .ok_or_else(|| fault!("route {r}: name span {off}+{len} is outside the {total}-byte reply"))?;
            routes.push(text(buf, range, || format!("route {r}: name"))?);
        }

        let mut next_output = 0u32;
        for i in 0..outcome_count as usize {
            let e = &outcomes[i * OUTCOME_WORDS * 4..(i + 1) * OUTCOME_WORDS * 4];
            let (a, b) = (word(e, 1), word(e, 2));
            if word(e, 3) != 0 {
                return Err(fault!("outcome {i}: reserved word is not 0"));
            }
            match word(e, 0) {
                outcome_kind::EMIT => {
                    if a != next_output {
                        return Err(fault!(
                            "outcome {i}: emits outputs from {a}, expected {next_output} (outputs must be consecutive, in outcome order)"
                        ));
                    }
                    next_output = a.checked_add(b).filter(|&end| end <= output_count).ok_or_else(|| {
                        fault!("outcome {i}: emits {b} outputs from {a}, past the {output_count} in the output table")
                    })?;
                }
                outcome_kind::KEEP if !allow_keep => {
                    return Err(fault!("outcome {i}: `keep` is not allowed in an aggregator reply"));
                }
                outcome_kind::KEEP if a != 0 || b != 0 => {
                    return Err(fault!("outcome {i}: `keep` with non-zero words"));
                }
                outcome_kind::KEEP => {}
                outcome_kind::FAIL => {
                    let range = span(total, a, b).ok_or_else(|| {
                        fault!("outcome {i}: failure reason span {a}+{b} is outside the {total}-byte reply")
                    })?;
                    text(buf, range, || format!("outcome {i}: failure reason"))?;
                }
                kind => return Err(fault!("outcome {i}: unknown kind {kind}")),
            }
        }
        if next_output != output_count {
            return Err(fault!("outcomes emit {next_output} outputs but the output table holds {output_count}"));
        }

        let mut next_header = 0u32;
        for o in 0..output_count as usize {
            let e = &outputs[o * OUTPUT_WORDS * 4..(o + 1) * OUTPUT_WORDS * 4];
            let flags = word(e, 0);
            if flags & !flag::ALL != 0 {
                return Err(fault!("output {o}: unknown flag bits {flags:#x}"));
            }
            if word(e, 10) != 0 || word(e, 11) != 0 {
                return Err(fault!("output {o}: reserved words are not 0"));
            }
            let check = |w: usize, field: &str| {
                let (off, len) = (word(e, w), word(e, w + 1));
                span(total, off, len)
                    .ok_or_else(|| fault!("output {o}: {field} span {off}+{len} is outside the {total}-byte reply"))
            };
            if flags & flag::KEY != 0 {
                check(1, "key")?;
            }
            check(3, "value")?;
            if word(e, 5) != next_header {
                return Err(fault!(
                    "output {o}: headers start at {}, expected {next_header} (header ranges must be consecutive)",
                    word(e, 5)
                ));
            }
            next_header = next_header.checked_add(word(e, 6)).filter(|&end| end <= header_count).ok_or_else(|| {
                fault!("output {o}: {} headers run past the {header_count} in the header table", word(e, 6))
            })?;
            if flags & flag::ROUTE != 0 && word(e, 9) >= route_count {
                return Err(fault!("output {o}: route {} is not in the {route_count}-entry route table", word(e, 9)));
            }
        }
        if next_header != header_count {
            return Err(fault!("outputs use {next_header} headers but the header table holds {header_count}"));
        }
        for h in 0..header_count as usize {
            let e = &headers[h * HEADER_WORDS * 4..(h + 1) * HEADER_WORDS * 4];
            let name = span(total, word(e, 0), word(e, 1))
                .ok_or_else(|| fault!("header {h}: name span is outside the reply"))?;
            text(buf, name, || format!("header {h}: name"))?;
            span(total, word(e, 2), word(e, 3)).ok_or_else(|| fault!("header {h}: value span is outside the reply"))?;
        }
        Ok(Reply { buf, outcomes, outputs, headers, routes })
    }

    /// Number of outcomes (one per input).
    pub fn len(&self) -> usize {
        self.outcomes.len() / (OUTCOME_WORDS * 4)
    }

    /// Whether there are no outcomes.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Number of outputs of all outcomes together.
    pub fn output_count(&self) -> usize {
        self.outputs.len() / (OUTPUT_WORDS * 4)
    }

    /// Total bytes of the reply.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The route names, by index (resolve each once per batch).
    pub fn routes(&self) -> &[&'a str] {
        &self.routes
    }

    /// The outcomes, in input order.
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = OutcomeView<'a>> + '_ {
        let (buf, outputs, headers) = (self.buf, self.outputs, self.headers);
        self.outcomes.chunks_exact(OUTCOME_WORDS * 4).map(move |e| {
            let (a, b) = (word(e, 1) as usize, word(e, 2) as usize);
            match word(e, 0) {
                outcome_kind::EMIT => OutcomeView::Emit(OutputIter {
                    buf,
                    headers,
                    table: &outputs[a * OUTPUT_WORDS * 4..(a + b) * OUTPUT_WORDS * 4],
                }),
                outcome_kind::KEEP => OutcomeView::Keep,
                // Parsed: the only other kind is FAIL, with a UTF-8 reason.
                _ => OutcomeView::Fail(std::str::from_utf8(&buf[a..a + b]).unwrap_or_default()),
            }
        })
    }
}

/// The outputs of one `emit` outcome.
pub struct OutputIter<'a> {
    buf: &'a [u8],
    headers: &'a [u8],
    table: &'a [u8],
}

impl<'a> Iterator for OutputIter<'a> {
    type Item = OutputView<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.table.is_empty() {
            return None;
        }
        let (entry, rest) = self.table.split_at(OUTPUT_WORDS * 4);
        self.table = rest;
        Some(OutputView(Entry::new(self.buf, entry, self.headers)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.table.len() / (OUTPUT_WORDS * 4);
        (n, Some(n))
    }
}

impl ExactSizeIterator for OutputIter<'_> {}

/// One output of a parsed [`Reply`].
pub struct OutputView<'a>(Entry<'a, OUTPUT_WORDS>);

impl<'a> OutputView<'a> {
    entry_accessors!();

    /// Index into [`Reply::routes`], when the output has a route.
    pub fn route(&self) -> Option<usize> {
        self.0.flag(flag::ROUTE).then_some(self.0.w[9] as usize)
    }
}
