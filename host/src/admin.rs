//! The admin HTTP listener (`[admin] listen`).
//!
//! - `GET /stages`: per stage, the running and previous version, the time of
//!   the last swap, and the last refused version with the reason.
//! - `POST /stages/{name}/plugin`: swap in the `.wasm` bytes of the body.
//! - `POST /stages/{name}/rollback`: back to the previous version.
//! - `GET /health`: `ok`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::plugin::swap::{HotPlugin, Swapped};

type Stages = Arc<HashMap<String, Arc<HotPlugin>>>;

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(listener: tokio::net::TcpListener, stages: Vec<Arc<HotPlugin>>, shutdown: CancellationToken) {
    let stages: Stages = Arc::new(stages.into_iter().map(|s| (s.stage().to_string(), s)).collect());
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/stages", get(list))
        .route("/stages/{name}/plugin", post(swap))
        .route("/stages/{name}/rollback", post(rollback))
        .with_state(stages);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!("admin listener failed: {e}");
    }
}

async fn list(State(stages): State<Stages>) -> Response {
    let mut all: Vec<_> = stages.values().map(|s| s.status()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    axum::Json(all).into_response()
}

fn unknown(name: &str) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({ "error": format!("no stage named `{name}`") }))).into_response()
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

async fn swap(State(stages): State<Stages>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(hot) = stages.get(&name).cloned() else { return unknown(&name) };
    let result = tokio::task::spawn_blocking(move || hot.swap_bytes(&body))
        .await
        .unwrap_or_else(|e| Err(format!("swap task failed: {e}")));
    swapped(&name, result, StatusCode::UNPROCESSABLE_ENTITY)
}

async fn rollback(State(stages): State<Stages>, Path(name): Path<String>) -> Response {
    let Some(hot) = stages.get(&name).cloned() else { return unknown(&name) };
    swapped(&name, hot.rollback(), StatusCode::CONFLICT)
}
