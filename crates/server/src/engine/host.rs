//! A script's `db` calls, served inside the request's transaction as the calling user: the
//! datasource methods go through the same planning (grants included) and chain as `/v1/api`;
//! `executeQuery`/`queryString`/`executeUpdate` run the script's own SQL with bound
//! parameters; `fetch` reaches only allow-listed hosts.

use query::{AttrType, Datasource, Value};
use serde_json::{Map, Value as Json};

use super::chain::{run_post, run_query};
use super::exec::Exec;
use super::plan;
use super::{Ctx, Error, Result};

/// Serves one call of the script running for `app`.
pub(crate) async fn serve<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    app: &str,
    op: &str,
    args: &Json,
) -> Result<Json> {
    let empty = Vec::new();
    let args = args.as_array().unwrap_or(&empty);
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Json::Null);
    let what = format!("db.{op}");
    let bad = |m: &str| Error::Invalid(format!("{what}: {m}"));
    match op {
        "find" | "findOne" => {
            let ds =
                ds_name(&arg(0)).ok_or_else(|| bad("the first argument is a datasource name"))?;
            let opts = arg(2);
            let target = app_option(&opts).map_err(|m| bad(&m))?;
            let def = plan::resolve(ctx, &what, &ds, target.as_deref(), &[])?;
            let mut q = untag(arg(1), Some(&def), false);
            if op == "findOne"
                && let Json::Object(m) = &mut q
                && !m.contains_key("limit")
            {
                m.insert("limit".into(), Json::from(1));
            }
            let plan = plan::plan_query(ctx, &ds, &ds, target.as_deref(), Some(&q), true)?;
            begin(exec, ctx.depth).await?;
            let result = run_query(exec, ctx, &plan).await;
            let result = end(exec, ctx.depth, result).await?;
            let rows = result
                .get("data")
                .cloned()
                .unwrap_or(Json::Array(Vec::new()));
            Ok(if op == "findOne" {
                rows.as_array()
                    .and_then(|r| r.first().cloned())
                    .unwrap_or(Json::Null)
            } else {
                rows
            })
        }
        "insertOne" | "updateOne" | "deleteOne" | "insertMany" | "updateMany" | "deleteMany" => {
            let code = match &op[..6] {
                "insert" => "I",
                "update" => "U",
                _ => "D",
            };
            let one = op.ends_with("One");
            let ds =
                ds_name(&arg(0)).ok_or_else(|| bad("the first argument is a datasource name"))?;
            let target = app_option(&arg(2)).map_err(|m| bad(&m))?;
            let rows = match (one, arg(1)) {
                (true, row @ Json::Object(_)) => vec![row],
                (false, Json::Array(rows)) => rows,
                (true, _) => return Err(bad("the second argument is a row object")),
                (false, _) => return Err(bad("the second argument is an array of rows")),
            };
            let def = plan::resolve(ctx, &what, &ds, target.as_deref(), &[])?;
            let mut posted = Vec::with_capacity(rows.len());
            for (i, row) in rows.into_iter().enumerate() {
                let Json::Object(mut m) = untag(row, Some(&def), false) else {
                    return Err(bad(&format!("row {i} is not an object")));
                };
                match m.get("_rs").and_then(Json::as_str) {
                    // A row read by `find` carries "Q": the method says what to do with it.
                    None | Some("Q") => {}
                    Some(c) if c == code => {}
                    Some(c) => {
                        return Err(bad(&format!(
                            "row {i} has `_rs` {c:?}; {what} writes \"{code}\" rows"
                        )));
                    }
                }
                m.insert("_rs".into(), Json::from(code));
                posted.push(Json::Object(m));
            }
            let plan = plan::plan_post(ctx, &ds, &ds, target.as_deref(), &posted, true)?;
            begin(exec, ctx.depth).await?;
            let result = run_post(exec, ctx, &plan).await;
            let result = end(exec, ctx.depth, result).await?;
            let rows = result
                .get("data")
                .cloned()
                .unwrap_or(Json::Array(Vec::new()));
            Ok(if one {
                rows.as_array()
                    .and_then(|r| r.first().cloned())
                    .unwrap_or(Json::Null)
            } else {
                rows
            })
        }
        "executeQuery" | "queryString" | "executeUpdate" => {
            let Json::String(sql) = arg(0) else {
                return Err(bad("the first argument is an SQL string"));
            };
            let params = match arg(1) {
                Json::Array(p) => p.iter().map(to_value).collect(),
                Json::Null => Vec::new(),
                _ => return Err(bad("the second argument is an array of parameters")),
            };
            let platform = op == "executeQuery" && arg(2) == Json::Bool(true);
            let schema = if platform {
                super::builtin::PLATFORM_APP.to_string()
            } else {
                app.to_string()
            };
            let sql = store::portable(exec.dialect(), &sql).into_owned();
            begin(exec, ctx.depth).await?;
            let result = run_sql(exec, ctx, op, &schema, &sql, &params).await;
            end(exec, ctx.depth, result).await
        }
        "fetch" => fetch(ctx, &arg(0), &arg(1)).await,
        "startWorkflow" => {
            let wf_uid = ds_name(&arg(0)).ok_or_else(|| bad("the first argument is a wfUid"))?;
            let input = match arg(1) {
                Json::Null => Json::Object(Map::new()),
                i @ Json::Object(_) => untag(i, None, false),
                _ => return Err(bad("the second argument (input) is an object")),
            };
            let target = app_option(&arg(2)).map_err(|m| bad(&m))?;
            let app = target.as_deref().unwrap_or(app);
            start_workflow(exec, ctx, app, &wf_uid, &input).await
        }
        _ => Err(bad("no such method")),
    }
}

/// `db.startWorkflow(wfUid, input, {appUid?})`: the instance and its first execution are
/// written in the request's own transaction, so they exist only if it commits; the runner is
/// woken after the commit. Needs the `start` grant, as `/v1/wf/start` does.
async fn start_workflow<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    app: &str,
    wf_uid: &str,
    input: &Json,
) -> Result<Json> {
    let def = ctx
        .catalog
        .workflow(app, wf_uid)
        .filter(|_| {
            ctx.catalog
                .allows_workflow(&ctx.who.roles, app, wf_uid, "start")
        })
        .ok_or_else(|| {
            Error::Denied(format!(
                "db.startWorkflow: Access Denied - workflow `{wf_uid}` of app `{app}` is not available to you."
            ))
        })?;
    let inst = uuid::Uuid::new_v4().to_string();
    let store = &ctx.engine.store;
    let st = store.wf_new_instance(
        &store::workflow::NewInstance {
            org_uid: &ctx.who.org_uid,
            app_uid: &def.app_uid,
            wf_uid: &def.wf_uid,
            version: &def.version,
            definition: &def.text,
            start_node: &def.start,
            input,
            user_name: &ctx.who.user_name,
            idempotency_key: None,
            schedule_key: None,
            now: ctx.now.timestamp_micros(),
        },
        &inst,
    );
    begin(exec, ctx.depth).await?;
    let mut result = Ok(());
    for (sql, params) in [st.definition, st.instance, st.first]
        .into_iter()
        .chain(st.notify)
    {
        if let Err(e) = exec.execute(&sql, &params).await {
            result = Err(e.into());
            break;
        }
    }
    end(exec, ctx.depth, result).await?;
    ctx.started_workflows += 1;
    Ok(serde_json::json!({"wfInstUid": inst, "version": def.version}))
}

fn ds_name(v: &Json) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// `opts.appUid`, when given.
fn app_option(opts: &Json) -> std::result::Result<Option<String>, String> {
    match opts.get("appUid") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("`opts.appUid` must be a string".into()),
    }
}

/// Turns the sandbox's tagged JS dates (`{"$date": iso}`) into values: under an attribute of
/// type `Date` of `ds` (a row's value, or a filter's operands), the UTC date; anywhere else the
/// ISO-8601 instant.
fn untag(v: Json, ds: Option<&Datasource>, date: bool) -> Json {
    match v {
        Json::Object(m) => {
            if m.len() == 1
                && let Some(Json::String(iso)) = m.get("$date")
            {
                return Json::String(if date {
                    iso.chars().take(10).collect()
                } else {
                    iso.clone()
                });
            }
            Json::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let is_date = date
                            || ds
                                .and_then(|d| d.attribute(&k))
                                .is_some_and(|a| a.ty == AttrType::Date);
                        (k, untag(v, ds, is_date))
                    })
                    .collect(),
            )
        }
        Json::Array(items) => Json::Array(items.into_iter().map(|v| untag(v, ds, date)).collect()),
        v => v,
    }
}

/// A JSON parameter of a script's SQL as a bound value.
fn to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(m) if m.len() == 1 && m.contains_key("$date") => {
            let iso = m.get("$date").and_then(Json::as_str).unwrap_or_default();
            query::value::parse_datetime(iso).map_or(Value::Text(iso.to_string()), Value::DateTime)
        }
        other => Value::Json(other.clone()),
    }
}

/// Every `db` call runs inside a savepoint: a call that fails leaves nothing behind and the
/// transaction usable (PostgreSQL aborts a transaction at its first error otherwise), so a
/// script may catch the error and go on.
/// Named by the hook depth: a hook's `db` call runs inside the call that started the hook, and
/// MySQL replaces a savepoint of the same name where the others nest them.
async fn begin<E: Exec>(exec: &mut E, depth: usize) -> Result<()> {
    exec.execute(&format!("SAVEPOINT cloudio_db_{depth}"), &[])
        .await?;
    Ok(())
}

async fn end<E: Exec, T>(exec: &mut E, depth: usize, result: Result<T>) -> Result<T> {
    if result.is_err() {
        exec.execute(&format!("ROLLBACK TO SAVEPOINT cloudio_db_{depth}"), &[])
            .await?;
    }
    exec.execute(&format!("RELEASE SAVEPOINT cloudio_db_{depth}"), &[])
        .await?;
    result
}

/// A script's own SQL, in its app's schema (or the platform's).
async fn run_sql<E: Exec>(
    exec: &mut E,
    ctx: &Ctx<'_>,
    op: &str,
    schema_app: &str,
    sql: &str,
    params: &[Value],
) -> Result<Json> {
    if let Some(set) = ctx.engine.store.search_path_statement(schema_app) {
        exec.execute(&set, &[]).await?;
    }
    if op == "executeUpdate" {
        return Ok(Json::from(exec.execute(sql, params).await?));
    }
    let (names, rows) = exec.fetch_named(sql, params).await?;
    if op == "queryString" {
        return Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .map_or(Json::Null, |v| match v.to_json() {
                Json::Null => Json::Null,
                Json::String(s) => Json::String(s),
                j => Json::String(j.to_string()),
            }));
    }
    Ok(Json::Array(
        rows.into_iter()
            .map(|r| {
                Json::Object(
                    names
                        .iter()
                        .cloned()
                        .zip(r.into_iter().map(|v| v.to_json()))
                        .collect(),
                )
            })
            .collect(),
    ))
}

/// `db.fetch(url, init)`: allow-listed hosts only, no redirects, a timeout and a body cap.
async fn fetch(ctx: &Ctx<'_>, url: &Json, init: &Json) -> Result<Json> {
    let settings = &ctx.engine.settings;
    let bad = |m: String| Error::Invalid(format!("db.fetch: {m}"));
    let url = url.as_str().unwrap_or_default();
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("bad URL {url:?}: {e}")))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let with_port = parsed
        .port_or_known_default()
        .map(|p| format!("{host}:{p}"))
        .unwrap_or_else(|| host.clone());
    if !settings
        .fetch_allow
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host) || h.eq_ignore_ascii_case(&with_port))
    {
        return Err(bad(format!(
            "host `{host}` is not in the allow-list ([scripts].fetch_allow)"
        )));
    }
    let method = init
        .get("method")
        .and_then(Json::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("bad method {method:?}")))?;
    let mut req = ctx.engine.http.request(method, parsed);
    if let Some(Json::Object(headers)) = init.get("headers") {
        for (k, v) in headers {
            let v = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            req = req.header(k.as_str(), v);
        }
    }
    match init.get("body") {
        None | Some(Json::Null) => {}
        Some(Json::String(s)) => req = req.body(s.clone()),
        Some(other) => req = req.body(other.to_string()),
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| bad(format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    let headers: Map<String, Json> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Json::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| bad(format!("reading the response failed: {e}")))?
    {
        if body.len() + chunk.len() > settings.fetch_max_bytes {
            return Err(bad(format!(
                "the response is larger than {} bytes",
                settings.fetch_max_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(serde_json::json!({
        "status": status,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}
