//! `POST /v1/api`: the body maps client-chosen aliases to a query or a post over one datasource.
//!
//! Every alias is resolved, permission-checked, parsed and compiled before any SQL runs. Posts
//! (aliases with `data`) run first, in request order, in one transaction; queries run after
//! them, in the same transaction, and see their effect. Any failure rolls everything back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use chrono::Utc;
use query::{
    AttrType, CompileOptions, Compiled, Datasource, Dialect, RowOp, Statement, Value, WriteContext,
    WriteRow, compile_lookup, compile_select, compile_write, parse_query, parse_row,
    returning_columns,
};
use serde_json::{Map, Value as Json};
use store::{Raw, WriteConn};

use crate::api::parse_json;
use crate::auth::guard::Authed;
use crate::catalog::{Action, Resolve};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// At most this many aliases in one request, and rows in one post.
pub const MAX_ALIASES: usize = 64;
pub const MAX_ROWS: usize = 50_000;

enum Work {
    Query(Compiled),
    Post(Vec<WriteRow>),
}

struct Alias {
    name: String,
    ds: Arc<Datasource>,
    work: Work,
}

fn bad(alias: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("{alias}: {msg}"))
}

fn denied(ds: &str) -> ApiError {
    ApiError::AccessDenied(format!(
        "Access Denied - datasource `{ds}` is not available to you."
    ))
}

fn is_platform(ds: &Datasource, name: &str) -> bool {
    ds.app_uid == crate::startup::PLATFORM_APP && ds.name == name
}

/// Finds the datasource an alias names and checks the user may perform each of `actions`.
fn resolve_alias(
    state: &AppState,
    authed: &Authed,
    alias: &str,
    obj: &Map<String, Json>,
    actions: &[Action],
) -> ApiResult<Arc<Datasource>> {
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
    for action in actions {
        if !catalog.allows(&authed.roles, &ds.app_uid, &ds.name, *action) {
            return Err(denied(name));
        }
    }
    Ok(ds)
}

/// Parses, checks and compiles one alias.
fn plan_alias(
    state: &AppState,
    authed: &Authed,
    opts: &CompileOptions,
    alias: &str,
    spec: &Json,
) -> ApiResult<Alias> {
    let Json::Object(obj) = spec else {
        return Err(bad(
            alias,
            "must be an object with `ds` and `query` or `data`",
        ));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "ds" | "appUid" | "query" | "data") {
            return Err(bad(alias, format!("unknown field `{key}`")));
        }
    }
    match (obj.get("query"), obj.get("data")) {
        (Some(_), Some(_)) => Err(bad(alias, "give either `query` or `data`, not both")),
        (q, None) => {
            let ds = resolve_alias(state, authed, alias, obj, &[Action::Query])?;
            let q = parse_query(q.unwrap_or(&Json::Null)).map_err(|e| bad(alias, e))?;
            let compiled = compile_select(&ds, &q, opts).map_err(|e| bad(alias, e))?;
            Ok(Alias {
                name: alias.to_string(),
                ds,
                work: Work::Query(compiled),
            })
        }
        (None, Some(data)) => {
            let Json::Array(rows) = data else {
                return Err(bad(alias, "`data` must be an array of rows"));
            };
            if rows.len() > MAX_ROWS {
                return Err(bad(alias, format!("at most {MAX_ROWS} rows per request")));
            }
            // Resolve first (403 before 400), with the actions the rows need.
            let ops: HashSet<&str> = rows
                .iter()
                .filter_map(|r| r.get("_rs").and_then(Json::as_str))
                .collect();
            let actions: Vec<Action> = [
                ("I", Action::Insert),
                ("U", Action::Update),
                ("D", Action::Delete),
            ]
            .into_iter()
            .filter(|(code, _)| ops.contains(code))
            .map(|(_, a)| a)
            .collect();
            let ds = resolve_alias(state, authed, alias, obj, &actions)?;
            let rows = rows
                .iter()
                .enumerate()
                .map(|(i, r)| parse_row(&ds, r, i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(alias, e))?;
            Ok(Alias {
                name: alias.to_string(),
                ds,
                work: Work::Post(rows),
            })
        }
    }
}

/// Replaces clear-text `password` values posted to `IoUsers` by their Argon2id hashes.
async fn hash_passwords(state: &AppState, plan: &mut [Alias]) -> ApiResult<()> {
    for a in plan.iter_mut() {
        let Work::Post(rows) = &mut a.work else {
            continue;
        };
        if !is_platform(&a.ds, "IoUsers") {
            continue;
        }
        for row in rows.iter_mut() {
            for (code, v) in row.values.iter_mut() {
                if code == "password"
                    && let Value::Text(clear) = v
                {
                    *v = Value::Text(state.hasher.hash(std::mem::take(clear)).await?);
                }
            }
        }
    }
    Ok(())
}

fn to_json_row(columns: &[query::OutputColumn], row: Vec<Value>) -> Json {
    let mut m = Map::with_capacity(row.len() + 1);
    for (col, v) in columns.iter().zip(row) {
        m.insert(col.name.clone(), v.to_json());
    }
    m.insert("_rs".into(), Json::from("Q"));
    Json::Object(m)
}

async fn run_query(raw: &mut Raw<'_>, compiled: &Compiled) -> ApiResult<Json> {
    let types: Vec<AttrType> = compiled.columns.iter().map(|c| c.ty).collect();
    let started = Instant::now();
    let rows = raw
        .fetch_all(&compiled.select.sql, &compiled.select.params, &types)
        .await?;
    let total = match &compiled.count {
        Some(count) => Some(
            raw.fetch_all(&count.sql, &count.params, &[AttrType::Integer])
                .await?,
        ),
        None => None,
    };
    Ok(query_result(compiled, rows, total, started))
}

/// [`run_query`] on the SQLite writer's connection, inside a writer job.
fn run_query_sync(w: &WriteConn<'_>, compiled: &Compiled) -> ApiResult<Json> {
    let types: Vec<AttrType> = compiled.columns.iter().map(|c| c.ty).collect();
    let started = Instant::now();
    let rows = w.fetch_all(&compiled.select.sql, &compiled.select.params, &types)?;
    let total = match &compiled.count {
        Some(count) => Some(w.fetch_all(&count.sql, &count.params, &[AttrType::Integer])?),
        None => None,
    };
    Ok(query_result(compiled, rows, total, started))
}

/// A query's answer: its rows, and the count's single cell when it asked for one.
fn query_result(
    compiled: &Compiled,
    rows: Vec<Vec<Value>>,
    count: Option<Vec<Vec<Value>>>,
    started: Instant,
) -> Json {
    let total = count.map(|r| {
        r.into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .map_or(Json::from(0), |v| v.to_json())
    });
    let elapsed = started.elapsed().as_millis() as u64;
    let fetched = rows.len();
    let data: Vec<Json> = rows
        .into_iter()
        .map(|r| to_json_row(&compiled.columns, r))
        .collect();
    let mut result = Map::new();
    result.insert("data".into(), Json::Array(data));
    result.insert("queryElapsed".into(), Json::from(elapsed));
    result.insert("rowsFetched".into(), Json::from(fetched));
    if let Some(t) = total {
        result.insert("totalCount".into(), t);
    }
    Json::Object(result)
}

fn describe_key(key: &[(String, Value)]) -> String {
    key.iter()
        .map(|(k, v)| format!("{k}={}", v.to_json()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Users whose sessions or roles a post changed; their cached tokens are dropped after commit.
type Touched = Vec<(String, String)>;

/// The statement that writes one row; for inserts with server-made keys, with the new key.
fn write_statement(
    alias: &str,
    ds: &Datasource,
    row: &WriteRow,
    ctx: &WriteContext<'_>,
) -> ApiResult<Statement> {
    if row.op == RowOp::Insert && ds.key_generation == query::KeyGeneration::Uuid {
        // The server makes the key; the compiler reads no randomness.
        let mut row = row.clone();
        for k in &ds.primary_key {
            row.values
                .push((k.clone(), Value::Text(uuid::Uuid::new_v4().to_string())));
        }
        compile_write(ds, &row, ctx)
    } else {
        compile_write(ds, row, ctx)
    }
    .map_err(|e| bad(alias, e))
}

/// A database error while writing row `i`, named by alias and row.
fn row_error(alias: &str, i: usize, e: store::StoreError) -> ApiError {
    match ApiError::from(e) {
        ApiError::BadRequest(m) => bad(alias, format!("row {i}: {m}")),
        ApiError::Conflict(m) => ApiError::Conflict(format!("{alias}: row {i}: {m}")),
        e => e,
    }
}

/// Nothing matched key and lastUpdateDate: the row is gone (`exists` false), or it changed.
fn not_written(alias: &str, i: usize, row: &WriteRow, exists: bool) -> ApiError {
    let key = describe_key(&row.key);
    if exists {
        ApiError::Conflict(format!(
            "{alias}: row {i} ({key}) was changed by someone else since the given lastUpdateDate; query it again"
        ))
    } else {
        ApiError::NotFound(format!("{alias}: row {i} ({key}) does not exist"))
    }
}

fn post_result(rows: Vec<Json>, started: Instant) -> Json {
    let mut result = Map::new();
    let posted = rows.len();
    result.insert("data".into(), Json::Array(rows));
    result.insert(
        "postElapsed".into(),
        Json::from(started.elapsed().as_millis() as u64),
    );
    result.insert("rowsPosted".into(), Json::from(posted));
    Json::Object(result)
}

async fn run_post(
    raw: &mut Raw<'_>,
    state: &AppState,
    authed: &Authed,
    alias: &str,
    ds: &Datasource,
    rows: &[WriteRow],
    touched: &mut Touched,
) -> ApiResult<Json> {
    let ctx = WriteContext {
        dialect: raw.dialect(),
        user: authed.user_name(),
        now: Utc::now(),
    };
    let columns = returning_columns(ds);
    let types: Vec<AttrType> = columns.iter().map(|c| c.ty).collect();
    let started = Instant::now();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let st = write_statement(alias, ds, row, &ctx)?;
        let returned = raw
            .fetch_all(&st.sql, &st.params, &types)
            .await
            .map_err(|e| row_error(alias, i, e))?;
        let Some(stored) = returned.into_iter().next() else {
            let lookup = compile_lookup(ds, &row.key, ctx.dialect).map_err(|e| bad(alias, e))?;
            let exists = !raw
                .fetch_all(&lookup.sql, &lookup.params, &[AttrType::DateTime])
                .await?
                .is_empty();
            return Err(not_written(alias, i, row, exists));
        };
        let json = to_json_row(&columns, stored);
        platform_effects(raw, state, ds, row, &json, touched).await?;
        out.push(json);
    }
    Ok(post_result(out, started))
}

/// [`run_post`] on the SQLite writer's connection, inside a writer job; for apps'
/// datasources only (no platform effects).
fn run_post_sync(
    w: &WriteConn<'_>,
    ctx: &WriteContext<'_>,
    alias: &str,
    ds: &Datasource,
    rows: &[WriteRow],
) -> ApiResult<Json> {
    let columns = returning_columns(ds);
    let types: Vec<AttrType> = columns.iter().map(|c| c.ty).collect();
    let started = Instant::now();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let st = write_statement(alias, ds, row, ctx)?;
        let returned = w
            .fetch_all(&st.sql, &st.params, &types)
            .map_err(|e| row_error(alias, i, e))?;
        let Some(stored) = returned.into_iter().next() else {
            let lookup = compile_lookup(ds, &row.key, ctx.dialect).map_err(|e| bad(alias, e))?;
            let exists = !w
                .fetch_all(&lookup.sql, &lookup.params, &[AttrType::DateTime])?
                .is_empty();
            return Err(not_written(alias, i, row, exists));
        };
        out.push(to_json_row(&columns, stored));
    }
    Ok(post_result(out, started))
}

/// A whole request as one job of SQLite's batching writer (see `store::writer`): its posts in
/// alias order, then its queries, answered once the batch has committed. A failure undoes the
/// request's writes and nothing else's.
fn run_plan_sync(
    w: &WriteConn<'_>,
    plan: &[Alias],
    user: &str,
    now: chrono::DateTime<Utc>,
) -> ApiResult<Vec<(String, Json)>> {
    let ctx = WriteContext {
        dialect: Dialect::Sqlite,
        user,
        now,
    };
    let mut results = Vec::with_capacity(plan.len());
    for a in plan {
        if let Work::Post(rows) = &a.work {
            results.push((
                a.name.clone(),
                run_post_sync(w, &ctx, &a.name, &a.ds, rows)?,
            ));
        }
    }
    for a in plan {
        if let Work::Query(c) = &a.work {
            results.push((a.name.clone(), run_query_sync(w, c)?));
        }
    }
    Ok(results)
}

/// What writing the platform's own datasources implies beyond the row: a disabled user or a
/// changed password ends that user's sessions; changed roles take effect at once.
async fn platform_effects(
    raw: &mut Raw<'_>,
    state: &AppState,
    ds: &Datasource,
    row: &WriteRow,
    stored: &Json,
    touched: &mut Touched,
) -> ApiResult<()> {
    let user_of = |j: &Json| {
        (
            j.get("orgUid")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
            j.get("userName")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    };
    if is_platform(ds, "IoUsers") {
        let disabled = stored.get("enabledFlag").and_then(Json::as_str) == Some("N");
        let new_password = row.values.iter().any(|(c, _)| c == "password");
        if row.op != RowOp::Insert && (disabled || new_password || row.op == RowOp::Delete) {
            let (org, user) = user_of(stored);
            state
                .store
                .delete_user_sessions_in(raw, &org, &user)
                .await?;
            touched.push((org, user));
        }
    } else if is_platform(ds, "IoUserRoles") {
        touched.push(user_of(stored));
    }
    Ok(())
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

    let mut plan = body
        .iter()
        .map(|(alias, spec)| plan_alias(&state, &authed, &opts, alias, spec))
        .collect::<ApiResult<Vec<_>>>()?;
    let writes = plan.iter().any(|a| matches!(a.work, Work::Post(_)));
    hash_passwords(&state, &mut plan).await?;

    let order: Vec<String> = plan.iter().map(|a| a.name.clone()).collect();
    let mut results: Vec<(String, Json)> = Vec::with_capacity(plan.len());
    let mut touched = Touched::new();
    let platform_posts = plan
        .iter()
        .any(|a| matches!(a.work, Work::Post(_)) && a.ds.app_uid == crate::startup::PLATFORM_APP);
    if let Some(writer) = state.store.db.writer()
        && writes
        && !platform_posts
    {
        // SQLite: the whole request is one job of the batching writer. Posts to the platform's
        // datasources may write more than their rows (sessions), so they take the pool below.
        let (user, now) = (authed.user_name().to_string(), Utc::now());
        let rows: usize = plan
            .iter()
            .map(|a| match &a.work {
                Work::Post(rows) => rows.len(),
                Work::Query(_) => 0,
            })
            .sum();
        let job = move |w: &WriteConn<'_>| run_plan_sync(w, &plan, &user, now);
        results = if rows <= 1 {
            writer.run(job).await?
        } else {
            writer.run_alone(job).await?
        };
    } else if let [
        Alias {
            name,
            ds,
            work: Work::Post(rows),
        },
    ] = plan.as_slice()
        && rows.len() == 1
        && !platform_posts
    {
        // One statement is its own transaction: no BEGIN and COMMIT round trips.
        let mut conn = state.store.db.acquire().await?;
        let r = run_post(
            &mut conn.raw(),
            &state,
            &authed,
            name,
            ds,
            rows,
            &mut touched,
        )
        .await?;
        results.push((name.clone(), r));
    } else if writes {
        let mut tx = state.store.db.begin_write().await?;
        for a in plan.iter().filter(|a| matches!(a.work, Work::Post(_))) {
            if let Work::Post(rows) = &a.work {
                let r = run_post(
                    &mut tx.raw(),
                    &state,
                    &authed,
                    &a.name,
                    &a.ds,
                    rows,
                    &mut touched,
                )
                .await?;
                results.push((a.name.clone(), r));
            }
        }
        for a in &plan {
            if let Work::Query(c) = &a.work {
                results.push((a.name.clone(), run_query(&mut tx.raw(), c).await?));
            }
        }
        tx.commit().await?;
        for (org, user) in &touched {
            state.tokens.forget_user(org, user);
        }
    } else {
        let mut conn = state.store.db.acquire().await?;
        for a in &plan {
            if let Work::Query(c) = &a.work {
                results.push((a.name.clone(), run_query(&mut conn.raw(), c).await?));
            }
        }
    }
    // Answer in the request's alias order.
    let mut out = Map::with_capacity(results.len());
    for name in &order {
        if let Some(pos) = results.iter().position(|(n, _)| n == name) {
            let (n, r) = results.swap_remove(pos);
            out.insert(n, r);
        }
    }
    let mut resp = Map::new();
    resp.insert("status".into(), Json::from("OK"));
    resp.insert("data".into(), Json::Object(out));
    Ok(axum::Json(Json::Object(resp)))
}
