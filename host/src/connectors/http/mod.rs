//! HTTP both ways: `http://ADDR/PATH` as a source is a collector that takes
//! events in POST bodies and answers only once they are safe; `http://…` or
//! `https://…` as a sink POSTs each batch as ndjson ([`sink`]).
//!
//! `http://127.0.0.1:8080/ingest?max_body_bytes=16777216&busy_timeout_ms=1000&token_env=INGEST_TOKEN`
//!
//! | parameter         | default  | meaning |
//! |-------------------|----------|---------|
//! | `max_body_bytes`  | 16 MiB   | larger bodies are answered `413` |
//! | `busy_timeout_ms` | 1000     | how long a request waits for room in the pipeline before `503` |
//! | `token_env`       | none     | environment variable holding a bearer token every request must carry |
//!
//! The body is lines in the source's `format` (ndjson envelopes, or raw
//! values). See [`collector`] for the request protocol.

mod collector;
mod sink;

use std::net::SocketAddr;
use std::time::Duration;

pub use collector::HttpCollector;
pub use sink::{HttpSink, HttpSinkSpec};

use super::lines::LineLimits;
use super::{Connector, Settings, SinkSpec, Source, SourceSpec, SpecError};
use crate::config::{Format, ranges};

/// The `http://` / `https://` connector: a collector source (http only) and
/// a POSTing sink.
pub const CONNECTOR: Connector = Connector {
    schemes: &["http", "https"],
    source: Some(|args| {
        if args.settings.scheme() != "http" {
            return Err("an HTTP collector listens on plain http://; put TLS in front of it".into());
        }
        let limits = args.line_limits()?;
        Ok(Box::new(HttpSourceSpec::parse(&mut args.settings, args.format, limits)?))
    }),
    sink: Some(|args| {
        if args.format != Format::Ndjson {
            return Err("an http sink writes ndjson; remove `format = \"raw\"`".into());
        }
        Ok(Box::new(HttpSinkSpec::parse(args.uri, &mut args.settings)?))
    }),
};

impl SourceSpec for HttpSourceSpec {
    fn open(&self) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(HttpCollector::new(self.clone())))
    }
}

#[async_trait::async_trait]
impl SinkSpec for HttpSinkSpec {
    async fn open(&self) -> anyhow::Result<Box<dyn super::Sink>> {
        Ok(Box::new(HttpSink::new(self)))
    }
}

/// Default largest request body.
const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default wait for room in the pipeline before answering `503`.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// A checked `http://` source.
#[derive(Debug, Clone)]
pub struct HttpSourceSpec {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The one path that takes POSTs.
    pub path: String,
    /// How body lines are read.
    pub format: Format,
    /// Messages per batch, longest line.
    pub limits: LineLimits,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Longest wait for room in the pipeline.
    pub busy_timeout: Duration,
    /// The bearer token requests must carry, read from the environment.
    pub token: Option<String>,
}

impl HttpSourceSpec {
    /// Parses what follows `http://`.
    pub(crate) fn parse(params: &mut Settings, format: Format, limits: LineLimits) -> Result<Self, SpecError> {
        let (authority, path) = match params.path.find('/') {
            Some(slash) => (params.path[..slash].to_string(), params.path[slash..].to_string()),
            None => (params.path.clone(), "/".to_string()),
        };
        let addr = parse_listen(&authority)?;
        let max_body_bytes = params
            .take_in_range("max_body_bytes", &ranges::HTTP_MAX_BODY_BYTES)?
            .map_or(DEFAULT_MAX_BODY_BYTES, |b| b as usize);
        let busy_timeout = params
            .take_in_range("busy_timeout_ms", &ranges::HTTP_BUSY_TIMEOUT_MS)?
            .map_or(DEFAULT_BUSY_TIMEOUT, Duration::from_millis);
        let token = match params.take("token_env") {
            None => None,
            Some(var) => match std::env::var(&var) {
                Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
                _ => {
                    return Err(format!("`token_env` names `{var}`, but that environment variable is not set").into());
                }
            },
        };
        Ok(HttpSourceSpec { addr, path, format, limits, max_body_bytes, busy_timeout, token })
    }
}

/// `127.0.0.1:8080`, `[::1]:8080` or `localhost:8080`.
fn parse_listen(authority: &str) -> Result<SocketAddr, String> {
    let resolved = match authority.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => authority.to_string(),
    };
    resolved.parse().map_err(|_| {
        format!("an http:// source needs a listen address like `http://127.0.0.1:8080/ingest`, got `{authority}`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LineLimits = LineLimits { batch: 256, max_message_bytes: 1024 };

    fn parse(rest: &str, format: Format) -> Result<HttpSourceSpec, String> {
        let mut settings = Settings::parse(rest, "http", "source").map_err(|e| e.to_string())?;
        HttpSourceSpec::parse(&mut settings, format, LIMITS).map_err(|e| e.to_string())
    }

    #[test]
    fn address_path_and_parameters() {
        let spec = parse("127.0.0.1:8080/ingest?max_body_bytes=100", Format::Ndjson).unwrap();
        assert_eq!(
            (spec.addr.to_string().as_str(), spec.path.as_str(), spec.max_body_bytes),
            ("127.0.0.1:8080", "/ingest", 100)
        );
        assert_eq!(parse("localhost:9", Format::Raw).unwrap().path, "/");
        let err = parse("example.com/x", Format::Raw).unwrap_err();
        assert!(err.contains("needs a listen address"), "{err}");
        let err = parse("127.0.0.1:1/x?token_env=WEIR_TEST_SURELY_UNSET", Format::Raw).unwrap_err();
        assert!(err.contains("`WEIR_TEST_SURELY_UNSET`, but that environment variable is not set"), "{err}");
        let err = parse("127.0.0.1:1/x?max_body_bytes=0", Format::Raw).unwrap_err();
        assert!(err.contains("max_body_bytes"), "{err}");
    }
}
