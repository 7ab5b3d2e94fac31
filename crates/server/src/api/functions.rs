//! `POST /v1/fn/<appUid>/<moduleUri>/<functionName>`: calls a cloud function with the JSON
//! body as its one argument.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde_json::{Value as Json, json};

use crate::auth::guard::Authed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[utoipa::path(post, path = "/v1/fn/{app}/{*path}", tag = "functions",
    summary = "Call a cloud function",
    description = "The JSON body is the function's one argument (empty: `null`). `?debug=sql` as for `/v1/api`.",
    request_body(content = Option<Object>, content_type = "application/json"),
    params(
        ("app" = String, Path, description = "The appUid", example = "demo"),
        ("path" = String, Path, description = "`<moduleUri>/<functionName>`; the module may contain `/`"),
        ("debug" = Option<String>, Query, description = "`sql`: echo the statements run (developers only)")),
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "The function's resolved value", body = crate::api::openapi::FunctionResponse),
        (status = 400, description = "`UserError` (Invalid Request) or `Script Error`", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "No role grants the function", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "A granted module or function that does not exist", body = crate::api::openapi::ErrorBody)))]
pub async fn post_function(
    State(state): State<AppState>,
    Path((app, path)): Path<(String, String)>,
    authed: Authed,
    Query(params): Query<crate::api::DebugParams>,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
    let traced = params.sql(&authed)?;
    let Some((module, function)) = path.rsplit_once('/') else {
        return Err(ApiError::NotFound(
            "a function is called as /v1/fn/<appUid>/<moduleUri>/<functionName>".into(),
        ));
    };
    let arg: Json = if body.iter().all(u8::is_ascii_whitespace) {
        Json::Null
    } else {
        crate::api::parse_json(&body, false)?
    };
    if traced {
        let (data, statements) = state
            .engine
            .call_function_traced(&authed.principal(), &app, module, function, arg)
            .await?;
        return Ok(axum::Json(json!({
            "status": "OK", "data": data, "debug": crate::api::debug_json(statements),
        })));
    }
    let data = state
        .engine
        .call_function(&authed.principal(), &app, module, function, arg)
        .await?;
    Ok(axum::Json(json!({"status": "OK", "data": data})))
}
