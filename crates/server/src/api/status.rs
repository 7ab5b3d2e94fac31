//! `GET /v1/status` and `GET /metrics`: no authentication.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::state::AppState;

#[utoipa::path(get, path = "/v1/status", tag = "status",
    summary = "Health",
    security(()),
    responses(
        (status = 200, description = "Up", body = crate::api::openapi::StatusBody),
        (status = 503, description = "The database is unreachable", body = crate::api::openapi::StatusBody)))]
pub async fn get_status(State(state): State<AppState>) -> impl IntoResponse {
    let db_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.db.ping()).await,
        Ok(Ok(()))
    );
    let cache = match &state.cache {
        None => "DISABLED",
        Some(redis) if redis.ping().await => "OK",
        Some(_) => "ERROR",
    };
    let body = json!({
        "status": if db_ok { "OK" } else { "ERROR" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "database": if db_ok { "OK" } else { "ERROR" },
        "cache": cache,
    });
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

#[utoipa::path(get, path = "/metrics", tag = "status",
    summary = "Prometheus metrics",
    description = "Text format 0.0.4: requests by route and status, latency histograms per route, database pool, SQLite writer queue, logins, script executions, workflow queue depth.",
    security(()),
    responses((status = 200, description = "The metrics", content_type = "text/plain", body = String)))]
pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render(&crate::metrics::Figures {
        pool: state.store.db.pool_stats(),
        pool_max: state.config.max_connections,
        writer: state.engine.writer_stats(),
        uptime: state.started.elapsed().as_secs_f64(),
    });
    text.push_str(&crate::metrics::render_scripts(
        &state.engine.scripts.stats(),
    ));
    text.push_str(&state.workflows.render_metrics().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
