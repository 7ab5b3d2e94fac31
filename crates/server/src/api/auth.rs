//! `POST /v1/auth`, `POST /v1/logout`, `GET /v1/session`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use store::{Reservation, Session};

use crate::api::parse_json;
use crate::auth::guard::Authed;
use crate::auth::header::{BasicCredentials, parse_token};
use crate::auth::jwt::Claims;
use crate::auth::{apikey, credential_header};
use crate::error::{ApiError, ApiResult, LOGIN_DENIED};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
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

/// How long a login waits for attempts being checked to leave it a place.
const MAX_LOGIN_WAIT: Duration = Duration::from_secs(10);

/// The user (and the API key used, if one was), if the credentials are right and the user may
/// log in now; `None` for every kind of refusal alike.
///
/// A name of an API key's form that the org has as a key is checked as one: the secret against
/// its hash, the key not revoked, its user allowed to log in. Any other name is a user name: one
/// Argon2 verification in every case (a dummy hash for unknown users).
async fn check_credentials(
    state: &AppState,
    org: &str,
    creds: BasicCredentials,
    now: chrono::DateTime<Utc>,
) -> ApiResult<Option<(store::User, Option<String>)>> {
    let today = now.date_naive();
    if apikey::looks_like_key(&creds.user_name)
        && let Some((key, hash)) = state.store.find_api_key(org, &creds.user_name).await?
    {
        let ok = apikey::verify(&creds.password, &hash) && !key.revoked;
        let user = match ok {
            true => state.store.find_user(org, &key.user_name).await?,
            false => None,
        };
        return Ok(match user {
            Some(u) if u.may_log_in(today) => Some((u, Some(key.api_key))),
            _ => {
                tracing::info!(org = ?org, api_key = ?creds.user_name, "API key login refused");
                None
            }
        });
    }
    let user = state.store.find_user(org, &creds.user_name).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let password_ok = state.engine.hasher.verify(creds.password, hash).await?;
    match user {
        Some(u) if password_ok && u.may_log_in(today) => Ok(Some((u, None))),
        _ => {
            tracing::info!(org = ?org, user = ?creds.user_name, "login refused");
            Ok(None)
        }
    }
}

/// Failures counted per user and per client address (an IPv6 client by its /64).
fn failure_keys(org: &str, user: &str, addr: &SocketAddr) -> [String; 2] {
    [
        format!("user:{org}/{user}"),
        format!("addr:{}", crate::conn::client_key(addr.ip())),
    ]
}

#[utoipa::path(post, path = "/v1/auth", tag = "auth",
    summary = "Log in",
    description = "Header `Authorization: Token <base64(userName:password)>`. Body `{}`, empty, or `{\"orgUid\": ...}`. Every refusal is the same 403; 10 failures per user or address in 5 minutes: 429 with `Retry-After`.",
    request_body(content = Option<AuthRequest>, content_type = "application/json"),
    security(("token" = [])),
    responses(
        (status = 200, description = "A new session", body = crate::api::openapi::SessionBody),
        (status = 400, description = "A malformed `Authorization` header or body", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Access Denied - Invalid username and/or password!`", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Too many failed logins", body = crate::api::openapi::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds")))))]
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
    // In a task of its own: a client that hangs up must not cancel the login between the
    // reservation of its attempt and its end, or the reservation would hold a place (and lock
    // the user out) until the window passes.
    tokio::spawn(log_in(state, org, creds, addr))
        .await
        .map_err(|e| ApiError::Internal(format!("login task: {e}")))?
}

/// The login itself, once the request is parsed: reserve an attempt, check the password, end
/// the attempt, make the session.
async fn log_in(
    state: AppState,
    org: String,
    creds: BasicCredentials,
    addr: SocketAddr,
) -> ApiResult<Json<AuthResponse>> {
    let now = Utc::now();
    let now_us = now.timestamp_micros();
    let window_us = i64::try_from(state.config.login_window_secs).unwrap_or(300) * 1_000_000;
    let keys = failure_keys(&org, &creds.user_name, &addr);
    // The attempt is counted before the password is checked, in one transaction: however many
    // arrive at once, on however many nodes, at most `login_max_failures` wrong passwords are
    // checked per window. While attempts being checked fill the remaining places, a login waits
    // for them (a success gives its place back) rather than being refused.
    let attempt = uuid::Uuid::new_v4().simple().to_string();
    // A lockout another node already found (Redis): refused without counting again.
    if let Some(redis) = &state.cache
        && let Some(left) = redis.lockout(&keys, now.timestamp()).await
    {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: left.unsigned_abs(),
        });
    }
    let waited = Instant::now();
    loop {
        let now_us = Utc::now().timestamp_micros();
        let reservation = state
            .store
            .reserve_login_attempt(
                &keys,
                &attempt,
                now_us,
                now_us - window_us,
                state.config.login_max_failures,
            )
            .await?;
        match reservation {
            Reservation::Reserved => break,
            Reservation::Refused { newest, key } => {
                let retry = (newest + window_us - now_us).max(1_000_000) / 1_000_000;
                if let Some(redis) = &state.cache {
                    let now_secs = now_us / 1_000_000;
                    redis.lock_out(&[key], now_secs, now_secs + retry).await;
                }
                return Err(ApiError::TooManyRequests {
                    retry_after_secs: retry.unsigned_abs(),
                });
            }
            Reservation::Busy if waited.elapsed() < MAX_LOGIN_WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Reservation::Busy => {
                return Err(ApiError::TooManyRequests {
                    retry_after_secs: 1,
                });
            }
        }
    }

    let checked = check_credentials(&state, &org, creds, now).await;
    let (user, api_key) = match checked {
        Ok(Some(found)) => found,
        Ok(None) => {
            state.store.login_attempt_failed(&attempt).await?;
            // Old failures are pruned here.
            state.store.prune_login_failures(now_us - window_us).await?;
            return Err(ApiError::AccessDenied(LOGIN_DENIED.into()));
        }
        Err(e) => {
            // Not a wrong password: the place is given back.
            let _ = state.store.login_attempt_succeeded(&attempt, "").await;
            return Err(e);
        }
    };
    // Success: this attempt's places are given back and the user's failures cleared.
    state
        .store
        .login_attempt_succeeded(&attempt, &keys[0])
        .await?;
    start_session(&state, org, user, api_key).await.map(Json)
}

/// Makes a session for a user who just proved who they are (a password, an API key, or an SSO
/// sign-in) and answers with the body of `/v1/auth`.
pub(crate) async fn start_session(
    state: &AppState,
    org: String,
    user: store::User,
    api_key: Option<String>,
) -> ApiResult<AuthResponse> {
    let now = Utc::now();
    let now_us = now.timestamp_micros();
    let session = Session {
        session_id: uuid::Uuid::new_v4().to_string(),
        csrf: uuid::Uuid::new_v4().to_string(),
        org_uid: org.clone(),
        user_name: user.user_name.clone(),
        created_at: now_us,
        last_seen_at: now_us,
        api_key,
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
    Ok(AuthResponse {
        org_uid: org,
        session_id: session.session_id,
        user_name: user.user_name,
        display_name: user.display_name,
        email_address: user.email_address,
        csrf: session.csrf,
        jwt: Some(jwt),
        roles: None,
        status: "OK",
    })
}

#[utoipa::path(post, path = "/v1/logout", tag = "auth",
    summary = "End the session",
    security(("jwt" = [], "csrf" = [])),
    responses((status = 200, description = "The session is over", body = crate::api::openapi::OkBody)))]
pub async fn post_logout(
    State(state): State<AppState>,
    authed: Authed,
) -> ApiResult<Json<serde_json::Value>> {
    state.store.delete_session(authed.session_id()).await?;
    state.tokens.forget(&authed.token);
    let id = authed.session_id().to_string();
    crate::cluster::publish(&state, crate::cluster::Event::Session { id }).await;
    Ok(Json(serde_json::json!({"status": "OK"})))
}

/// Answers from the guard's view of the session: no database round trip on a cached token.
#[utoipa::path(get, path = "/v1/session", tag = "auth",
    summary = "The session, with the user's roles",
    security(("jwt" = [], "csrf" = [])),
    responses((status = 200, description = "The login answer without `jwt`, with `roles`", body = crate::api::openapi::SessionBody)))]
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
