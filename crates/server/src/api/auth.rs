//! `POST /v1/auth`, `POST /v1/logout`, `GET /v1/session`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use store::Session;

use crate::api::parse_json;
use crate::auth::credential_header;
use crate::auth::guard::Authed;
use crate::auth::header::parse_token;
use crate::auth::jwt::Claims;
use crate::error::{ApiError, ApiResult, LOGIN_DENIED};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthRequest {
    org_uid: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    org_uid: String,
    session_id: String,
    user_name: String,
    display_name: Option<String>,
    email_address: Option<String>,
    csrf: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<BTreeMap<String, Vec<String>>>,
    status: &'static str,
}

/// Failures counted per user and per client address.
fn failure_keys(org: &str, user: &str, addr: &SocketAddr) -> [String; 2] {
    [format!("user:{org}/{user}"), format!("addr:{}", addr.ip())]
}

pub async fn post_auth(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<AuthResponse>> {
    let creds = credential_header(&headers)
        .and_then(parse_token)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let req: AuthRequest = parse_json(&body, true)?;
    let org = req
        .org_uid
        .unwrap_or_else(|| state.config.default_org.clone());

    let now = Utc::now();
    let now_us = now.timestamp_micros();
    let window_us = i64::try_from(state.config.login_window_secs).unwrap_or(300) * 1_000_000;
    let keys = failure_keys(&org, &creds.user_name, &addr);
    // The attempt is counted before the password is checked, in one transaction: however many
    // arrive at once, on however many nodes, at most `login_max_failures` are checked per window.
    let attempt = uuid::Uuid::new_v4().simple().to_string();
    if let Some(newest) = state
        .store
        .reserve_login_attempt(
            &keys,
            &attempt,
            now_us,
            now_us - window_us,
            state.config.login_max_failures,
        )
        .await?
    {
        let retry = (newest + window_us - now_us).max(1_000_000) / 1_000_000;
        return Err(ApiError::TooManyRequests {
            retry_after_secs: retry.unsigned_abs(),
        });
    }

    let user = state.store.find_user(&org, &creds.user_name).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    // Verify even when the user is unknown or may not log in: the same work either way.
    let password_ok = state.hasher.verify(creds.password, hash).await?;
    let user = match user {
        Some(u) if password_ok && u.may_log_in(now.date_naive()) => u,
        _ => {
            // The reservation stays as the failure record; old ones are pruned here.
            state.store.prune_login_failures(now_us - window_us).await?;
            tracing::info!(org = ?org, user = ?creds.user_name, "login refused");
            return Err(ApiError::AccessDenied(LOGIN_DENIED.into()));
        }
    };
    // Success clears the user's failures and takes back this attempt under the address.
    state.store.clear_login_failures(&keys[0]).await?;
    state
        .store
        .release_login_attempt(&keys[1], &attempt)
        .await?;

    let session = Session {
        session_id: uuid::Uuid::new_v4().to_string(),
        csrf: uuid::Uuid::new_v4().to_string(),
        org_uid: org.clone(),
        user_name: user.user_name.clone(),
        created_at: now_us,
        last_seen_at: now_us,
    };
    state.store.create_session(&session).await?;
    let absolute = i64::try_from(state.config.session_absolute_secs).unwrap_or(43_200);
    let jwt = state
        .keys
        .sign(&Claims {
            session: session.session_id.clone(),
            csrf: session.csrf.clone(),
            org_uid: org.clone(),
            sub: user.user_name.clone(),
            iat: now.timestamp(),
            exp: now.timestamp() + absolute,
        })
        .map_err(ApiError::Internal)?;
    Ok(Json(AuthResponse {
        org_uid: org,
        session_id: session.session_id,
        user_name: user.user_name,
        display_name: user.display_name,
        email_address: user.email_address,
        csrf: session.csrf,
        jwt: Some(jwt),
        roles: None,
        status: "OK",
    }))
}

pub async fn post_logout(
    State(state): State<AppState>,
    authed: Authed,
) -> ApiResult<Json<serde_json::Value>> {
    state.store.delete_session(authed.session_id()).await?;
    state.tokens.forget(&authed.token);
    Ok(Json(serde_json::json!({"status": "OK"})))
}

/// Answers from the guard's view of the session: no database round trip on a cached token.
pub async fn get_session(authed: Authed) -> ApiResult<Json<AuthResponse>> {
    let mut roles: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (app, role) in authed.roles.iter() {
        roles.entry(app.clone()).or_default().push(role.clone());
    }
    Ok(Json(AuthResponse {
        org_uid: authed.claims.org_uid.clone(),
        session_id: authed.claims.session.clone(),
        user_name: authed.claims.sub.clone(),
        display_name: authed.profile.display_name.clone(),
        email_address: authed.profile.email_address.clone(),
        csrf: authed.claims.csrf.clone(),
        jwt: None,
        roles: Some(roles),
        status: "OK",
    }))
}
