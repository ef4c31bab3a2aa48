//! The packed worlds' side of the SDK: decodes a packed batch into the
//! `Message`s user code expects, and encodes the outcomes into one reply.
//!
//! An output identical to its input (`Outcome::one(message)`, the usual
//! passthrough) is sent back as `keep`: the host forwards its own copy and
//! no byte of it crosses the boundary again.
//!
//! User code receives owned `Vec`s, so decoding allocates. Once a batch's
//! outputs are encoded their buffers are recycled for the next batch's
//! messages: in a steady stream, decoding reuses memory instead of calling
//! the (slow, in wasm) allocator several times per message.

use std::cell::RefCell;

use weir_packed::{Batch, MessageView, ReplyWriter};

use crate::{Aggregator, Decision, Header, Message, MessageRef, Origin, Outcome, Output, Processor};

/// Decodes the batch. The host wrote it, so a fault is a host bug: trap.
fn parse(batch: &[u8]) -> Batch<'_> {
    Batch::parse(batch).unwrap_or_else(|fault| panic!("weir sent a malformed packed batch: {fault}"))
}

/// Spare buffers from earlier batches' outputs.
#[derive(Default)]
struct Pool {
    bytes: Vec<Vec<u8>>,
    strings: Vec<String>,
    header_lists: Vec<Vec<Header>>,
}

/// Buffers kept at most, and the largest kept: bounds what the pool holds.
const POOL_MAX_BUFFERS: usize = 4096;
const POOL_MAX_CAPACITY: usize = 64 * 1024;

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

impl Pool {
    fn bytes(&mut self, from: &[u8]) -> Vec<u8> {
        match self.bytes.pop() {
            Some(mut buf) => {
                buf.clear();
                buf.extend_from_slice(from);
                buf
            }
            None => from.to_vec(),
        }
    }

    fn string(&mut self, from: &str) -> String {
        match self.strings.pop() {
            Some(mut buf) => {
                buf.clear();
                buf.push_str(from);
                buf
            }
            None => from.to_string(),
        }
    }

    fn message(&mut self, view: MessageView<'_>) -> Message {
        let mut headers = self.header_lists.pop().unwrap_or_default();
        headers.clear();
        for (name, value) in view.headers() {
            headers.push(Header { name: self.string(name), value: self.bytes(value) });
        }
        Message {
            key: view.key().map(|k| self.bytes(k)),
            value: self.bytes(view.value()),
            headers,
            timestamp_ms: view.timestamp_ms(),
            origin: view.origin().map(|o| Origin {
                name: o.name.to_string(),
                partition: o.partition,
                offset: o.offset,
                id: o.id.map(str::to_string),
            }),
        }
    }

    fn recycle_bytes(&mut self, buf: Vec<u8>) {
        if self.bytes.len() < POOL_MAX_BUFFERS && buf.capacity() <= POOL_MAX_CAPACITY {
            self.bytes.push(buf);
        }
    }

    fn recycle(&mut self, output: Output) {
        if let Some(key) = output.key {
            self.recycle_bytes(key);
        }
        self.recycle_bytes(output.value);
        let mut headers = output.headers;
        for header in headers.drain(..) {
            if self.strings.len() < POOL_MAX_BUFFERS && header.name.capacity() <= POOL_MAX_CAPACITY {
                self.strings.push(header.name);
            }
            self.recycle_bytes(header.value);
        }
        if self.header_lists.len() < POOL_MAX_BUFFERS && headers.capacity() <= POOL_MAX_CAPACITY {
            self.header_lists.push(headers);
        }
    }
}

/// Every message of `batch`, decoded (for aggregators).
fn to_messages(batch: &Batch<'_>) -> Vec<Message> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        batch.iter().map(|view| pool.message(view)).collect()
    })
}

/// Hands the outputs' buffers to the pool, once they are encoded.
fn recycle(outputs: impl IntoIterator<Item = Output>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        outputs.into_iter().for_each(|output| pool.recycle(output));
    })
}

/// Whether `output` is exactly `input` forwarded to the default route.
fn is_unchanged(output: &Output, input: &MessageView<'_>) -> bool {
    output.route.is_none()
        && output.timestamp_ms == input.timestamp_ms()
        && match (&output.key, input.key()) {
            (Some(a), Some(b)) => same_bytes(a, b),
            (None, None) => true,
            _ => false,
        }
        && same_bytes(&output.value, input.value())
        && output.headers.len() == input.header_count()
        && output
            .headers
            .iter()
            .zip(input.headers())
            .all(|(a, (name, value))| same_bytes(a.name.as_bytes(), name.as_bytes()) && same_bytes(&a.value, value))
}

/// Slice equality eight bytes at a time: wasm has no `memcmp` instruction,
/// and the byte-by-byte one from compiler-builtins dominated a passthrough.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_tail) = a.as_chunks::<8>();
    let (b_words, b_tail) = b.as_chunks::<8>();
    a_words.iter().zip(b_words).all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_tail.iter().zip(b_tail).all(|(x, y)| x == y)
}

fn write_output(reply: &mut ReplyWriter, output: &Output) {
    reply.output(
        output.key.as_deref(),
        &output.value,
        output.headers.iter().map(|h| (h.name.as_str(), h.value.as_slice())),
        output.timestamp_ms,
        output.route.as_deref(),
    );
}

/// `process-packed`: one reply outcome per input, in order.
pub fn process<P: Processor>(processor: Option<&mut P>, batch: &[u8]) -> Vec<u8> {
    let batch = parse(batch);
    let mut reply = ReplyWriter::new();
    let Some(processor) = processor else {
        for _ in 0..batch.len() {
            reply.fail("plugin used before init");
        }
        return reply.finish();
    };
    // The fast path first: what is decided in place is never decoded.
    let decided: Vec<Option<Decision>> =
        batch.iter().map(|view| processor.decide_in_place(MessageRef::packed(view))).collect();
    let undecided: Vec<usize> = (0..batch.len()).filter(|&i| decided[i].is_none()).collect();
    let outcomes = if undecided.is_empty() {
        Vec::new()
    } else {
        let messages = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            undecided.iter().map(|&i| pool.message(batch.message(i))).collect()
        });
        crate::__private::checked_outcomes(undecided.len(), processor.process_batch(messages))
    };
    let mut processed = outcomes.iter();
    for (decision, input) in decided.into_iter().zip(batch.iter()) {
        match decision {
            Some(Decision::Keep) => reply.keep(),
            Some(Decision::Drop) => reply.emit(),
            Some(Decision::Fail(reason)) => reply.fail(&reason),
            None => match processed.next() {
                Some(Outcome::Emit(outputs)) if outputs.len() == 1 && is_unchanged(&outputs[0], &input) => reply.keep(),
                Some(Outcome::Emit(outputs)) => {
                    for output in outputs {
                        write_output(&mut reply, output);
                    }
                    reply.emit();
                }
                Some(Outcome::Fail(reason)) => reply.fail(reason),
                // `checked_outcomes` gave one outcome per undecided message.
                None => reply.fail("process_batch returned too few outcomes"),
            },
        }
    }
    recycle(outcomes.into_iter().flat_map(|outcome| match outcome {
        Outcome::Emit(outputs) => outputs,
        Outcome::Fail(_) => Vec::new(),
    }));
    reply.finish()
}

/// The record world's `process`, with the same fast path as the packed one
/// (there a kept message is moved back whole).
pub fn process_records<P: Processor>(processor: &mut P, batch: Vec<Message>) -> Vec<Outcome> {
    let decided: Vec<Option<Decision>> =
        batch.iter().map(|message| processor.decide_in_place(MessageRef::owned(message))).collect();
    if decided.iter().all(Option::is_none) {
        return crate::__private::checked_outcomes(batch.len(), processor.process_batch(batch));
    }
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut undecided = Vec::new();
    for (decision, message) in decided.into_iter().zip(batch) {
        outcomes.push(match decision {
            Some(Decision::Keep) => Some(Outcome::one(message)),
            Some(Decision::Drop) => Some(Outcome::drop()),
            Some(Decision::Fail(reason)) => Some(Outcome::Fail(reason)),
            None => {
                undecided.push(message);
                None
            }
        });
    }
    let count = undecided.len();
    let mut processed = crate::__private::checked_outcomes(count, processor.process_batch(undecided)).into_iter();
    outcomes
        .into_iter()
        .map(|o| o.or_else(|| processed.next()).unwrap_or_else(|| Outcome::fail("missing outcome")))
        .collect()
}

/// `process-batch-packed`: one outcome for the whole batch.
pub fn aggregate<A: Aggregator>(aggregator: Option<&mut A>, batch_key: Option<Vec<u8>>, batch: &[u8]) -> Vec<u8> {
    let batch = parse(batch);
    let mut reply = ReplyWriter::new();
    let result = match aggregator {
        Some(aggregator) => aggregator.process_batch(batch_key, to_messages(&batch)),
        None => Err("plugin used before init".to_string()),
    };
    match result {
        Ok(outputs) => {
            for output in &outputs {
                write_output(&mut reply, output);
            }
            reply.emit();
            recycle(outputs);
        }
        Err(reason) => reply.fail(&reason),
    }
    reply.finish()
}
