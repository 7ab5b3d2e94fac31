//! `POST /v1/api`: the body maps client-chosen aliases to a query or a post over one datasource.
//! The work is the engine's ([`crate::engine`]); this handler only speaks HTTP.

use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Map, Value as Json};

use crate::api::parse_json;
use crate::auth::guard::Authed;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn post_api(
    State(state): State<AppState>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
    let body: Map<String, Json> = parse_json(&body, false)?;
    let answer = state.engine.api(&authed.principal(), &body).await?;
    // The transaction has committed: cached tokens of users whose sessions or roles changed go.
    for (org, user) in &answer.touched {
        state.tokens.forget_user(org, user);
    }
    let mut resp = Map::new();
    resp.insert("status".into(), Json::from("OK"));
    resp.insert("data".into(), Json::Object(answer.data));
    Ok(axum::Json(Json::Object(resp)))
}
