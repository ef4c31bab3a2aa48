//! The HTTP collector: `POST` a body of lines to the source's path.
//!
//! A request is all or nothing, and its answer means what it says:
//! - `200 {"accepted": N}` once every message of the body was written to the
//!   sinks, dead-lettered or filtered: the data is safe;
//! - `400` naming the first line that does not decode (or is longer than
//!   `max_message_bytes`): nothing of the request entered the pipeline;
//! - `413` for a body over `max_body_bytes`;
//! - `401` without the bearer token, when `token_env` is set;
//! - `503` with `Retry-After` when the pipeline has no room for the body
//!   within `busy_timeout_ms` (the in-flight budget is spent), or stops or
//!   halts before the messages were written: send it again.
//!
//! Room is reserved for the whole body before any of it is handed on, so a
//! request either enters completely or not at all, and a saturated pipeline
//! answers `503` instead of holding bodies without bound. On shutdown the
//! listener stops accepting and in-flight requests are answered first.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::HttpSourceSpec;
use crate::config::Format;
use crate::connectors::{Source, SourceContext, format};
use crate::message::Message;
use crate::flow::ack::AckToken;

/// Seconds a `503` asks the client to wait.
const RETRY_AFTER_SECONDS: &str = "1";

/// The `http://` source.
pub struct HttpCollector {
    spec: HttpSourceSpec,
}

impl HttpCollector {
    /// A collector for `spec`; it listens when it runs.
    pub fn new(spec: HttpSourceSpec) -> Self {
        HttpCollector { spec }
    }
}

struct Shared {
    spec: HttpSourceSpec,
    ctx: SourceContext,
}

#[async_trait]
impl Source for HttpCollector {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let spec = self.spec;
        let listener = tokio::net::TcpListener::bind(spec.addr)
            .await
            .with_context(|| format!("listening on {} for the HTTP collector", spec.addr))?;
        tracing::info!(source = ctx.name(), "HTTP collector listening on http://{}{}", spec.addr, spec.path);
        let shutdown = ctx.shutdown().clone();
        let path = spec.path.clone();
        let shared = Arc::new(Shared { spec, ctx });
        let app = Router::new().route(&path, post(ingest)).with_state(shared.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving the HTTP collector")?;
        tracing::info!(source = shared.ctx.name(), "HTTP collector stopped");
        Ok(())
    }
}

async fn ingest(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let spec = &shared.spec;
    if let Some(token) = &spec.token
        && !bearer_matches(&headers, token)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required\n",
        )
            .into_response();
    }
    let too_large = || {
        (StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over max_body_bytes ({} bytes)\n", spec.max_body_bytes))
            .into_response()
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > spec.max_body_bytes as u64) {
        return too_large();
    }
    let Ok(bytes) = axum::body::to_bytes(body, spec.max_body_bytes).await else {
        return too_large();
    };
    let messages = match decode_body(&bytes, spec.format, spec.limits.max_message_bytes) {
        Ok(messages) => messages,
        Err(reason) => return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
    };
    drop(bytes);
    let accepted = messages.len();
    match enter(&shared, messages).await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({ "accepted": accepted }))).into_response(),
        Err(reason) => busy(reason),
    }
}

/// Hands `messages` to the pipeline and waits until they are written.
async fn enter(shared: &Shared, mut messages: Vec<Message>) -> Result<(), String> {
    let ctx = &shared.ctx;
    if messages.is_empty() {
        return Ok(());
    }
    if ctx.shutdown().is_cancelled() || ctx.halted() {
        return Err("the pipeline is stopping".into());
    }
    let reservation = tokio::time::timeout(shared.spec.busy_timeout, ctx.reserve(&messages))
        .await
        .map_err(|_| format!("the pipeline is busy: no room for this body within {:?}", shared.spec.busy_timeout))?;
    let batch = shared.spec.limits.batch.max(1);
    let (request, written) = AckToken::notifying(messages.len().div_ceil(batch));
    request.hold(reservation);
    while !messages.is_empty() {
        let rest = messages.split_off(batch.min(messages.len()));
        let chunk = std::mem::replace(&mut messages, rest);
        let token = AckToken::group(vec![request.clone()], chunk.len());
        ctx.send(chunk, token).await.map_err(|_| "the pipeline is stopping".to_string())?;
    }
    drop(request);
    written.await.map_err(|_| "the pipeline stopped before these messages were written".to_string())?;
    if ctx.halted() {
        return Err("the pipeline halted; these messages may not have been written".into());
    }
    Ok(())
}

fn busy(reason: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)], format!("{reason}; retry\n"))
        .into_response()
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing does not leak the token.
    given.is_some_and(|given| {
        given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

/// Every line of `body`, or the first line that cannot be taken. A final
/// `\n` ends the last line; blank lines carry no ndjson envelope and are
/// skipped, while in raw format they are empty values.
fn decode_body(body: &[u8], format: Format, max_message_bytes: usize) -> Result<Vec<Message>, String> {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut messages = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        if line.len() > max_message_bytes {
            return Err(format!("line {line_no} is longer than max_message_bytes ({max_message_bytes} bytes)"));
        }
        if format == Format::Ndjson && line.trim_ascii().is_empty() {
            continue;
        }
        let message = format::decode(format, line).map_err(|reason| format!("line {line_no}: {reason}"))?;
        messages.push(message);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_whole_or_name_their_first_bad_line() {
        let ok = decode_body(b"{\"value\":\"a\"}\n\n{\"key\":\"k\",\"value\":\"b\"}\n", Format::Ndjson, 100).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].key.as_deref(), Some(&b"k"[..]));
        let err = decode_body(b"{\"value\":\"a\"}\nnot json\n", Format::Ndjson, 100).unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
        let raw = decode_body(b"a\r\n\nb", Format::Raw, 100).unwrap();
        assert_eq!(raw.iter().map(|m| m.value.clone()).collect::<Vec<_>>(), [b"a\r".to_vec(), vec![], b"b".to_vec()]);
        let err = decode_body(b"short\nthis line is too long\n", Format::Raw, 10).unwrap_err();
        assert_eq!(err, "line 2 is longer than max_message_bytes (10 bytes)");
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "s3cret"));
        headers.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!bearer_matches(&headers, "s3cret"));
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_matches(&headers, "s3cret"));
    }
}
