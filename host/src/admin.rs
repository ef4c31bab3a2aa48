//! The admin HTTP listener (`[admin]`).
//!
//! Read-only, open to whoever reaches the listener:
//! - `GET /health`: `ok`.
//! - `GET /stages`: per stage, the running and previous version, the time of
//!   the last swap, the last refused version with the reason, and how many
//!   versions are still in memory.
//!
//! Mutating, locked: they need `Authorization: Bearer <token>`, the token
//! being the value of the environment variable `WEIR_ADMIN_TOKEN` (or the one
//! `[admin] token_env` names) when `weir` started. Without a token they are
//! refused (403); with a missing or wrong one, 401.
//! - `POST /stages/{name}/plugin`: swap in the `.wasm` bytes of the body (at
//!   most `[admin] max_body_mb`, default 64 MiB; more is refused with 413).
//! - `POST /stages/{name}/rollback`: back to the previous version.
//!
//! Every other endpoint takes no body: one over [`SMALL_BODY_BYTES`] is
//! refused with 413. A mutating endpoint added later goes in the router's
//! `mutating` group, behind the same check.
//!
//! The listener binds to loopback unless the file says otherwise; another
//! address is refused at load without a token (see
//! [`crate::config::AdminConfig`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::plugin::swap::{HotPlugin, Swapped};

/// Where the listener binds when `[admin]` has no `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// The environment variable the token is read from by default.
pub const DEFAULT_TOKEN_ENV: &str = "WEIR_ADMIN_TOKEN";
/// Default `[admin] max_body_mb`: room for Python (~19 MiB) and JavaScript
/// (~12 MiB, ~16 MiB ahead-of-time compiled) components.
pub const DEFAULT_MAX_BODY_MB: u64 = 64;
/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest body of the endpoints that take none.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// A refused upload is read to its end (and thrown away) for at most this
/// long before the connection closes, so the client sees the refusal
/// rather than a reset connection.
const DRAIN_FOR: Duration = Duration::from_secs(30);
/// ... and for at most this long without receiving anything.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// The admin bearer token. Only its hash is kept; `Debug` shows nothing.
#[derive(Clone)]
pub struct Token {
    hash: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token held by the environment variable `var`: `None` when it is
    /// unset or empty; an error when its value cannot be a token (shorter
    /// than [`MIN_TOKEN_LEN`], or other than visible ASCII). Surrounding
    /// whitespace (a newline from a file) is ignored.
    pub fn from_env(var: &str) -> Result<Option<Token>, String> {
        let Some(value) = std::env::var_os(var) else { return Ok(None) };
        let value = value.into_string().map_err(|_| format!("the admin token in {var} is not valid UTF-8"))?;
        let token = value.trim();
        if token.is_empty() {
            return Ok(None);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the admin token in {var} must be visible ASCII characters without spaces (it is sent in an HTTP header)"
            ));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token in {var} has {} characters, fewer than {MIN_TOKEN_LEN}: use a long random secret, \
                 e.g. `openssl rand -hex 32`",
                token.len()
            ));
        }
        Ok(Some(Token::new(token)))
    }

    /// A token from its text.
    pub fn new(token: &str) -> Token {
        Token { hash: *blake3::hash(token.as_bytes()).as_bytes() }
    }

    /// Whether `presented` is this token. Constant time in the content of
    /// both (fixed-length hashes compared with `constant_time_eq`): the
    /// comparison tells nothing about how much of a guess was right, nor
    /// about the token's length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq::constant_time_eq_32(blake3::hash(presented).as_bytes(), &self.hash)
    }
}

/// Whether `listen` only accepts connections from this machine: an IP
/// address that is a loopback one, or a name all of whose addresses are.
pub fn is_loopback(listen: &str) -> bool {
    let loopback = |a: &SocketAddr| a.ip().to_canonical().is_loopback();
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return loopback(&addr);
    }
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(loopback)
        }
        Err(_) => false,
    }
}

/// Who may change things, and how much they may upload.
#[derive(Debug, Clone)]
pub struct Access {
    /// The bearer token; `None`: the mutating endpoints are refused.
    pub token: Option<Token>,
    /// The variable the token comes from, for messages.
    pub token_env: String,
    /// Largest plugin upload, in bytes.
    pub max_body: usize,
}

impl Access {
    /// `None` when `headers` carry the token; else the refusal.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let env = &self.token_env;
        let Some(token) = &self.token else {
            let message = format!(
                "the admin API is read-only: no admin token is configured. To allow swap and rollback, start weir \
                 with the environment variable {env} set to a secret of at least {MIN_TOKEN_LEN} characters, and \
                 send it as `Authorization: Bearer <token>`"
            );
            return Some(error(StatusCode::FORBIDDEN, message));
        };
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
        let (challenge, message) = match presented {
            Some(presented) if token.matches(presented) => return None,
            Some(_) => (r#"Bearer realm="weir-admin", error="invalid_token""#, "wrong bearer token".to_string()),
            None => (
                r#"Bearer realm="weir-admin""#,
                format!("this endpoint needs `Authorization: Bearer <token>` with the token in {env}"),
            ),
        };
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        Some(response)
    }
}

/// The credentials of a `Bearer` authorization (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii()).filter(|t| !t.is_empty())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

type Stages = Arc<HashMap<String, Arc<HotPlugin>>>;

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    stages: Vec<Arc<HotPlugin>>,
    access: Access,
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
) {
    let app = router(stages, access, metrics);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!("admin listener failed: {e}");
    }
}

/// What `GET /metrics` renders: the running pipeline's registry and the
/// process's Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    /// The pipeline's counters.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The installed recorder.
    pub handle: metrics_exporter_prometheus::PrometheusHandle,
}

async fn metrics_text(State(metrics): State<Metrics>) -> Response {
    let text = metrics.telemetry.render(&metrics.handle);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn router(stages: Vec<Arc<HotPlugin>>, access: Access, metrics: Option<Metrics>) -> Router {
    let stages: Stages = Arc::new(stages.into_iter().map(|s| (s.stage().to_string(), s)).collect());
    let upload = BodyLimit { bytes: access.max_body, upload: true };
    let small = BodyLimit { bytes: SMALL_BODY_BYTES, upload: false };
    let limit = |limit: BodyLimit| middleware::from_fn_with_state(limit, limit_body);
    // The token is checked first, so an unauthorised upload is never buffered.
    let mutating = Router::new()
        .route("/stages/{name}/plugin", post(swap).layer(limit(upload)))
        .route("/stages/{name}/rollback", post(rollback).layer(limit(small)))
        .route_layer(middleware::from_fn_with_state(Arc::new(access), require_token));
    let read_only = Router::new()
        .route("/health", get(|| async { "ok" }).layer(limit(small)))
        .route("/stages", get(list).layer(limit(small)));
    let app = mutating.merge(read_only).with_state(stages);
    match metrics {
        Some(metrics) => {
            app.merge(Router::new().route("/metrics", get(metrics_text).layer(limit(small))).with_state(metrics))
        }
        None => app,
    }
}

async fn require_token(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    match access.refusal(request.headers()) {
        None => next.run(request).await,
        Some(refusal) => drain(request.into_body().into_data_stream(), refusal).await,
    }
}

#[derive(Debug, Clone, Copy)]
struct BodyLimit {
    bytes: usize,
    /// A plugin upload (limit from `[admin] max_body_mb`), or an endpoint
    /// that takes no body.
    upload: bool,
}

impl BodyLimit {
    fn refusal(&self) -> Response {
        let message = if self.upload {
            format!(
                "request body too large: a plugin upload takes at most {} MiB; raise `max_body_mb` in the \
                 pipeline file's [admin] table for a larger component",
                self.bytes >> 20
            )
        } else {
            format!("request body too large: this endpoint takes no body (at most {} bytes)", self.bytes)
        };
        error(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
}

/// Buffers the request body if it fits `limit`, else answers 413 (after
/// reading the rest of the upload, see [`drain`]).
async fn limit_body(State(limit): State<BodyLimit>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.bytes as u64) {
        return drain(stream, limit.refusal()).await;
    }
    let mut buffer = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return error(StatusCode::BAD_REQUEST, "the request body could not be read to its end");
        };
        if buffer.len() + chunk.len() > limit.bytes {
            return drain(stream, limit.refusal()).await;
        }
        buffer.extend_from_slice(&chunk);
    }
    next.run(Request::from_parts(parts, Body::from(buffer.freeze()))).await
}

/// Reads what is left of a refused request's body, throwing it away, then
/// answers `refusal`. A client that sends its whole body before reading the
/// response would otherwise see a reset connection instead of the reason.
/// Bounded in time ([`DRAIN_FOR`], [`DRAIN_IDLE`]); nothing is kept.
async fn drain(mut body: axum::body::BodyDataStream, refusal: Response) -> Response {
    let deadline = tokio::time::Instant::now() + DRAIN_FOR;
    loop {
        let next = tokio::time::timeout(DRAIN_IDLE, body.next());
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Ok(Some(Ok(_)))) => continue,
            _ => break,
        }
    }
    let mut refusal = refusal;
    refusal.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    refusal
}

async fn list(State(stages): State<Stages>) -> Response {
    let mut all: Vec<_> = stages.values().map(|s| s.status()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    axum::Json(all).into_response()
}

fn unknown(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no stage named `{name}`"))
}

fn swapped(name: &str, result: Result<Swapped, String>, refused: StatusCode) -> Response {
    match result {
        Ok(s) => axum::Json(json!({
            "stage": name,
            "from": s.from,
            "to": s.to,
            "prepare_ms": s.prepare.as_secs_f64() * 1000.0,
        }))
        .into_response(),
        Err(reason) => (refused, axum::Json(json!({ "stage": name, "error": reason }))).into_response(),
    }
}

async fn swap(State(stages): State<Stages>, Path(name): Path<String>, body: Body) -> Response {
    let Some(hot) = stages.get(&name).cloned() else { return unknown(&name) };
    // Already buffered and size-checked by `limit_body`.
    let Ok(body): Result<Bytes, _> = axum::body::to_bytes(body, usize::MAX).await else {
        return error(StatusCode::BAD_REQUEST, "the request body could not be read");
    };
    let result = tokio::task::spawn_blocking(move || hot.swap_bytes(&body))
        .await
        .unwrap_or_else(|e| Err(format!("swap task failed: {e}")));
    swapped(&name, result, StatusCode::UNPROCESSABLE_ENTITY)
}

async fn rollback(State(stages): State<Stages>, Path(name): Path<String>) -> Response {
    let Some(hot) = stages.get(&name).cloned() else { return unknown(&name) };
    swapped(&name, hot.rollback(), StatusCode::CONFLICT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_parsed() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn tokens_match_exactly() {
        let token = Token::new("0123456789abcdef");
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcde"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(…)");
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1:9090"));
        assert!(is_loopback("127.1.2.3:9090"));
        assert!(is_loopback("[::1]:9090"));
        assert!(is_loopback("[::ffff:127.0.0.1]:9090"));
        assert!(!is_loopback("0.0.0.0:9090"));
        assert!(!is_loopback("[::]:9090"));
        assert!(!is_loopback("10.1.2.3:9090"));
        assert!(!is_loopback("no-such-host.invalid:9090"));
    }
}
