//! The HTTP API (JSON). This layer only reads the status board (and, in later parts, sends
//! commands to the cutover machine); it never runs SQL itself.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::cdc::Control;
use crate::secret::Secret;
use crate::status::StatusBoard;

#[derive(Clone)]
pub struct AppState {
    pub status: Arc<StatusBoard>,
    pub control: Arc<Control>,
    /// Mutating routes need `Authorization: Bearer <token>` when set.
    pub token: Option<Secret>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/replication/resume", post(resume))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    Json(s.status.view()).into_response()
}

/// `None` when the request may mutate; otherwise the 401 to send.
fn authorize(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let token = state.token.as_ref()?;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if token.constant_time_eq(g) => None,
        _ => Some(error_response(
            StatusCode::UNAUTHORIZED,
            "this route needs the API token",
            "send the header 'Authorization: Bearer <token>' with the token of api.token_file \
             or PGCUTOVER_API_TOKEN",
        )),
    }
}

async fn resume(
    axum::extract::State(s): axum::extract::State<AppState>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = authorize(&s, &headers) {
        return denied;
    }
    if s.control.resume(&s.status) {
        (
            StatusCode::ACCEPTED,
            Json(json!({ "resumed": true, "stage": "cdc" })),
        )
            .into_response()
    } else {
        error_response(
            StatusCode::CONFLICT,
            &format!(
                "the change stream is not stopped (stage {})",
                serde_json::to_value(s.status.stage())
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
            "resume is for a change stream stopped on an error; GET /status shows the stage",
        )
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no route {}", uri.path()),
        "the API has GET /healthz, GET /status and POST /replication/resume",
    )
}

/// `{ "error": ..., "hint": ... }` with a status code.
pub fn error_response(code: StatusCode, error: &str, hint: &str) -> Response {
    (code, Json(json!({ "error": error, "hint": hint }))).into_response()
}
