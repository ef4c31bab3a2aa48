//! `file:///path`: a bounded source of lines, and an appending sink.
//!
//! A path after `file://` that does not start with `/` is relative to the
//! pipeline file's folder (`file://out.ndjson`).
//!
//! The sink holds an exclusive lock on its file while it runs (a second
//! process appending to it would interleave records), and on opening cuts
//! off a torn last record (one without its `\n`, left by a crash mid-write)
//! so it is not glued to the next record: that record was never
//! acknowledged, so it is written again whole.

use std::fs::TryLockError;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{self, Poll};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::lines::{LineLimits, LinePosition};
use super::{Connector, Settings, Sink, SinkSpec, Source, SourceContext, SourceSpec, SpecError, format, lines};
use crate::config::{Format, PipelineConfig};
use crate::flow::SourceStats;
use crate::message::Message;

/// The `file://` connector.
pub const CONNECTOR: Connector = Connector {
    schemes: &["file"],
    source: Some(|args| {
        let limits = args.line_limits()?;
        Ok(Box::new(FileSourceSpec::parse(&args.settings, args.format, limits, args.pipeline)?))
    }),
    sink: Some(|args| Ok(Box::new(FileSinkSpec::parse(&args.settings, args.format, args.pipeline)?))),
};

fn parse_path(settings: &Settings, pipeline: &PipelineConfig) -> Result<PathBuf, SpecError> {
    if settings.path.is_empty() {
        return Err("file:// needs a path, e.g. file:///data/in.ndjson".into());
    }
    Ok(pipeline.resolve(&settings.path))
}

impl SourceSpec for FileSourceSpec {
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(FileSource::new(self.clone())))
    }
}

#[async_trait]
impl SinkSpec for FileSinkSpec {
    async fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink::open(self).await?))
    }
}

/// A file source: where and how to read.
#[derive(Debug, Clone)]
pub struct FileSourceSpec {
    /// The file.
    pub path: PathBuf,
    /// Line format.
    pub format: Format,
    /// Batch size and longest line.
    pub limits: LineLimits,
}

impl FileSourceSpec {
    pub(crate) fn parse(
        settings: &Settings,
        format: Format,
        limits: LineLimits,
        pipeline: &PipelineConfig,
    ) -> Result<Self, SpecError> {
        let path = parse_path(settings, pipeline)?;
        check_readable(&path)?;
        Ok(FileSourceSpec { path, format, limits })
    }
}

/// Accepts a regular file or a named pipe; names anything else for what it is.
fn check_readable(path: &Path) -> Result<(), String> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("input file {} does not exist", path.display()));
        }
        Err(e) => return Err(format!("input file {}: {e}", path.display())),
    };
    let kind = metadata.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Ok(());
        }
        let what = if kind.is_char_device() {
            Some("a character device")
        } else if kind.is_block_device() {
            Some("a block device")
        } else if kind.is_socket() {
            Some("a socket")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(format!(
                "input file {} is {what}, not a file (a file:// source reads regular files and named pipes)",
                path.display()
            ));
        }
    }
    if kind.is_dir() {
        return Err(format!("input file {} is a folder, not a file", path.display()));
    }
    if !kind.is_file() {
        return Err(format!("input file {} is not a regular file", path.display()));
    }
    Ok(())
}

/// Reads a file's lines once; the run ends when they are all done.
pub struct FileSource {
    spec: FileSourceSpec,
}

impl FileSource {
    /// A source for `spec`.
    pub fn new(spec: FileSourceSpec) -> Self {
        FileSource { spec }
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let mut file = tokio::fs::File::open(&self.spec.path)
            .await
            .with_context(|| format!("opening {}", self.spec.path.display()))?;
        let origin = self.spec.path.display().to_string();
        let start = resume_point(&ctx, &origin, &mut file).await?;
        let file = Counted::new(file, ctx.stats()).await;
        let reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        // A checkpoint records where the file was read to; a run that ends
        // at the end of the file removes the record, so the next run reads
        // it whole again.
        let tracker = ctx.checkpointed_tracker::<LinePosition>(Box::new(|_, positions| {
            let last = positions.last()?;
            Some((String::new(), (!last.end).then(|| format!("{} {}", last.line, last.byte).into_bytes())))
        }));
        lines::run(reader, self.spec.format, self.spec.limits, &origin, &ctx, tracker, start).await
    }
}

/// Where to start reading: where the last checkpoint of a run that did not
/// reach the end of the file left it (the file positioned there), else at
/// the start.
async fn resume_point(ctx: &SourceContext, origin: &str, file: &mut tokio::fs::File) -> Result<LinePosition> {
    use tokio::io::AsyncSeekExt;
    let Some((_, recorded)) = ctx.restored().first() else { return Ok(LinePosition::default()) };
    let parsed = std::str::from_utf8(recorded).ok().and_then(|text| {
        let (line, byte) = text.split_once(' ')?;
        Some(LinePosition { line: line.parse().ok()?, byte: byte.parse().ok()?, end: false })
    });
    let length = file.metadata().await.with_context(|| format!("reading the size of {origin}"))?.len();
    match parsed {
        Some(at) if at.byte <= length => {
            file.seek(std::io::SeekFrom::Start(at.byte)).await.with_context(|| format!("seeking in {origin}"))?;
            tracing::info!(
                source = ctx.name(),
                "resuming {origin} after line {} (byte {}), where the last checkpoint of an unfinished run left it",
                at.line,
                at.byte
            );
            Ok(at)
        }
        Some(at) => {
            tracing::warn!(
                source = ctx.name(),
                "{origin} is shorter ({length} bytes) than where the last run stopped (byte {}): reading it from the \
                 start",
                at.byte
            );
            Ok(LinePosition::default())
        }
        None => {
            tracing::warn!(source = ctx.name(), "ignoring an unreadable recorded position of {origin}");
            Ok(LinePosition::default())
        }
    }
}

/// The input file, counting what is read of it into the source's stats
/// (the progress line's percentage): one add per read of the line
/// reader's buffer, not per line.
struct Counted {
    file: tokio::fs::File,
    stats: Arc<SourceStats>,
}

impl Counted {
    /// Counts from the file's current position, against its size when it is
    /// a regular file (a named pipe has none).
    async fn new(mut file: tokio::fs::File, stats: Arc<SourceStats>) -> Counted {
        use tokio::io::AsyncSeekExt;
        if let Ok(metadata) = file.metadata().await
            && metadata.is_file()
        {
            let at = file.stream_position().await.unwrap_or(0);
            stats.input_read.store(at, Ordering::Relaxed);
            stats.input_size.store(metadata.len(), Ordering::Relaxed);
        }
        Counted { file, stats }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.file).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.stats.input_read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        poll
    }
}

/// A file sink: where and how to write.
#[derive(Debug, Clone)]
pub struct FileSinkSpec {
    /// The file, appended to.
    pub path: PathBuf,
    /// Line format.
    pub format: Format,
}

impl FileSinkSpec {
    pub(crate) fn parse(settings: &Settings, format: Format, pipeline: &PipelineConfig) -> Result<Self, SpecError> {
        let path = parse_path(settings, pipeline)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(format!("output folder {} does not exist", dir.display()).into());
        }
        Ok(FileSinkSpec { path, format })
    }
}

/// Appends one line per message; one write and flush per batch.
pub struct FileSink {
    file: tokio::fs::File,
    format: Format,
    buffer: Vec<u8>,
    path: PathBuf,
    /// The length of a regular file after the last successful write: a
    /// failed write (a full disk) is cut back to it, so that no torn record
    /// is left for the retry to glue to. `None` for devices and pipes.
    written: Option<u64>,
}

impl FileSink {
    /// Opens (creating if needed) the file for appending, takes its lock and
    /// repairs a torn last record.
    pub async fn open(spec: &FileSinkSpec) -> Result<Self> {
        let path = spec.path.clone();
        let file = tokio::task::spawn_blocking(move || open_locked(&path)).await??;
        let metadata = file.metadata()?;
        let written = metadata.is_file().then_some(metadata.len());
        Ok(FileSink {
            file: tokio::fs::File::from_std(file),
            format: spec.format,
            buffer: Vec::new(),
            path: spec.path.clone(),
            written,
        })
    }
}

fn open_locked(path: &Path) -> Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))?;
    if !file.metadata()?.is_file() {
        // A device or pipe (`/dev/null`, `/dev/stdout`): no records to repair,
        // and several writers are normal.
        return Ok(file);
    }
    // Advisory (flock): it binds weir processes, which all take it. It is
    // released when the file is closed, also by a crash.
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "{} is locked by another process (another weir writing to it?); two writers would interleave records",
            path.display()
        ),
        Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
    }
    let torn = torn_tail(&mut file).with_context(|| format!("reading the end of {}", path.display()))?;
    if torn > 0 {
        let len = file.metadata()?.len();
        file.set_len(len - torn).with_context(|| format!("truncating {}", path.display()))?;
        tracing::warn!(
            "{}: removed a torn last record ({torn} bytes without a newline, from an interrupted write); it was \
             not acknowledged and will be written again",
            path.display()
        );
    }
    Ok(file)
}

/// Bytes after the file's last `\n` (all of them if it has none).
fn torn_tail(file: &mut std::fs::File) -> std::io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let piece = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(piece)?;
        if let Some(newline) = memchr::memrchr(b'\n', piece) {
            return Ok(len - (start + newline as u64 + 1));
        }
        end = start;
    }
    Ok(len)
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        format::encode_batch(self.format, batch, &mut self.buffer)?;
        let written = async {
            self.file.write_all(&self.buffer).await?;
            self.file.flush().await
        }
        .await;
        if let Err(e) = written {
            if let Some(len) = self.written
                && let Err(cut) = self.file.set_len(len).await
            {
                tracing::warn!("{}: cannot cut a failed write back to {len} bytes: {cut}", self.path.display());
            }
            return Err(e).with_context(|| format!("writing {}", self.path.display()));
        }
        if let Some(len) = &mut self.written {
            *len += self.buffer.len() as u64;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        match self.file.sync_data().await {
            // Devices and pipes (`/dev/stdout`, `/dev/full`) cannot be synced.
            Err(e) if self.written.is_none() && e.raw_os_error() == Some(22) => Ok(()),
            other => other.with_context(|| format!("syncing {}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_and_a_second_writer_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        std::fs::write(&path, "one\ntwo\nthr").unwrap();
        let first = open_locked(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        let second = open_locked(&path).unwrap_err().to_string();
        assert!(second.contains("is locked by another process"), "{second}");
        drop(first);
        std::fs::write(&path, vec![b'x'; 200_000]).unwrap();
        drop(open_locked(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
