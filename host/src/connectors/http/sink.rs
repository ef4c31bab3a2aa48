//! `http://…` or `https://…` as a sink: each batch is POSTed to the URL as
//! ndjson envelopes, one request per batch.
//!
//! - `2xx`: written.
//! - `4xx`: the endpoint turned the batch down for what it holds; retrying
//!   would not help, so its messages go to the dead letter with the status
//!   and the start of the answer ([`Rejected`]).
//! - `5xx`, `408`, `429`, a timeout or a connection error: the write fails
//!   and the engine retries it with the sink's `retries` and backoff.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri, header};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::Format;
use crate::connectors::{Rejected, Sink, format};
use crate::message::Message;

/// Longest a request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an error answer is quoted in the reason.
const QUOTED_BYTES: usize = 200;

/// A checked HTTP sink URL.
#[derive(Debug, Clone)]
pub struct HttpSinkSpec {
    /// Where batches are POSTed, as given.
    pub url: Uri,
}

impl HttpSinkSpec {
    /// Checks a whole `http://` or `https://` URL.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{url}` has no host"));
        }
        Ok(HttpSinkSpec { url: uri })
    }
}

/// POSTs each batch as ndjson.
pub struct HttpSink {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    buffer: Vec<u8>,
}

impl HttpSink {
    /// A sink for `spec`, with a keep-alive connection pool.
    pub fn new(spec: &HttpSinkSpec) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(HttpsConnector::new());
        HttpSink { url: spec.url.clone(), client, buffer: Vec::new() }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        self.buffer.clear();
        format::encode_batch(Format::Ndjson, batch, &mut self.buffer)?;
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(Bytes::copy_from_slice(&self.buffer)))
            .context("building the request")?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("POST {} took longer than {REQUEST_TIMEOUT:?}", self.url))?
            .with_context(|| format!("POST {}", self.url))?;
        if status.is_success() {
            return Ok(());
        }
        let quoted = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BYTES)]).trim().to_string();
        let answer = if quoted.is_empty() { String::new() } else { format!(": {quoted}") };
        let retryable = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        if retryable || !status.is_client_error() {
            bail!("POST {} answered {status}{answer}", self.url);
        }
        Err(Rejected(format!("POST {} answered {status}{answer}", self.url)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_kept_whole_and_need_a_host() {
        let spec = HttpSinkSpec::parse("https://example.com:8443/in?api_key=1").unwrap();
        assert_eq!(spec.url.to_string(), "https://example.com:8443/in?api_key=1");
        let err = HttpSinkSpec::parse("http://").unwrap_err();
        assert!(err.contains("not a valid URL") || err.contains("has no host"), "{err}");
    }
}
