//! `GET /v1/status` and `GET /metrics`: no authentication.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::state::AppState;

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

pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render(
        state.store.db.pool_stats(),
        state.started.elapsed().as_secs_f64(),
    );
    text.push_str(&crate::metrics::render_scripts(
        &state.engine.scripts.stats(),
    ));
    text.push_str(&state.workflows.render_metrics().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
