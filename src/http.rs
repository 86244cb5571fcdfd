//! The HTTP API (JSON). This layer reads the status board and hands requests to the parts
//! that act (the change stream's control, the validation service); it never runs SQL itself.

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
use crate::validate::service::Service as Validation;

#[derive(Clone)]
pub struct AppState {
    pub status: Arc<StatusBoard>,
    pub control: Arc<Control>,
    pub validation: Arc<Validation>,
    /// Mutating routes need `Authorization: Bearer <token>` when set.
    pub token: Option<Secret>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/replication/resume", post(resume))
        .route("/validation", get(validation_view).post(validation_start))
        .route("/metrics", get(metrics))
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
    let stage = serde_json::to_value(s.status.stage()).unwrap_or_default();
    if s.control.resume(&s.status) {
        (
            StatusCode::ACCEPTED,
            Json(json!({ "resumed": true, "from_stage": stage })),
        )
            .into_response()
    } else {
        error_response(
            StatusCode::CONFLICT,
            &format!(
                "nothing waits to be resumed (stage {})",
                stage.as_str().unwrap_or_default()
            ),
            "resume is for a change stream stopped on an error, a load that failed, or either \
             one waiting to try again; GET /status shows the stage",
        )
    }
}

async fn validation_view(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    Json(s.validation.view()).into_response()
}

/// `POST /validation` body; every field is optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidationRequest {
    /// `quick` or `full` (default).
    mode: Option<crate::validate::Mode>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    skip: Vec<String>,
    sample_pct: Option<f64>,
    jobs: Option<usize>,
    max_diffs: Option<usize>,
}

impl ValidationRequest {
    fn options(self) -> Result<crate::validate::Options, String> {
        let mode = self.mode.unwrap_or(crate::validate::Mode::Full);
        let mut o = crate::validate::Options::parse(
            mode,
            &self.tables,
            &self.skip,
            self.sample_pct,
            self.jobs,
        )?;
        if let Some(m) = self.max_diffs {
            o.max_diffs = m.min(10_000);
        }
        Ok(o)
    }
}

async fn validation_start(
    axum::extract::State(s): axum::extract::State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = authorize(&s, &headers) {
        return denied;
    }
    let hint = "send JSON like {\"mode\": \"full\", \"tables\": [\"public.*\"], \"skip\": \
                [\"sequences\"], \"sample_pct\": 5, \"jobs\": 2}, or no body";
    let request: ValidationRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ValidationRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}"), hint);
            }
        }
    };
    let opts = match request.options() {
        Ok(o) => o,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &e, hint),
    };
    match s.validation.start(opts) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "started": true, "poll": "GET /validation" })),
        )
            .into_response(),
        Err(e) => error_response(StatusCode::CONFLICT, &e.to_string(), &e.hint()),
    }
}

/// Prometheus text format.
async fn metrics(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    let mut out = s.status.metrics();
    s.validation.metrics(&mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no route {}", uri.path()),
        "the API has GET /healthz, GET /status, GET /metrics, POST /replication/resume and \
         GET|POST /validation",
    )
}

/// `{ "error": ..., "hint": ... }` with a status code.
pub fn error_response(code: StatusCode, error: &str, hint: &str) -> Response {
    (code, Json(json!({ "error": error, "hint": hint }))).into_response()
}
