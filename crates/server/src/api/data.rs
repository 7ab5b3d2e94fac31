//! `POST /v1/api`: the body maps client-chosen aliases to a query or a post over one datasource.
//! The work is the engine's ([`crate::engine`]); this handler only speaks HTTP.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json};

use crate::api::{parse_json, stream};
use crate::auth::guard::Authed;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn post_api(
    State(state): State<AppState>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<Response> {
    let body: Map<String, Json> = parse_json(&body, false)?;
    let answer = state.engine.api(&authed.principal(), &body).await?;
    // The transaction has committed: cached tokens of users whose sessions or roles changed go,
    // on every node.
    for (org, user) in &answer.touched {
        state.user_changed(org, user).await;
    }
    let mut resp = Map::new();
    resp.insert("status".into(), Json::from("OK"));
    resp.insert("data".into(), Json::Object(answer.data));
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
