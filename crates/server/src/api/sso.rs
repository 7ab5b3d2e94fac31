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
use crate::error::{ApiError, ApiResult};
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
#[utoipa::path(get, path = "/v1/sso/oidc/{provider}/login", tag = "sso",
    summary = "Start an OpenID Connect sign-in",
    description = "A 302 to the provider's authorization endpoint (from its discovery document) with `state`, `nonce` and PKCE (`S256`). See docs/sso.md.",
    params(("provider" = String, Path, description = "The `provider` of an `[[sso.oidc]]` entry")),
    responses(
        (status = 302, description = "To the provider", headers(("location" = String))),
        (status = 404, description = "No such provider", body = crate::api::openapi::ErrorBody),
        (status = 502, description = "The provider's discovery document could not be read", body = crate::api::openapi::ErrorBody)))]
pub async fn get_oidc_login(
    State(state): State<AppState>,
    Path(provider): Path<String>,
) -> ApiResult<Response> {
    let to = state.sso.oidc.login_url(&state.store, &provider).await?;
    Ok(redirect(to))
}

/// `GET /v1/sso/oidc/<provider>/callback?code=&state=`: 302 to the provider's `app_url` with
/// `?sso_code=`, once every check passed.
#[utoipa::path(get, path = "/v1/sso/oidc/{provider}/callback", tag = "sso",
    summary = "The provider's redirect back",
    description = "Checks `state`, exchanges `code` (with the client secret and the PKCE verifier) and validates the ID token; then a 302 to the provider's `app_url` with `?sso_code=<one-time code>`. A failed check is a 403 naming it; no session is made.",
    params(
        ("provider" = String, Path, description = "The `provider` of an `[[sso.oidc]]` entry"),
        ("code" = Option<String>, Query), ("state" = Option<String>, Query)),
    responses(
        (status = 302, description = "To `app_url?sso_code=...`", headers(("location" = String))),
        (status = 403, description = "A check failed (named in the message)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such provider", body = crate::api::openapi::ErrorBody),
        (status = 502, description = "The provider could not be reached", body = crate::api::openapi::ErrorBody)))]
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

/// `GET /v1/sso/saml/<provider>/login`: 302 to the IdP with an AuthnRequest.
#[utoipa::path(get, path = "/v1/sso/saml/{provider}/login", tag = "sso",
    summary = "Start a SAML sign-in",
    description = "A 302 to the IdP's sign-in URL (redirect binding) with a deflated, base64 `SAMLRequest` (an AuthnRequest whose ID is kept 10 minutes) and a `RelayState`. See docs/sso.md.",
    params(("provider" = String, Path, description = "The `provider` of an `[[sso.saml]]` entry")),
    responses(
        (status = 302, description = "To the IdP", headers(("location" = String))),
        (status = 404, description = "No such provider", body = crate::api::openapi::ErrorBody)))]
pub async fn get_saml_login(
    State(state): State<AppState>,
    Path(provider): Path<String>,
) -> ApiResult<Response> {
    let to = state.sso.saml.login_url(&state.store, &provider).await?;
    Ok(redirect(to))
}

/// `POST /v1/sso/saml/<provider>/acs` (form `SAMLResponse`, `RelayState`): 302 to the
/// provider's `app_url` with `?sso_code=`, once every check passed.
#[utoipa::path(post, path = "/v1/sso/saml/{provider}/acs", tag = "sso",
    summary = "The IdP's SAML response (POST binding)",
    description = "Form fields `SAMLResponse` (base64 XML) and `RelayState`. The Response or the Assertion must be signed by the configured certificate; Destination/Recipient, Audience, NotBefore/NotOnOrAfter, the assertion ID (once) and InResponseTo (a request of ours, once) are checked; then a 302 to the provider's `app_url` with `?sso_code=<one-time code>`. A failed check is a 403 naming it; a response that is not base64 or not XML a 400; no session is made.",
    params(("provider" = String, Path, description = "The `provider` of an `[[sso.saml]]` entry")),
    request_body(content_type = "application/x-www-form-urlencoded", content = String, description = "`SAMLResponse=...&RelayState=...`"),
    responses(
        (status = 302, description = "To `app_url?sso_code=...`", headers(("location" = String))),
        (status = 400, description = "No SAMLResponse, or not base64, UTF-8 or XML", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "A check failed (named in the message)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such provider", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "The form is larger than 512 KiB", body = crate::api::openapi::ErrorBody)))]
pub async fn post_saml_acs(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    if body.len() > MAX_ACS_FORM_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (who, org, app_url) = state.sso.saml.acs(&state.store, &provider, &form).await?;
    let org = org.unwrap_or_else(|| state.config.default_org.clone());
    let to = crate::sso::finish(&state, &org, &app_url, who).await?;
    Ok(redirect(to))
}

/// The ACS form's limit: a base64 response of at most 256 KiB, and room for the rest.
const MAX_ACS_FORM_BYTES: usize = 512 * 1024;

/// `GET /v1/sso/saml/<provider>/metadata`: our SP metadata XML.
#[utoipa::path(get, path = "/v1/sso/saml/{provider}/metadata", tag = "sso",
    summary = "This server's SAML SP metadata",
    description = "An `EntityDescriptor` with the SP entity ID and the ACS URL (HTTP-POST binding), for the IdP's console.",
    params(("provider" = String, Path, description = "The `provider` of an `[[sso.saml]]` entry")),
    responses(
        (status = 200, description = "SAML 2.0 metadata", content_type = "application/samlmetadata+xml", body = String),
        (status = 404, description = "No such provider", body = crate::api::openapi::ErrorBody)))]
pub async fn get_saml_metadata(
    State(state): State<AppState>,
    Path(provider): Path<String>,
) -> ApiResult<Response> {
    let xml = state.sso.saml.metadata(&provider)?;
    Ok((
        [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
        xml,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    code: String,
}

/// `POST /v1/sso/exchange {"code"}`: the body of `/v1/auth`, once per code.
#[utoipa::path(post, path = "/v1/sso/exchange", tag = "sso",
    summary = "Exchange a sign-in's one-time code for a session",
    description = "Body `{\"code\": \"<sso_code>\"}`. 200: exactly the body of `/v1/auth`. A used, expired or unknown code: the `/v1/auth` 403.",
    responses(
        (status = 200, description = "A new session", body = crate::api::openapi::SessionBody),
        (status = 400, description = "A malformed body", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Access Denied - Invalid username and/or password!`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_exchange(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<AuthResponse>> {
    let req: ExchangeRequest = parse_json(&body, false)?;
    Ok(Json(crate::sso::exchange(&state, &req.code).await?))
}
