//! Single sign-on: what OpenID Connect and SAML share once a provider has said who the user is.
//!
//! ```text
//! provider flow (oidc.rs, saml.rs) -> Identity -> sign_in: the user, made by the cloudio app's
//!   create-user function if missing -> a one-time code -> 302 to app_url?sso_code=<code>
//! POST /v1/sso/exchange {"code"} -> a session, the body of /v1/auth (api::auth::start_session)
//! ```
//!
//! Invariants (absences):
//! - no session without a flow that passed every check: a failed check is an [`ApiError::AccessDenied`]
//!   naming it, before any code is made;
//! - no state in memory: pending sign-ins, codes and used assertions are rows (`store::sso`),
//!   so any node may answer any step;
//! - no client secret, code or token is logged or returned (only a code's hash is stored).

pub mod oidc;
pub mod saml;
pub mod saml_xml;

/// The configured providers of every protocol.
pub struct Sso {
    pub oidc: oidc::Oidc,
    pub saml: saml::Saml,
}

impl Sso {
    pub fn new(config: &crate::config::SsoConfig) -> Result<Sso, String> {
        Ok(Sso {
            oidc: oidc::Oidc::new(&config.oidc)?,
            saml: saml::Saml::new(&config.saml)?,
        })
    }
}

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::error::{ApiError, ApiResult, LOGIN_DENIED};
use crate::state::AppState;

/// Who a provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_name: String,
    pub display_name: Option<String>,
    pub email_address: Option<String>,
}

/// How long a hand-off code may be exchanged (spec: 60 s).
pub const CODE_TTL_SECS: i64 = 60;
/// How long a sign-in may take at the provider (spec: state valid 10 min).
pub const PENDING_TTL_SECS: i64 = 600;

/// The module and function of the cloudio app that create unknown users.
const CREATE_USER: (&str, &str) = ("create-user", "createUser");

/// A refusal of the flow, naming the check that failed; logged, never a session.
pub fn denied(check: impl std::fmt::Display) -> ApiError {
    let msg = format!("Access Denied - single sign-on failed: {check}");
    tracing::warn!(reason = ?msg, "SSO sign-in refused");
    ApiError::AccessDenied(msg)
}

/// `n` random bytes as unpadded base64url (states, nonces, verifiers, codes).
pub fn random_token(n: usize) -> ApiResult<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("random: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Ends a flow whose provider vouched for `who`: finds (or has `create-user` make) the user,
/// and answers with the redirect to `app_url` carrying a one-time code.
pub async fn finish(
    state: &AppState,
    org: &str,
    app_url: &str,
    who: Identity,
) -> ApiResult<String> {
    let user = sign_in(state, org, &who).await?;
    let code = random_token(32)?;
    let now = chrono::Utc::now().timestamp_micros();
    state
        .store
        .put_sso_code(
            &crate::auth::apikey::hash(&code),
            org,
            &user.user_name,
            now + CODE_TTL_SECS * 1_000_000,
        )
        .await?;
    tracing::info!(org = ?org, user = ?user.user_name, "SSO sign-in: hand-off code issued");
    let sep = if app_url.contains('?') { '&' } else { '?' };
    Ok(format!("{app_url}{sep}sso_code={code}"))
}

/// The user `who` names: existing (its roles untouched), or made now by the cloudio app's
/// `create-user` function. Refused when there is neither, when the function throws, or when
/// the user may not log in (disabled, outside its dates).
async fn sign_in(state: &AppState, org: &str, who: &Identity) -> ApiResult<store::User> {
    if let Err(e) = store::check_user_name(&who.user_name) {
        return Err(denied(format!(
            "the user name from the provider is unusable: {e}"
        )));
    }
    let today = chrono::Utc::now().date_naive();
    let user = match state.store.find_user(org, &who.user_name).await? {
        Some(u) => u,
        None => {
            create_user(state, org, who).await?;
            state
                .store
                .find_user(org, &who.user_name)
                .await?
                .ok_or_else(|| {
                    denied(format!(
                        "create-user did not create user `{}`",
                        who.user_name
                    ))
                })?
        }
    };
    if !user.may_log_in(today) {
        return Err(denied(format!(
            "user `{}` is disabled or outside its dates",
            user.user_name
        )));
    }
    Ok(user)
}

/// Runs `create-user`/`createUser` of the cloudio app as the built-in user `system` with the
/// cloudio app's `administrator` role.
async fn create_user(state: &AppState, org: &str, who: &Identity) -> ApiResult<()> {
    let system = crate::engine::Principal {
        org_uid: org.to_string(),
        user_name: "system".into(),
        roles: std::sync::Arc::new(vec![(
            store::PLATFORM_APP.to_string(),
            "administrator".to_string(),
        )]),
        request_id: crate::request_id::current(),
    };
    let arg = json!({
        "userName": who.user_name,
        "displayName": who.display_name,
        "emailAddress": who.email_address,
    });
    let (module, function) = CREATE_USER;
    match state
        .engine
        .call_platform_function(&system, store::PLATFORM_APP, module, function, arg)
        .await
    {
        Ok(_) => {
            tracing::info!(org = ?org, user = ?who.user_name, "SSO: create-user made the user");
            Ok(())
        }
        Err(crate::engine::Error::NotFound(_)) => Err(denied(format!(
            "no user `{}`, and the cloudio app has no create-user function",
            who.user_name
        ))),
        Err(crate::engine::Error::User(m)) => Err(denied(m)),
        Err(e) => {
            let e = ApiError::from(e);
            tracing::warn!(error = %e, "SSO: create-user failed");
            Err(match e {
                ApiError::Internal(_) => e,
                e => denied(format!("create-user failed: {e}")),
            })
        }
    }
}

/// `POST /v1/sso/exchange`: a hand-off code for a session; any code but a live, unused one is
/// the `/v1/auth` 403.
pub async fn exchange(state: &AppState, code: &str) -> ApiResult<crate::api::auth::AuthResponse> {
    let now = chrono::Utc::now();
    let taken = state
        .store
        .take_sso_code(&crate::auth::apikey::hash(code), now.timestamp_micros())
        .await?;
    let Some((org, user_name)) = taken else {
        return Err(ApiError::AccessDenied(LOGIN_DENIED.into()));
    };
    match state.store.find_user(&org, &user_name).await? {
        Some(u) if u.may_log_in(now.date_naive()) => {
            crate::api::auth::start_session(state, org, u, None).await
        }
        _ => Err(ApiError::AccessDenied(LOGIN_DENIED.into())),
    }
}
