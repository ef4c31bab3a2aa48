//! Line-oriented reading shared by the file and stdin sources: a record ends
//! at `\n`, and no line may grow past the source's `max_message_bytes`, so
//! endless input without a newline (`/dev/zero`) cannot exhaust memory.

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

use super::{Read, SourceContext, format};
use crate::config::Format;
use crate::flow::ack::{AckTracker, Released};
use crate::message::{Message, Origin};

/// Where a line source is: lines and bytes read, and whether that is the
/// end of the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinePosition {
    /// Lines read.
    pub line: u64,
    /// Bytes read.
    pub byte: u64,
    /// The input ended here.
    pub end: bool,
}

/// How a line source reads.
#[derive(Debug, Clone, Copy)]
pub struct LineLimits {
    /// Most lines per batch.
    pub batch: usize,
    /// Longest line, without its `\n`.
    pub max_message_bytes: usize,
}

/// Reads `reader` to its end (or until shutdown), in batches of at most
/// `limits.batch` lines; a batch closes early when no more input is
/// buffered, so an interactive stdin is not held back. Lines that do not
/// decode go to the dead letter with the reason and their line number; a
/// line longer than `limits.max_message_bytes` stops the source with an
/// error. Reading starts at `start` (the reader is already there); each
/// batch's position is where it ends, and reaching the end of the input
/// registers one more, empty, batch at the end.
pub async fn run<R: AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    format: Format,
    limits: LineLimits,
    origin: &str,
    ctx: &SourceContext,
    (tracker, mut released): (AckTracker<LinePosition>, Released<LinePosition>),
    start: LinePosition,
) -> Result<()> {
    let batch = limits.batch;
    let mut line_no = start.line;
    let mut byte = start.byte;
    let mut line = Vec::new();
    let mut eof = false;
    let mut too_long = None;
    while !eof && too_long.is_none() && !ctx.shutdown().is_cancelled() {
        let mut messages = Vec::with_capacity(batch);
        let mut rejected = Vec::new();
        loop {
            line.clear();
            let read = tokio::select! {
                biased;
                _ = ctx.shutdown().cancelled(), if messages.is_empty() && rejected.is_empty() => break,
                read = read_line(&mut reader, &mut line, limits.max_message_bytes) => {
                    read.with_context(|| format!("reading {origin}"))?
                }
            };
            match read {
                Line::Complete => {
                    line_no += 1;
                    byte += line.len() as u64;
                }
                Line::End => {
                    eof = true;
                    break;
                }
                Line::TooLong => {
                    too_long = Some(line_no + 1);
                    break;
                }
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            match format::decode(format, text) {
                Ok(mut message) => {
                    message.origin =
                        Some(Origin { name: origin.to_string(), partition: None, offset: Some(line_no), id: None });
                    messages.push(message);
                }
                Err(reason) => {
                    rejected.push((Message::from_value(text.to_vec()), format!("{origin} line {line_no}: {reason}")))
                }
            }
            if messages.len() + rejected.len() >= batch || reader.buffer().is_empty() {
                break;
            }
        }
        if messages.is_empty() && rejected.is_empty() {
            continue;
        }
        let position = LinePosition { line: line_no, byte, end: false };
        if ctx.hand_over(&tracker, 0, position, Read { messages, rejected }).await.is_err() {
            break;
        }
        while let Ok((_, position)) = released.try_recv() {
            tracing::trace!(source = ctx.name(), line = position.line, "lines done");
        }
    }
    if eof {
        let end = LinePosition { line: line_no, byte, end: true };
        let _ = ctx.hand_over(&tracker, 0, end, Read::default()).await;
    }
    ctx.drain(&tracker, &mut released, |_, position| {
        tracing::trace!(source = ctx.name(), line = position.line, "lines done")
    })
    .await;
    // The lines before an overlong one are written first; then the source fails.
    if let Some(line_no) = too_long {
        bail!(
            "{origin} line {line_no} is longer than max_message_bytes ({} bytes); raise `max_message_bytes` on the \
             source if such records are expected",
            limits.max_message_bytes
        );
    }
    Ok(())
}

/// What [`read_line`] found.
enum Line {
    /// A line, with its `\n` unless it ends the input.
    Complete,
    /// The input ended before any byte.
    End,
    /// More than the maximum without a `\n`: the line is not read further.
    TooLong,
}

/// `read_until(b'\n')` that gives up once the line exceeds `max` bytes
/// (not counting the `\n`), instead of buffering without bound.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() { Line::End } else { Line::Complete });
        }
        let (chunk, complete) = match memchr::memchr(b'\n', available) {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        let content = chunk.len() - usize::from(complete);
        if line.len() + content > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len();
        reader.consume(used);
        if complete {
            return Ok(Line::Complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            match read_line(&mut reader, &mut line, max).await.unwrap() {
                Line::Complete => out.push(Ok(line)),
                Line::End => return out,
                Line::TooLong => {
                    out.push(Err("too long"));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn lines_end_at_newline_only_and_are_bounded() {
        assert_eq!(
            lines(b"a\r\nb\rc\n\nlast", 10).await,
            [Ok(b"a\r\n".to_vec()), Ok(b"b\rc\n".to_vec()), Ok(b"\n".to_vec()), Ok(b"last".to_vec())]
        );
        assert_eq!(lines(b"12345\n123456\n", 5).await, [Ok(b"12345\n".to_vec()), Err("too long")]);
        assert_eq!(lines(&[0u8; 100], 50).await, [Err("too long")]);
    }
}
