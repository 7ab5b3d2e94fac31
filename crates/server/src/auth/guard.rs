//! The request guard every authenticated endpoint uses, as an extractor.
//!
//! A request passes when: a `Bearer` JWT is in `Authorization` (or `Authentication`), it verifies
//! (HS256, expiry, iat), the csrf from `?csrf=` or `X-CSRF-Token` equals the token's and the
//! session's, the session exists and is neither idle nor past its absolute lifetime, and its user
//! is enabled and inside its date range. Anything else is a 401.
//!
//! A bounded cache keyed by the token skips the crypto and the database for a repeated token;
//! each entry is re-checked against the database at most every `token_recheck_millis`, which
//! bounds how long a revocation made on another node (or by the CLI) takes to be seen. Revocations
//! made through this node drop the entries at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
use moka::sync::Cache;
use subtle::ConstantTimeEq;

use crate::auth::credential_header;
use crate::auth::header::parse_bearer;
use crate::auth::jwt::{Claims, SKEW_SECS};
use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Authed {
    pub token: String,
    pub claims: Claims,
    /// `(appUid, roleUid)` pairs the user holds, as of the last check.
    pub roles: Arc<Vec<(String, String)>>,
    /// The user's display name and email address, as of the last check.
    pub profile: Arc<Profile>,
}

#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub display_name: Option<String>,
    pub email_address: Option<String>,
}

impl Authed {
    /// Who the engine acts for.
    pub fn principal(&self) -> crate::engine::Principal {
        crate::engine::Principal {
            org_uid: self.claims.org_uid.clone(),
            user_name: self.claims.sub.clone(),
            roles: self.roles.clone(),
            request_id: crate::request_id::current(),
        }
    }

    pub fn user_name(&self) -> &str {
        &self.claims.sub
    }
    pub fn org_uid(&self) -> &str {
        &self.claims.org_uid
    }
    pub fn session_id(&self) -> &str {
        &self.claims.session
    }
}

#[derive(Debug)]
struct Entry {
    claims: Claims,
    roles: Arc<Vec<(String, String)>>,
    profile: Arc<Profile>,
    checked_at: Instant,
}

/// Validated tokens, bounded in size.
pub struct TokenCache {
    cache: Cache<String, Arc<Entry>>,
    recheck: Duration,
}

impl TokenCache {
    pub fn new(capacity: u64, recheck: Duration, max_ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(max_ttl)
            .support_invalidation_closures()
            .build();
        TokenCache { cache, recheck }
    }

    pub fn forget(&self, token: &str) {
        self.cache.invalidate(token);
    }

    /// Drops the cached tokens of one session (a logout seen from another node).
    pub fn forget_session(&self, session_id: &str) {
        let id = session_id.to_string();
        let _ = self
            .cache
            .invalidate_entries_if(move |_, e| e.claims.session == id);
    }

    /// Drops every cached token (a cluster channel reconnected: events may have been missed).
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    pub fn forget_user(&self, org: &str, user: &str) {
        let (org, user) = (org.to_string(), user.to_string());
        // Only fails when closures are unsupported, which the builder enables.
        let _ = self
            .cache
            .invalidate_entries_if(move |_, e| e.claims.org_uid == org && e.claims.sub == user);
    }
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::Unauthorized(msg.to_string())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The csrf from `?csrf=` (first occurrence) or `X-CSRF-Token`.
fn csrf_of(parts: &Parts) -> Option<String> {
    if let Some(q) = parts.uri.query() {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("csrf=") {
                return Some(v.to_string());
            }
        }
    }
    parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = credential_header(&parts.headers).map_err(|e| unauthorized(&e.to_string()))?;
        let token = parse_bearer(header)
            .map_err(|_| unauthorized("a `Bearer` token is required"))?
            .to_string();
        let csrf = csrf_of(parts).ok_or_else(|| unauthorized("the csrf token is missing"))?;
        let now = Utc::now();

        if let Some(entry) = state.tokens.cache.get(&token)
            && entry.checked_at.elapsed() < state.tokens.recheck
            && entry.claims.exp + SKEW_SECS >= now.timestamp()
        {
            if !same(&entry.claims.csrf, &csrf) {
                return Err(unauthorized("the csrf token does not match the session"));
            }
            return Ok(Authed {
                token,
                claims: entry.claims.clone(),
                roles: entry.roles.clone(),
                profile: entry.profile.clone(),
            });
        }

        let claims = state
            .keys
            .verify(&token, now.timestamp())
            .map_err(|e| unauthorized(&e.to_string()))?;
        if !same(&claims.csrf, &csrf) {
            return Err(unauthorized("the csrf token does not match the session"));
        }
        let now_us = now.timestamp_micros();
        let live = session_view(state, &claims, now).await?;
        let s = &live.session;
        let idle_us = micros(state.config.session_idle());
        let absolute_us = micros(state.config.session_absolute());
        if !same(&s.csrf, &csrf) || s.user_name != claims.sub || s.org_uid != claims.org_uid {
            return Err(unauthorized("the token does not belong to this session"));
        }
        if !live.user_may_log_in {
            return Err(unauthorized("the user may no longer sign in"));
        }
        if now_us - s.last_seen_at > idle_us || now_us - s.created_at > absolute_us {
            state.store.delete_session(&s.session_id).await?;
            state.tokens.forget(&token);
            return Err(unauthorized("the session has expired"));
        }
        // Slide the idle timeout, writing at most once a minute per session.
        if now_us - s.last_seen_at > 60_000_000 {
            state.store.touch_session(&s.session_id, now_us).await?;
            if let (Some(redis), Some(stamp)) = (&state.cache, live.stamp) {
                let mut cached = live.cached();
                cached.last_seen_at = now_us;
                redis.put_session(&s.session_id, stamp, cached).await;
            }
        }
        let roles = live.roles.clone();
        let profile = Arc::new(Profile {
            display_name: live.display_name.clone(),
            email_address: live.email_address.clone(),
        });
        let entry = Entry {
            claims: claims.clone(),
            roles: roles.clone(),
            profile: profile.clone(),
            checked_at: Instant::now(),
        };
        state.tokens.cache.insert(token.clone(), Arc::new(entry));
        Ok(Authed {
            token,
            claims,
            roles,
            profile,
        })
    }
}

/// A session as the guard checks it, from Redis or the database.
struct View {
    session: store::Session,
    user_may_log_in: bool,
    display_name: Option<String>,
    email_address: Option<String>,
    roles: Arc<Vec<(String, String)>>,
    /// Where it came from Redis, or may go there.
    stamp: Option<crate::cache::Stamp>,
}

impl View {
    fn cached(&self) -> crate::cache::CachedSession {
        crate::cache::CachedSession {
            csrf: self.session.csrf.clone(),
            org_uid: self.session.org_uid.clone(),
            user_name: self.session.user_name.clone(),
            created_at: self.session.created_at,
            last_seen_at: self.session.last_seen_at,
            user_may_log_in: self.user_may_log_in,
            display_name: self.display_name.clone(),
            email_address: self.email_address.clone(),
            roles: self.roles.as_ref().clone(),
        }
    }
}

/// The session and its user's state: from Redis when it holds a current entry, else from the
/// database (and then cached in Redis for every node). Redis down: the database alone.
async fn session_view(
    state: &AppState,
    claims: &Claims,
    now: chrono::DateTime<Utc>,
) -> Result<View, ApiError> {
    use crate::cache::Lookup;
    let lookup = match &state.cache {
        Some(redis) => {
            redis
                .session(&claims.session, &claims.org_uid, &claims.sub)
                .await
        }
        None => Lookup::Down,
    };
    let stamp = match lookup {
        Lookup::Hit(c, stamp) => {
            return Ok(View {
                session: store::Session {
                    session_id: claims.session.clone(),
                    csrf: c.csrf,
                    org_uid: c.org_uid,
                    user_name: c.user_name,
                    created_at: c.created_at,
                    last_seen_at: c.last_seen_at,
                    // Only written when a session is made; revoking a key deletes its sessions.
                    api_key: None,
                },
                user_may_log_in: c.user_may_log_in,
                display_name: c.display_name,
                email_address: c.email_address,
                roles: Arc::new(c.roles),
                stamp: Some(stamp),
            });
        }
        Lookup::Ended => return Err(unauthorized("the session has ended")),
        Lookup::Miss(stamp) => Some(stamp),
        Lookup::Down => None,
    };
    let live = state
        .store
        .live_session(&claims.session, now.date_naive())
        .await?
        .ok_or_else(|| unauthorized("the session has ended"))?;
    let roles = Arc::new(state.store.user_roles(&claims.org_uid, &claims.sub).await?);
    let view = View {
        session: live.session,
        user_may_log_in: live.user_may_log_in,
        display_name: live.display_name,
        email_address: live.email_address,
        roles,
        stamp,
    };
    if let (Some(redis), Some(stamp)) = (&state.cache, stamp) {
        redis
            .put_session(&claims.session, stamp, view.cached())
            .await;
    }
    Ok(view)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
