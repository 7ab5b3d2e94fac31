//! `POST /v1/api`: several aliases per request, each a query over one datasource.
//!
//! The body maps client-chosen aliases to `{"ds", "appUid"?, "query"}`. Every alias is resolved
//! and checked before any SQL runs; then all run on one connection, in request order.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use chrono::Utc;
use query::{CompileOptions, Datasource, compile_select, parse_query};
use serde_json::{Map, Value as Json};

use crate::api::parse_json;
use crate::auth::guard::Authed;
use crate::catalog::{Action, Resolve};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// At most this many aliases in one request.
pub const MAX_ALIASES: usize = 64;

struct AliasQuery {
    alias: String,
    ds: std::sync::Arc<Datasource>,
    compiled: query::Compiled,
}

fn bad(alias: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("{alias}: {msg}"))
}

fn denied(ds: &str) -> ApiError {
    ApiError::AccessDenied(format!(
        "Access Denied - datasource `{ds}` is not available to you."
    ))
}

/// Finds the datasource an alias names and checks the user may perform `action` on it.
pub fn resolve_alias(
    state: &AppState,
    authed: &Authed,
    alias: &str,
    obj: &Map<String, Json>,
    action: Action,
) -> ApiResult<std::sync::Arc<Datasource>> {
    let name = match obj.get("ds") {
        Some(Json::String(s)) => s.as_str(),
        Some(_) => return Err(bad(alias, "`ds` must be a string")),
        None => return Err(bad(alias, "`ds` is required")),
    };
    let app = match obj.get("appUid") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.as_str()),
        Some(_) => return Err(bad(alias, "`appUid` must be a string")),
    };
    let catalog = state.catalog.get();
    let ds = match catalog.resolve(&authed.roles, app, name) {
        Resolve::Found(ds) => ds,
        Resolve::Denied => return Err(denied(name)),
        Resolve::Ambiguous(apps) => {
            return Err(bad(
                alias,
                format!(
                    "datasource `{name}` exists in apps {}; give `appUid`",
                    apps.join(", ")
                ),
            ));
        }
    };
    if !catalog.allows(&authed.roles, &ds.app_uid, &ds.name, action) {
        return Err(denied(name));
    }
    Ok(ds)
}

pub async fn post_api(
    State(state): State<AppState>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
    let body: Map<String, Json> = parse_json(&body, false)?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the body must name at least one alias".into(),
        ));
    }
    if body.len() > MAX_ALIASES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ALIASES} aliases per request"
        )));
    }
    let mut opts = CompileOptions::new(state.store.dialect(), Utc::now().date_naive());
    opts.default_limit = state.config.query_default_limit;
    opts.max_limit = state.config.query_max_limit;
    opts.max_depth = state.config.query_max_depth;

    // Check everything before running anything.
    let mut plan = Vec::with_capacity(body.len());
    for (alias, spec) in &body {
        let Json::Object(obj) = spec else {
            return Err(bad(alias, "must be an object with `ds` and `query`"));
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "ds" | "appUid" | "query" | "data") {
                return Err(bad(alias, format!("unknown field `{key}`")));
            }
        }
        if obj.contains_key("data") {
            return Err(bad(alias, "posting `data` is not supported yet"));
        }
        let ds = resolve_alias(&state, &authed, alias, obj, Action::Query)?;
        let q = parse_query(obj.get("query").unwrap_or(&Json::Null)).map_err(|e| bad(alias, e))?;
        let compiled = compile_select(&ds, &q, &opts).map_err(|e| bad(alias, e))?;
        plan.push(AliasQuery {
            alias: alias.clone(),
            ds,
            compiled,
        });
    }

    let mut conn = state.store.db.acquire().await?;
    let mut out = Map::with_capacity(plan.len());
    for AliasQuery {
        alias,
        ds,
        compiled,
    } in plan
    {
        let types: Vec<_> = compiled.columns.iter().map(|c| c.ty).collect();
        let started = Instant::now();
        let rows = conn
            .raw()
            .fetch_all(&compiled.select.sql, &compiled.select.params, &types)
            .await?;
        let total = match &compiled.count {
            Some(count) => {
                let r = conn
                    .raw()
                    .fetch_all(&count.sql, &count.params, &[query::AttrType::Integer])
                    .await?;
                Some(
                    r.into_iter()
                        .next()
                        .and_then(|r| r.into_iter().next())
                        .map_or(Json::from(0), |v| v.to_json()),
                )
            }
            None => None,
        };
        let elapsed = started.elapsed().as_millis() as u64;
        let fetched = rows.len();
        let data: Vec<Json> = rows
            .into_iter()
            .map(|row| {
                let mut m = Map::with_capacity(row.len() + 1);
                for (col, v) in compiled.columns.iter().zip(row) {
                    m.insert(col.name.clone(), v.to_json());
                }
                m.insert("_rs".into(), Json::from("Q"));
                Json::Object(m)
            })
            .collect();
        let mut result = Map::new();
        result.insert("data".into(), Json::Array(data));
        result.insert("queryElapsed".into(), Json::from(elapsed));
        result.insert("rowsFetched".into(), Json::from(fetched));
        if let Some(t) = total {
            result.insert("totalCount".into(), t);
        }
        tracing::debug!(alias = %alias, datasource = %ds.name, rows = fetched, "query");
        out.insert(alias, Json::Object(result));
    }
    let mut resp = Map::new();
    resp.insert("status".into(), Json::from("OK"));
    resp.insert("data".into(), Json::Object(out));
    Ok(axum::Json(Json::Object(resp)))
}
