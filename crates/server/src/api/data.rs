//! `POST /v1/api`: the body maps client-chosen aliases to a query or a post over one datasource.
//! The work is the engine's ([`crate::engine`]); this handler only speaks HTTP.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json};

use crate::api::{DebugParams, debug_json, parse_json, stream};
use crate::auth::guard::Authed;
use crate::error::ApiResult;
use crate::state::AppState;

#[utoipa::path(post, path = "/v1/api", tag = "data",
    summary = "Query and post datasources",
    description = "Aliases map to `{ds, query}` (a query) or `{ds, data: [rows]}` (a post: `_rs` I/U/D). Posts run first, in one transaction; queries after them. `?debug=sql` (role `developer` of app `cloudio`) adds every statement run with its binds.",
    request_body(content = crate::api::openapi::ApiRequest, content_type = "application/json",
        example = json!({"E": {"ds": "Employees", "query": {"filter": [{"name": {"like": "ab"}}, {"salary": {"gte": 50000}}], "sort": {"name": 1}, "limit": 3, "count": true}}})),
    params(("debug" = Option<String>, Query, description = "`sql`: echo the statements run (developers only)")),
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "Each alias's rows", body = crate::api::openapi::ApiResponse),
        (status = 400, description = "Invalid request, or `Script Error`", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "A datasource or action the caller may not use (or that does not exist); `debug=sql` without the role", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "A `U`/`D` row whose key does not exist", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "A stale `lastUpdateDate` (optimistic lock) or a duplicate key", body = crate::api::openapi::ErrorBody)))]
pub async fn post_api(
    State(state): State<AppState>,
    authed: Authed,
    Query(params): Query<DebugParams>,
    body: Bytes,
) -> ApiResult<Response> {
    let traced = params.sql(&authed)?;
    let body: Map<String, Json> = parse_json(&body, false)?;
    let answer = if traced {
        state.engine.api_traced(&authed.principal(), &body).await?
    } else {
        state.engine.api(&authed.principal(), &body).await?
    };
    // The transaction has committed: cached tokens of users whose sessions or roles changed go,
    // on every node.
    for (org, user) in &answer.touched {
        state.user_changed(org, user).await;
    }
    let mut resp = Map::new();
    resp.insert("status".into(), Json::from("OK"));
    resp.insert("data".into(), Json::Object(answer.data));
    if let Some(statements) = answer.statements {
        resp.insert("debug".into(), debug_json(statements));
    }
    let resp = Json::Object(resp);
    if crate::engine::json_size(&resp) < stream::STREAM_ABOVE {
        return Ok(axum::Json(resp).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        stream::body(resp),
    )
        .into_response())
}
