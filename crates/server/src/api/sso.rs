//! `/v1/sso/*`: the browser's steps of a single sign-on, and the hand-off code's exchange.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::auth::AuthResponse;
use crate::api::parse_json;
use crate::error::ApiResult;
use crate::state::AppState;

/// A 302 to `to`, which nothing should cache or pass on as a referrer (it may carry a code).
fn redirect(to: String) -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, to),
            (header::CACHE_CONTROL, "no-store".into()),
            (header::REFERRER_POLICY, "no-referrer".into()),
        ],
    )
        .into_response()
}

/// `GET /v1/sso/oidc/<provider>/login`: 302 to the provider's authorization endpoint.
pub async fn get_oidc_login(
    State(state): State<AppState>,
    Path(provider): Path<String>,
) -> ApiResult<Response> {
    let to = state.sso.oidc.login_url(&state.store, &provider).await?;
    Ok(redirect(to))
}

/// `GET /v1/sso/oidc/<provider>/callback?code=&state=`: 302 to the provider's `app_url` with
/// `?sso_code=`, once every check passed.
pub async fn get_oidc_callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (who, org, app_url) = state.sso.oidc.callback(&state.store, &provider, &q).await?;
    let org = org.unwrap_or_else(|| state.config.default_org.clone());
    let to = crate::sso::finish(&state, &org, &app_url, who).await?;
    Ok(redirect(to))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    code: String,
}

/// `POST /v1/sso/exchange {"code"}`: the body of `/v1/auth`, once per code.
pub async fn post_exchange(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<AuthResponse>> {
    let req: ExchangeRequest = parse_json(&body, false)?;
    Ok(Json(crate::sso::exchange(&state, &req.code).await?))
}
