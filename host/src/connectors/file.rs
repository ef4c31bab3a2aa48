//! `file:///path`: a bounded source of lines, and an appending sink.
//!
//! A path after `file://` that does not start with `/` is relative to the
//! pipeline file's folder (`file://out.ndjson`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{Params, Sink, Source, SourceContext, format, lines};
use crate::config::{Format, PipelineConfig};
use crate::message::Message;

fn parse_path(rest: &str, pipeline: &PipelineConfig) -> Result<PathBuf, String> {
    let params = Params::parse(rest, "file")?;
    let path = params.path.clone();
    params.finish()?;
    if path.is_empty() {
        return Err("file:// needs a path, e.g. file:///data/in.ndjson".into());
    }
    Ok(pipeline.resolve(&path))
}

/// A file source: where and how to read.
#[derive(Debug, Clone)]
pub struct FileSourceSpec {
    /// The file.
    pub path: PathBuf,
    /// Line format.
    pub format: Format,
    /// Most lines per batch.
    pub batch: usize,
}

impl FileSourceSpec {
    pub(crate) fn parse(rest: &str, format: Format, batch: usize, pipeline: &PipelineConfig) -> Result<Self, String> {
        let path = parse_path(rest, pipeline)?;
        if !path.is_file() {
            return Err(format!("input file {} does not exist", path.display()));
        }
        Ok(FileSourceSpec { path, format, batch })
    }
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
        let file = tokio::fs::File::open(&self.spec.path)
            .await
            .with_context(|| format!("opening {}", self.spec.path.display()))?;
        let reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        let origin = self.spec.path.display().to_string();
        lines::run(reader, self.spec.format, self.spec.batch, &origin, &ctx).await
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
    pub(crate) fn parse(rest: &str, format: Format, pipeline: &PipelineConfig) -> Result<Self, String> {
        let path = parse_path(rest, pipeline)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(format!("output folder {} does not exist", dir.display()));
            }
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
}

impl FileSink {
    /// Opens (creating if needed) the file for appending.
    pub async fn open(spec: &FileSinkSpec) -> Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.path)
            .await
            .with_context(|| format!("opening {} for appending", spec.path.display()))?;
        Ok(FileSink { file, format: spec.format, buffer: Vec::new(), path: spec.path.clone() })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        self.buffer.clear();
        for message in batch {
            format::encode(self.format, message, &mut self.buffer);
        }
        self.file.write_all(&self.buffer).await.with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush().await?;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.file.sync_data().await.with_context(|| format!("syncing {}", self.path.display()))
    }
}
