//! `POST /v1/fn/<appUid>/<moduleUri>/<functionName>`: calls a cloud function with the JSON
//! body as its one argument.

use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value as Json, json};

use crate::auth::guard::Authed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub async fn post_function(
    State(state): State<AppState>,
    Path((app, path)): Path<(String, String)>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
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
    let data = state
        .engine
        .call_function(&authed.principal(), &app, module, function, arg)
        .await?;
    Ok(axum::Json(json!({"status": "OK", "data": data})))
}
