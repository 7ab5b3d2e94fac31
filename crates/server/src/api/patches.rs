//! `/v1/apps/<appUid>/patch`: export an app as a zip, verify a patch, apply it. All three
//! require the `patch_administrator` role of the platform app.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::auth::guard::Authed;
use crate::error::{ApiError, ApiResult};
use crate::patch;
use crate::state::AppState;

/// The role that may export, verify and apply patches.
pub const PATCH_ROLE: &str = "patch_administrator";

fn require_role(authed: &Authed) -> ApiResult<()> {
    let holds = authed
        .roles
        .iter()
        .any(|(app, role)| app == store::PLATFORM_APP && role == PATCH_ROLE);
    if holds {
        Ok(())
    } else {
        Err(ApiError::AccessDenied(format!(
            "Access Denied - patches require the `{PATCH_ROLE}` role."
        )))
    }
}

/// `GET /v1/apps/<appUid>/patch`: the app directory as a zip.
#[utoipa::path(get, path = "/v1/apps/{app}/patch", tag = "patches",
    summary = "Export an app as a zip",
    params(("app" = String, Path, description = "The appUid", example = "demo")),
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "The app directory zipped", content_type = "application/zip", body = crate::api::openapi::Zip),
        (status = 403, description = "Not a `patch_administrator`", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such app", body = crate::api::openapi::ErrorBody)))]
pub async fn get_patch(
    State(state): State<AppState>,
    Path(app): Path<String>,
    authed: Authed,
) -> ApiResult<Response> {
    require_role(&authed)?;
    let Some(files) = patch::export(&state, &app).await? else {
        return Err(ApiError::NotFound(format!("No app `{app}`.")));
    };
    let zip = patch::write_zip(&app, &files).map_err(ApiError::Internal)?;
    // The app uid is an identifier (letters, digits, `_`, `-`): safe in the header.
    let disposition = format!("attachment; filename=\"{app}.zip\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        zip,
    )
        .into_response())
}

/// `POST /v1/apps/<appUid>/patch/verify`: what the zip in the body would change; changes
/// nothing.
#[utoipa::path(post, path = "/v1/apps/{app}/patch/verify", tag = "patches",
    summary = "What a patch would change; changes nothing",
    request_body(content = crate::api::openapi::Zip, content_type = "application/zip"),
    params(("app" = String, Path, description = "The appUid", example = "demo")),
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "The report", body = crate::api::openapi::PatchReport),
        (status = 400, description = "Not a usable zip; (apply) the problems, nothing changed", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Not a `patch_administrator`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_patch_verify(
    State(state): State<AppState>,
    Path(app): Path<String>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let outcome = run(&state, &app, &authed, &body, false).await?;
    Ok(axum::Json(outcome.body))
}

/// `POST /v1/apps/<appUid>/patch`: applies the zip in the body, or changes nothing and answers
/// 400 with every problem.
#[utoipa::path(post, path = "/v1/apps/{app}/patch", tag = "patches",
    summary = "Apply a patch",
    request_body(content = crate::api::openapi::Zip, content_type = "application/zip"),
    params(("app" = String, Path, description = "The appUid", example = "demo")),
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "The report", body = crate::api::openapi::PatchReport),
        (status = 400, description = "Not a usable zip; (apply) the problems, nothing changed", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Not a `patch_administrator`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_patch(
    State(state): State<AppState>,
    Path(app): Path<String>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let outcome = run(&state, &app, &authed, &body, true).await?;
    if !outcome.applies {
        return Err(ApiError::BadRequest(format!(
            "The patch was not applied; nothing changed. {} problem(s):\n- {}",
            outcome.problems.len(),
            outcome.problems.join("\n- ")
        )));
    }
    Ok(axum::Json(outcome.body))
}

/// Verifies (`commit` false) or applies the zip in `body`, for a `patch_administrator`.
async fn run(
    state: &AppState,
    app: &str,
    authed: &Authed,
    body: &[u8],
    commit: bool,
) -> ApiResult<patch::Outcome> {
    require_role(authed)?;
    let files = patch::read_zip(body).map_err(refused)?;
    Ok(patch::run(
        state,
        authed.org_uid(),
        app,
        files,
        commit,
        authed.user_name(),
    )
    .await?)
}

fn refused(why: String) -> ApiError {
    ApiError::BadRequest(format!("The patch was refused: {why}"))
}
