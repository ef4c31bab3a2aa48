//! Guest stdout/stderr, forwarded line by line to `tracing`, tagged with the
//! stage. The last stderr lines are kept so a trap's reason can quote the
//! guest's panic message. A stage's plugin log lines (these and the `log`
//! host call) are rate-limited, so a chatty plugin cannot flood the host's
//! log or its disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Most a guest may write without a newline before the text is logged anyway.
const MAX_LINE: usize = 16 * 1024;
/// How much recent stderr text is kept for trap reasons.
const TAIL_LIMIT: usize = 2 * 1024;

/// Most plugin log lines one stage writes per second; the rest are dropped
/// and counted.
pub const MAX_LINES_PER_SECOND: u32 = 200;

/// The log-line rate limit of one stage, shared by its instances.
#[derive(Debug, Default)]
pub struct LogRate {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    lines: u32,
    dropped: u64,
}

impl LogRate {
    /// Whether a line of `stage` may be logged now. The first line of a new
    /// second reports how many were dropped in the last one.
    pub(crate) fn admit(&self, stage: &str) -> bool {
        let mut window = self.window.lock();
        let now = Instant::now();
        if window.started.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            if window.dropped > 0 {
                tracing::warn!(
                    target: "weir::plugin",
                    stage,
                    "{} plugin log lines dropped (more than {MAX_LINES_PER_SECOND} per second)",
                    window.dropped
                );
            }
            *window = Window { started: Some(now), lines: 0, dropped: 0 };
        }
        if window.lines < MAX_LINES_PER_SECOND {
            window.lines += 1;
            return true;
        }
        if window.dropped == 0 {
            tracing::warn!(
                target: "weir::plugin",
                stage,
                "plugin logs more than {MAX_LINES_PER_SECOND} lines per second: dropping lines for the rest of this second"
            );
        }
        window.dropped += 1;
        false
    }
}

/// Which guest stream a [`GuestOutput`] carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A guest output stream that writes to the host log.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    stage: Arc<str>,
    stream: Stream,
    rate: Arc<LogRate>,
    shared: Arc<Mutex<Buffers>>,
}

#[derive(Default)]
struct Buffers {
    partial: Vec<u8>,
    /// Recent stderr text, for trap reasons; cleared before each call.
    tail: String,
}

impl GuestOutput {
    pub(crate) fn new(stage: Arc<str>, stream: Stream, rate: Arc<LogRate>) -> Self {
        GuestOutput { stage, stream, rate, shared: Arc::default() }
    }

    /// Takes the stderr text written since the last call to this method.
    pub(crate) fn take_tail(&self) -> String {
        let mut shared = self.shared.lock();
        flush_partial(&self.stage, self.stream, &self.rate, &mut shared);
        std::mem::take(&mut shared.tail)
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut shared = self.shared.lock();
        shared.partial.extend_from_slice(bytes);
        while let Some(pos) = shared.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = shared.partial.drain(..=pos).collect();
            emit(&self.stage, self.stream, &self.rate, &line[..line.len() - 1], &mut shared.tail);
        }
        if shared.partial.len() > MAX_LINE {
            flush_partial(&self.stage, self.stream, &self.rate, &mut shared);
        }
    }
}

fn flush_partial(stage: &str, stream: Stream, rate: &LogRate, shared: &mut Buffers) {
    if !shared.partial.is_empty() {
        let line = std::mem::take(&mut shared.partial);
        emit(stage, stream, rate, &line, &mut shared.tail);
    }
}

fn emit(stage: &str, stream: Stream, rate: &LogRate, line: &[u8], tail: &mut String) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let admitted = rate.admit(stage);
    match stream {
        Stream::Stdout if admitted => tracing::info!(target: "weir::plugin", stage, "{text}"),
        Stream::Stdout => {}
        Stream::Stderr => {
            // The tail keeps even dropped lines: a trap's reason quotes them.
            if admitted {
                tracing::warn!(target: "weir::plugin", stage, "{text}");
            }
            if !tail.is_empty() {
                tail.push('\n');
            }
            tail.push_str(text);
            if tail.len() > TAIL_LIMIT {
                let cut = tail.len() - TAIL_LIMIT;
                let cut = (cut..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
                tail.drain(..cut);
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
