//! The HTTP API (JSON). This layer only reads the status board (and, in later parts, sends
//! commands to the cutover machine); it never runs SQL itself.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::status::StatusBoard;

#[derive(Clone)]
pub struct AppState {
    pub status: Arc<StatusBoard>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    Json(s.status.view()).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no route {}", uri.path()),
        "the API has GET /healthz and GET /status",
    )
}

/// `{ "error": ..., "hint": ... }` with a status code.
pub fn error_response(code: StatusCode, error: &str, hint: &str) -> Response {
    (code, Json(json!({ "error": error, "hint": hint }))).into_response()
}
