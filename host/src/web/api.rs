//! The dashboard's JSON API under `PREFIX/api/`: the same data and actions as the pages, for
//! scripts. Errors are `{"error": "..."}` with 400, 401, 403, 404, 413 or 500. Routes, auth and
//! examples: `docs/dashboard.md`.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use super::{
    blocking,
    data::{self, Failure, JobsQuery, PER_PAGE},
    Shared,
};
use crate::{
    catalog::inventory::Listing,
    job::{json_text_depth, ParamsError},
    store::CancelOutcome,
};

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn failure(f: &Failure) -> Response {
    error(f.status(), f.message())
}

fn answer(result: Result<Result<Value, Failure>, Failure>) -> Response {
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(f)) | Err(f) => failure(&f),
    }
}

/// `GET /api/stats`: `{"by_state": {...}, "finished": {"5m": n, ...}, "failed": {...}}`.
pub async fn stats(State(app): State<Shared>) -> Response {
    answer(
        blocking(&app, |app| {
            let health = app.health();
            let overview = data::overview(&mut **app.store(), false, health)?;
            serde_json::to_value(overview).map_err(|e| Failure::Internal(e.to_string()))
        })
        .await,
    )
}

/// `GET /api/jobs?state=&class=&priority=&page=`: `{"jobs": [...], "page": n, "per_page": 50,
/// "has_more": bool}`, newest first.
pub async fn jobs(
    State(app): State<Shared>,
    pairs: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let query = match JobsQuery::from_query(pairs) {
        Ok(q) => q,
        Err(f) => return failure(&f),
    };
    answer(
        blocking(&app, move |app| {
            let (jobs, more) = data::list(&mut **app.store(), &query)?;
            Ok(json!({
                "jobs": jobs,
                "page": query.page,
                "per_page": PER_PAGE,
                "has_more": more,
            }))
        })
        .await,
    )
}

/// `GET /api/jobs/{id}`: `{"job": {...}, "attempts": [...]}`, as `jobhost show --json`.
pub async fn job(State(app): State<Shared>, id: Result<Path<String>, PathRejection>) -> Response {
    let id = match data::job_id(id) {
        Ok(id) => id,
        Err(f) => return failure(&f),
    };
    answer(
        blocking(&app, move |app| {
            let (job, attempts) = data::job(&mut **app.store(), id)?;
            Ok(json!({ "job": job, "attempts": attempts }))
        })
        .await,
    )
}

/// `GET /api/plugins`: the inventory as `jobhost plugins --json`, plus `runnable`: every
/// `Class@method` that can be run (offered and approved).
pub async fn plugins(State(app): State<Shared>) -> Response {
    answer(
        blocking(&app, |app| {
            let plugins = data::plugins(app)?;
            let mut value = serde_json::to_value(Listing::from(&plugins.inventory))
                .map_err(|e| Failure::Internal(e.to_string()))?;
            value["runnable"] = json!(plugins.runnable());
            value["allowlist_error"] = json!(plugins.allowlist.as_ref().err());
            Ok(value)
        })
        .await,
    )
}

/// `GET /api/dispatchers`: `{"dispatchers": [{id, host, pid, slots, state_dir, started_at,
/// heartbeat_at, running}]}`, every dispatcher registered in the store.
pub async fn dispatchers(State(app): State<Shared>) -> Response {
    answer(
        blocking(&app, |app| {
            let dispatchers = app.store().dispatchers().map_err(Failure::from)?;
            Ok(json!({ "dispatchers": dispatchers }))
        })
        .await,
    )
}

/// `GET /api/logs`: `{"main": [lines], "errors": [lines]}`, the last 200 of each, oldest first.
pub async fn logs(State(app): State<Shared>) -> Response {
    answer(
        blocking(&app, |app| {
            serde_json::to_value(data::logs(app)).map_err(|e| Failure::Internal(e.to_string()))
        })
        .await,
    )
}

/// `POST /api/jobs` with `{"class", "method", "params", "priority", "delay", "retries",
/// "retry_delay", "timeout"}` (all but class and method optional): `201 {"id": n}`.
pub async fn run(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            return failure(&Failure::unreadable(
                e.status(),
                e.body_text(),
                app.body_limit,
            ))
        }
    };
    // Every field but the params is a scalar: a body nested deeper than the params may be is
    // params over the limit, said so before a JSON reader stops at its own limit.
    let limit = app.settings.limits.max_params_depth;
    if json_text_depth(&String::from_utf8_lossy(&body), limit + 1) > limit + 1 {
        return error(
            StatusCode::BAD_REQUEST,
            &ParamsError::TooDeep { limit }.to_string(),
        );
    }
    let request: data::RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    match blocking(&app, move |app| data::run(app, request)).await {
        Ok(Ok(id)) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Ok(Err(f)) | Err(f) => failure(&f),
    }
}

/// `POST /api/jobs/{id}/cancel`: `{"id": n, "outcome": "cancelled" | "cancel_requested"}`.
pub async fn cancel(
    State(app): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match data::job_id(id) {
        Ok(id) => id,
        Err(f) => return failure(&f),
    };
    answer(
        blocking(&app, move |app| {
            let outcome = match data::cancel(app, id)? {
                CancelOutcome::Cancelled => "cancelled",
                _ => "cancel_requested",
            };
            Ok(json!({ "id": id, "outcome": outcome }))
        })
        .await,
    )
}

/// `POST /api/jobs/{id}/retry`: `{"id": n, "state": "queued"}`.
pub async fn retry(State(app): State<Shared>, id: Result<Path<String>, PathRejection>) -> Response {
    let id = match data::job_id(id) {
        Ok(id) => id,
        Err(f) => return failure(&f),
    };
    answer(
        blocking(&app, move |app| {
            data::retry(app, id)?;
            Ok(json!({ "id": id, "state": "queued" }))
        })
        .await,
    )
}
