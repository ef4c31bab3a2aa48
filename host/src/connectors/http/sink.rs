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
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Uri, header};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::Format;
use crate::connectors::{Rejected, Settings, Sink, SpecError, format};
use crate::message::Message;

/// Longest a request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an error answer is quoted in the reason.
const QUOTED_BYTES: usize = 200;

/// A checked HTTP sink URL, with the headers every request carries.
#[derive(Clone)]
pub struct HttpSinkSpec {
    /// Where batches are POSTed, as given (its query belongs to the target).
    pub url: Uri,
    /// Extra request headers: the `headers` table, then `Authorization:
    /// Bearer …` from the variable `token_env` names.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for HttpSinkSpec {
    // Header values may be credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpSinkSpec").field("url", &self.url).field("headers", &names).finish()
    }
}

impl HttpSinkSpec {
    /// Checks a whole `http://` or `https://` URL and takes the `headers`
    /// and `token_env` keys.
    pub(crate) fn parse(url: &str, settings: &mut Settings) -> Result<Self, SpecError> {
        let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{url}` has no host").into());
        }
        // The query string is the target's, not weir's settings.
        settings.take_query();
        let mut headers = Vec::new();
        for (name, value) in settings.take_table("headers")? {
            let parsed = HeaderName::try_from(name.as_str())
                .map_err(|e| format!("`headers.{name}` is not a valid header name: {e}"))?;
            let value =
                HeaderValue::try_from(value).map_err(|e| format!("`headers.{name}` is not a valid header value: {e}"))?;
            headers.push((parsed, value));
        }
        if let Some(var) = settings.take("token_env") {
            let token = std::env::var(&var)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("`token_env` names `{var}`, but that environment variable is not set"))?;
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| format!("the token in `{var}` is not a valid header value"))?;
            value.set_sensitive(true);
            headers.push((header::AUTHORIZATION, value));
        }
        Ok(HttpSinkSpec { url: uri, headers })
    }
}

/// POSTs each batch as ndjson.
pub struct HttpSink {
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    buffer: Vec<u8>,
}

impl HttpSink {
    /// A sink for `spec`, with a keep-alive connection pool.
    pub fn new(spec: &HttpSinkSpec) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(HttpsConnector::new());
        HttpSink { url: spec.url.clone(), headers: spec.headers.clone(), client, buffer: Vec::new() }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        self.buffer.clear();
        format::encode_batch(Format::Ndjson, batch, &mut self.buffer)?;
        let mut request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(Bytes::copy_from_slice(&self.buffer)))
            .context("building the request")?;
        request.headers_mut().extend(self.headers.iter().cloned());
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

    fn parse(url: &str, keys: &str) -> Result<HttpSinkSpec, String> {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let mut settings = Settings::parse(rest, "https", "sink")
            .and_then(|s| s.with_keys(&keys.parse().expect("toml")))
            .map_err(|e| e.to_string())?;
        let spec = HttpSinkSpec::parse(url, &mut settings).map_err(|e| e.to_string())?;
        settings.finish().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn urls_are_kept_whole_and_need_a_host() {
        let spec = parse("https://example.com:8443/in?api_key=1", "").unwrap();
        assert_eq!(spec.url.to_string(), "https://example.com:8443/in?api_key=1");
        let err = parse("http://", "").unwrap_err();
        assert!(err.contains("not a valid URL") || err.contains("has no host"), "{err}");
    }

    #[test]
    fn headers_and_token_keys() {
        let spec = parse("http://h/in", "[headers]\nx-tenant = \"acme\"").unwrap();
        assert_eq!(spec.headers, [(HeaderName::from_static("x-tenant"), HeaderValue::from_static("acme"))]);
        assert!(!format!("{spec:?}").contains("acme"), "header values are not shown");
        let err = parse("http://h/in", "[headers]\n\"bad name\" = \"x\"").unwrap_err();
        assert!(err.contains("`headers.bad name` is not a valid header name"), "{err}");
        let err = parse("http://h/in", "token_env = \"WEIR_TEST_SURELY_UNSET\"").unwrap_err();
        assert!(err.contains("`WEIR_TEST_SURELY_UNSET`, but that environment variable is not set"), "{err}");
        let err = parse("http://h/in", "maxlen = 3").unwrap_err();
        assert_eq!(err, "key `maxlen` does not apply to a https:// sink");
    }
}
