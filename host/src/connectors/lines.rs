//! Line-oriented reading shared by the file and stdin sources.

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{SourceContext, format};
use crate::config::Format;
use crate::message::{Message, Origin};

/// Reads `reader` to its end (or until shutdown), in batches of at most
/// `batch` lines; a batch closes early when no more input is buffered, so an
/// interactive stdin is not held back. Lines that do not decode go to the
/// dead letter with the reason and their line number.
pub async fn run<R: AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    format: Format,
    batch: usize,
    origin: &str,
    ctx: &SourceContext,
) -> Result<()> {
    let (tracker, mut released) = ctx.tracker::<u64>();
    let mut line_no: u64 = 0;
    let mut line = Vec::new();
    let mut eof = false;
    while !eof && !ctx.shutdown().is_cancelled() {
        let mut messages = Vec::with_capacity(batch);
        let mut rejected = Vec::new();
        loop {
            line.clear();
            let read = tokio::select! {
                biased;
                _ = ctx.shutdown().cancelled(), if messages.is_empty() && rejected.is_empty() => break,
                read = reader.read_until(b'\n', &mut line) => read.with_context(|| format!("reading {origin}"))?,
            };
            if read == 0 {
                eof = true;
                break;
            }
            line_no += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
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
        let token = tracker.register(0, line_no, messages.len() + rejected.len());
        for (message, reason) in rejected {
            tracing::warn!(source = ctx.name(), "{reason}");
            ctx.reject(message, reason, token.clone()).await;
        }
        if ctx.emit(messages, token).await.is_err() {
            break;
        }
        while let Ok((_, position)) = released.try_recv() {
            tracing::trace!(source = ctx.name(), line = position, "lines done");
        }
    }
    ctx.drain(&tracker, &mut released, |_, position| {
        tracing::trace!(source = ctx.name(), line = position, "lines done")
    })
    .await;
    Ok(())
}
