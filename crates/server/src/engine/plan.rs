//! Planning: each alias resolved to a datasource, its grants checked, its query parsed and
//! compiled or its rows parsed, before any SQL runs.

use std::collections::HashSet;
use std::sync::Arc;

use query::{Compiled, Datasource, WriteRow, compile_select, parse_query, parse_row};
use serde_json::{Map, Value as Json};

use super::builtin::Builtin;
use super::catalog::{Action, Hooks, Resolve};
use super::{Ctx, Error, Result};

/// At most this many aliases in one request, and rows in one post.
pub const MAX_ALIASES: usize = 64;
pub const MAX_ROWS: usize = 50_000;

pub(crate) enum Work {
    Query {
        /// The query object as the client sent it (`filter` always an array), for hooks.
        json: Json,
        /// Compiled at plan time, unless a `preQuery` hook may still change the query.
        compiled: Option<Compiled>,
        /// The most rows the client asked for (its `limit`, or the default).
        asked: u64,
    },
    Post {
        /// The rows as posted, for hooks (empty when the datasource has no hooks).
        json: Vec<Json>,
        rows: Vec<WriteRow>,
    },
}

pub(crate) struct AliasPlan {
    pub name: String,
    pub ds: Arc<Datasource>,
    pub hooks: Arc<Hooks>,
    pub builtin: Option<Builtin>,
    pub work: Work,
}

impl AliasPlan {
    /// Whether anything beyond SQL runs for this alias (so it needs the async executor).
    pub fn has_hooks(&self) -> bool {
        !self.hooks.is_empty() || self.builtin.is_some()
    }

    pub fn is_post(&self) -> bool {
        matches!(self.work, Work::Post { .. })
    }
}

pub(crate) fn bad(alias: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{alias}: {msg}"))
}

fn denied(ds: &str) -> Error {
    Error::Denied(format!(
        "Access Denied - datasource `{ds}` is not available to you."
    ))
}

/// Finds the datasource `name` (in `app` when given) and checks the user may perform each of
/// `actions`.
pub(crate) fn resolve(
    ctx: &Ctx<'_>,
    alias: &str,
    name: &str,
    app: Option<&str>,
    actions: &[Action],
) -> Result<Arc<Datasource>> {
    let catalog = &ctx.catalog;
    let roles = &ctx.who.roles;
    let ds = match catalog.resolve(roles, app, name) {
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
        if !catalog.allows(roles, &ds.app_uid, &ds.name, *action) {
            return Err(denied(name));
        }
    }
    Ok(ds)
}

/// The query object a hook sees: always an object with a `filter` array.
fn normalize_query(q: Option<&Json>) -> Json {
    let mut obj = match q {
        Some(Json::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    if matches!(obj.get("filter"), None | Some(Json::Null)) {
        obj.insert("filter".into(), Json::Array(Vec::new()));
    }
    Json::Object(obj)
}

/// Plans a query of datasource `ds_name`.
pub(crate) fn plan_query(
    ctx: &Ctx<'_>,
    alias: &str,
    ds_name: &str,
    app: Option<&str>,
    query: Option<&Json>,
    with_hooks: bool,
) -> Result<AliasPlan> {
    let ds = resolve(ctx, alias, ds_name, app, &[Action::Query])?;
    let hooks = hooks_for(ctx, &ds, with_hooks);
    let parsed = parse_query(query.unwrap_or(&Json::Null)).map_err(|e| bad(alias, e))?;
    let compiled = compile_select(&ds, &parsed, &ctx.opts).map_err(|e| bad(alias, e))?;
    let asked = parsed.limit.unwrap_or(ctx.opts.default_limit);
    let pre = hooks.get(super::Hook::PreQuery).is_some();
    let json = if hooks.is_empty() {
        Json::Null
    } else {
        normalize_query(query)
    };
    Ok(AliasPlan {
        name: alias.to_string(),
        builtin: Builtin::of(&ds),
        ds,
        hooks,
        work: Work::Query {
            json,
            compiled: (!pre).then_some(compiled),
            asked,
        },
    })
}

/// Plans a post of `rows` to datasource `ds_name`.
pub(crate) fn plan_post(
    ctx: &Ctx<'_>,
    alias: &str,
    ds_name: &str,
    app: Option<&str>,
    rows: &[Json],
    with_hooks: bool,
) -> Result<AliasPlan> {
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
    let ds = resolve(ctx, alias, ds_name, app, &actions)?;
    let parsed = rows
        .iter()
        .enumerate()
        .map(|(i, r)| parse_row(&ds, r, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(alias, e))?;
    let hooks = hooks_for(ctx, &ds, with_hooks);
    let builtin = Builtin::of(&ds);
    let json = if hooks.is_empty() {
        Vec::new()
    } else {
        rows.to_vec()
    };
    Ok(AliasPlan {
        name: alias.to_string(),
        ds,
        hooks,
        builtin,
        work: Work::Post { json, rows: parsed },
    })
}

/// The datasource's script hooks, unless they are running already (a hook's `db` call on its
/// own datasource never runs them again).
fn hooks_for(ctx: &Ctx<'_>, ds: &Datasource, with_hooks: bool) -> Arc<Hooks> {
    let running = ctx
        .running
        .iter()
        .any(|(a, d)| a == &ds.app_uid && d == &ds.name);
    if !with_hooks || running {
        return Arc::default();
    }
    ctx.catalog.hooks(&ds.app_uid, &ds.name)
}

/// Plans one alias of a `/v1/api` body.
pub(crate) fn plan_alias(ctx: &Ctx<'_>, alias: &str, spec: &Json) -> Result<AliasPlan> {
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
    match (obj.get("query"), obj.get("data")) {
        (Some(_), Some(_)) => Err(bad(alias, "give either `query` or `data`, not both")),
        (q, None) => plan_query(ctx, alias, name, app, q, true),
        (None, Some(Json::Array(rows))) => plan_post(ctx, alias, name, app, rows, true),
        (None, Some(_)) => Err(bad(alias, "`data` must be an array of rows")),
    }
}
