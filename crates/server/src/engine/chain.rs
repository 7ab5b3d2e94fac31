//! The hook chain, around the executor: `preQuery -> SQL -> postQuery` for a query;
//! `before* -> writes in request order -> after*` for a post, rows grouped by `_rs`. Built-in
//! hooks of the platform's datasources run at the same points as scripts.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use query::{RowOp, WriteContext, WriteRow, compile_select, parse_query, parse_row};
use serde_json::{Map, Value as Json};
use store::WriteConn;

use super::exec::{self, Exec};
use super::plan::{self, AliasPlan, MAX_ALIASES, Work};
use super::{Answer, Ctx, Engine, Error, Hook, Principal, Result};

/// A whole `/v1/api` request.
pub(crate) async fn run_request(
    engine: &Engine,
    who: &Principal,
    body: &Map<String, Json>,
    trace: bool,
) -> Result<Answer> {
    if body.is_empty() {
        return Err(Error::Invalid(
            "the body must name at least one alias".into(),
        ));
    }
    if body.len() > MAX_ALIASES {
        return Err(Error::Invalid(format!(
            "at most {MAX_ALIASES} aliases per request"
        )));
    }
    let mut ctx = Ctx::new(engine, who);
    let plan = body
        .iter()
        .map(|(alias, spec)| plan::plan_alias(&ctx, alias, spec))
        .collect::<Result<Vec<_>>>()?;
    let asked: u64 = plan
        .iter()
        .map(|a| match &a.work {
            Work::Query { asked, .. } => *asked,
            Work::Post { .. } => 0,
        })
        .sum();
    let max_rows = engine.settings.request_max_rows;
    if asked > max_rows {
        return Err(Error::Invalid(format!(
            "this request asks for up to {asked} rows across its aliases; at most {max_rows} per request (request_max_rows)"
        )));
    }
    let _turn = engine.user_turn(who).await;
    // The SQL echo hides every bind of a request that touches write-only attributes.
    let trace = trace.then(|| Trace {
        log: Vec::new(),
        redact_all: plan
            .iter()
            .any(|a| a.ds.attributes.iter().any(|x| x.write_only)),
    });
    let mut trace = trace;
    let writes = plan.iter().any(AliasPlan::is_post);
    let hooks = plan.iter().any(AliasPlan::has_hooks);
    let store = &engine.store;

    let results = if let Some(writer) = store.db.writer()
        && writes
        && !hooks
    {
        // SQLite: the whole request is one job of the batching writer, run synchronously on
        // its connection (it must stay short: no scripts there).
        let rows: usize = plan
            .iter()
            .map(|a| match &a.work {
                Work::Post { rows, .. } => rows.len(),
                Work::Query { .. } => 0,
            })
            .sum();
        let (job_engine, job_who) = (engine.clone(), who.clone());
        let traced = trace.as_ref().map(|t| t.redact_all);
        let job = move |w: &mut WriteConn<'_>| {
            let mut ctx = Ctx::new(&job_engine, &job_who);
            // A job may run twice (its batch failed to commit): a fresh trace each time.
            let mut trace = traced.map(|redact_all| Trace {
                log: Vec::new(),
                redact_all,
            });
            let results = store::finish_now(run_traced(w, &mut ctx, &plan, &mut trace))?;
            Ok::<_, Error>((results, trace))
        };
        let started = Instant::now();
        let queued = crate::metrics::InFlight::enter(&engine.writer.queued);
        let answer = if rows <= 1 {
            writer.run(job).await
        } else {
            writer.run_alone(job).await
        };
        drop(queued);
        let w = &engine.writer;
        w.jobs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        w.micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let (results, traced) = answer?;
        trace = traced;
        results
    } else if writes && !hooks && matches!(plan.as_slice(), [a] if post_rows(a) == 1) {
        // One statement is its own transaction: no BEGIN and COMMIT round trips.
        let mut conn = store.db.acquire().await?;
        run_traced(&mut conn.raw(), &mut ctx, &plan, &mut trace).await?
    } else if writes {
        // Scripts may write around a post: one transaction for everything, with the write
        // turn taken at once.
        let mut tx = store.db.begin_write().await?;
        let results = run_traced(&mut tx.raw(), &mut ctx, &plan, &mut trace).await?;
        tx.commit().await?;
        ctx.committed();
        results
    } else if hooks {
        // Queries with hooks: a transaction only from a script's first `db` call on.
        let mut exec = exec::Lazy::read_first(&store.db);
        let results = run_traced(&mut exec, &mut ctx, &plan, &mut trace).await?;
        exec.commit().await?;
        ctx.committed();
        results
    } else {
        let mut conn = store.db.acquire().await?;
        run_traced(&mut conn.raw(), &mut ctx, &plan, &mut trace).await?
    };
    // Answer in the request's alias order.
    let mut results = results;
    let mut data = Map::with_capacity(results.len());
    for a in body.keys() {
        if let Some(pos) = results.iter().position(|(n, _)| n == a) {
            let (n, r) = results.swap_remove(pos);
            data.insert(n, r);
        }
    }
    Ok(Answer {
        data,
        touched: ctx.touched,
        statements: trace.map(|t| t.log),
    })
}

/// The statements of a request, when a developer asked to see them.
struct Trace {
    log: Vec<exec::Statement>,
    redact_all: bool,
}

/// [`run_plan`], through a [`exec::Traced`] executor when the request is traced.
async fn run_traced<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    plan: &[AliasPlan],
    trace: &mut Option<Trace>,
) -> Result<Vec<(String, Json)>> {
    match trace {
        Some(t) => {
            let mut traced = exec::Traced {
                inner: exec,
                log: &mut t.log,
                redact_all: t.redact_all,
            };
            run_plan(&mut traced, ctx, plan).await
        }
        None => run_plan(exec, ctx, plan).await,
    }
}

/// About the size of `v` as JSON text (strings without their escapes), without writing it.
pub(crate) fn json_size(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) => 5,
        Json::Number(_) => 12,
        Json::String(s) => s.len() + 2,
        Json::Array(a) => 2 + a.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        Json::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
    }
}

fn post_rows(a: &AliasPlan) -> usize {
    match &a.work {
        Work::Post { rows, .. } => rows.len(),
        Work::Query { .. } => 0,
    }
}

/// Posts in request order, then queries (which see the posts' effect).
async fn run_plan<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    plan: &[AliasPlan],
) -> Result<Vec<(String, Json)>> {
    let mut results = Vec::with_capacity(plan.len());
    for a in plan.iter().filter(|a| a.is_post()) {
        results.push((a.name.clone(), run_post(exec, ctx, a).await?));
    }
    let mut bytes = 0usize;
    let max_bytes = ctx.engine.settings.request_max_bytes;
    for a in plan.iter().filter(|a| !a.is_post()) {
        let result = run_query(exec, ctx, a).await?;
        bytes = bytes.saturating_add(json_size(&result));
        if bytes > max_bytes {
            return Err(Error::Invalid(format!(
                "the answer to this request would exceed {max_bytes} bytes (request_max_bytes); ask for fewer rows or attributes"
            )));
        }
        results.push((a.name.clone(), result));
    }
    Ok(results)
}

/// One query alias: `preQuery` (may change the query, or answer without SQL), the SQL,
/// `postQuery` (may change the rows).
pub(crate) async fn run_query<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    a: &AliasPlan,
) -> Result<Json> {
    let Work::Query { json, compiled, .. } = &a.work else {
        return Err(Error::Invalid(format!("{}: not a query", a.name)));
    };
    let started = Instant::now();
    let mut query = json.clone();
    let mut skipped = None;
    if a.hooks.get(Hook::PreQuery).is_some() {
        let out = run_hook(exec, ctx, a, Hook::PreQuery, query, Vec::new()).await?;
        query = out.query;
        if out.skip {
            skipped = Some(out.rows);
        }
    }
    let (mut rows, total) = match (skipped, compiled) {
        (Some(rows), _) => {
            let total = query
                .get("count")
                .and_then(Json::as_bool)
                .unwrap_or(false)
                .then(|| Json::from(rows.len()));
            (rows, total)
        }
        (None, Some(compiled)) => exec::fetch(exec, compiled).await?,
        (None, None) => {
            // The query as `preQuery` left it, checked like a client's.
            let name = format!("{}.preQuery", a.ds.name);
            let parsed = parse_query(&query).map_err(|e| plan::bad(&name, e))?;
            let compiled =
                compile_select(&a.ds, &parsed, &ctx.opts).map_err(|e| plan::bad(&name, e))?;
            exec::fetch(exec, &compiled).await?
        }
    };
    if a.hooks.get(Hook::PostQuery).is_some() {
        rows = run_hook(exec, ctx, a, Hook::PostQuery, query, rows)
            .await?
            .rows;
        for r in rows.iter_mut() {
            if let Json::Object(m) = r
                && !m.contains_key("_rs")
            {
                m.insert("_rs".into(), Json::from("Q"));
            }
        }
    }
    let mut result = Map::new();
    let fetched = rows.len();
    result.insert("data".into(), Json::Array(rows));
    result.insert(
        "queryElapsed".into(),
        Json::from(started.elapsed().as_millis() as u64),
    );
    result.insert("rowsFetched".into(), Json::from(fetched));
    if let Some(t) = total {
        result.insert("totalCount".into(), t);
    }
    Ok(Json::Object(result))
}

const OPS: [(RowOp, &str, Hook, Hook); 3] = [
    (RowOp::Insert, "I", Hook::BeforeInsert, Hook::AfterInsert),
    (RowOp::Update, "U", Hook::BeforeUpdate, Hook::AfterUpdate),
    (RowOp::Delete, "D", Hook::BeforeDelete, Hook::AfterDelete),
];

/// One post alias. Without hooks: every row written in request order. With hooks: rows grouped
/// by `_rs`; each group's before hook, then the writes in request order (a group whose hook set
/// `skipDML` is not written), then each group's after hook; the answer is the groups' rows as
/// the after hooks left them (inserts, updates, deletes).
pub(crate) async fn run_post<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    a: &AliasPlan,
) -> Result<Json> {
    let Work::Post { json, rows } = &a.work else {
        return Err(Error::Invalid(format!("{}: not a post", a.name)));
    };
    let started = Instant::now();
    let out = if !a.hooks.is_empty() {
        run_post_hooked(exec, ctx, a, json).await?
    } else if let Some(b) = a.builtin {
        let mut rows = rows.clone();
        b.before(ctx, &mut rows).await?;
        write_rows(exec, ctx, a, &rows).await?
    } else {
        write_rows(exec, ctx, a, rows).await?
    };
    let mut result = Map::new();
    let posted = out.len();
    result.insert("data".into(), Json::Array(out));
    result.insert(
        "postElapsed".into(),
        Json::from(started.elapsed().as_millis() as u64),
    );
    result.insert("rowsPosted".into(), Json::from(posted));
    Ok(Json::Object(result))
}

/// Writes rows in order (with the built-in after effects); returns them as stored.
async fn write_rows<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    a: &AliasPlan,
    rows: &[WriteRow],
) -> Result<Vec<Json>> {
    let user = ctx.who.user_name.clone();
    let wctx = WriteContext {
        dialect: exec.dialect(),
        user: &user,
        now: ctx.now,
    };
    let ret = exec::Returning::of(&a.ds);
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut stored = exec::write_row(exec, &wctx, &a.name, &a.ds, &ret, i, row).await?;
        if let Some(b) = a.builtin {
            b.after(exec, ctx, row, &mut stored).await?;
        }
        out.push(stored);
    }
    Ok(out)
}

struct Group {
    rows: Vec<Json>,
    skip: bool,
    written: Vec<Json>,
}

async fn run_post_hooked<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    a: &AliasPlan,
    posted: &[Json],
) -> Result<Vec<Json>> {
    let op_of = |r: &Json| {
        r.get("_rs")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string()
    };
    let order: Vec<String> = posted.iter().map(op_of).collect();
    let mut groups = Vec::with_capacity(3);
    for (_, code, before, _) in OPS {
        let mut rows: Vec<Json> = posted
            .iter()
            .filter(|r| op_of(r) == code)
            .cloned()
            .collect();
        let mut skip = false;
        if !rows.is_empty() && a.hooks.get(before).is_some() {
            let out = run_hook(exec, ctx, a, before, Json::Null, rows).await?;
            rows = out.rows;
            skip = out.skip;
        }
        groups.push(Group {
            rows,
            skip,
            written: Vec::new(),
        });
    }
    // The rows to write, in request order: the n-th row of a group takes the place of the
    // group's n-th posted row; rows a before hook added follow at the end.
    let mut next = [0usize; 3];
    let mut to_write: Vec<(usize, Json)> = Vec::new();
    for code in &order {
        if let Some(g) = OPS.iter().position(|(_, c, ..)| c == code)
            && !groups[g].skip
            && let Some(row) = groups[g].rows.get(next[g])
        {
            to_write.push((g, row.clone()));
            next[g] += 1;
        }
    }
    for (g, group) in groups.iter().enumerate() {
        if !group.skip {
            to_write.extend(group.rows.iter().skip(next[g]).map(|r| (g, r.clone())));
        }
    }
    let mut parsed = Vec::with_capacity(to_write.len());
    for (i, (g, mut row)) in to_write.into_iter().enumerate() {
        // The group decides the operation, whatever a hook did to `_rs`.
        if let Json::Object(m) = &mut row {
            m.insert("_rs".into(), Json::from(OPS[g].1));
        }
        let w = parse_row(&a.ds, &row, i).map_err(|e| plan::bad(&a.name, e))?;
        parsed.push((g, w));
    }
    if let Some(b) = a.builtin {
        let mut rows: Vec<WriteRow> = parsed.iter().map(|(_, w)| w.clone()).collect();
        b.before(ctx, &mut rows).await?;
        for ((_, w), hashed) in parsed.iter_mut().zip(rows) {
            *w = hashed;
        }
    }
    let rows: Vec<WriteRow> = parsed.iter().map(|(_, w)| w.clone()).collect();
    let stored = write_rows(exec, ctx, a, &rows).await?;
    for ((g, _), row) in parsed.iter().zip(stored) {
        groups[*g].written.push(row);
    }
    let mut out = Vec::new();
    for (g, (_, _, _, after)) in OPS.iter().enumerate() {
        let group = &mut groups[g];
        let rows = if group.skip {
            std::mem::take(&mut group.rows)
        } else {
            std::mem::take(&mut group.written)
        };
        if rows.is_empty() && !posted.iter().any(|r| op_of(r) == OPS[g].1) {
            continue;
        }
        let rows = if a.hooks.get(*after).is_some() {
            run_hook(exec, ctx, a, *after, Json::Null, rows).await?.rows
        } else {
            rows
        };
        out.extend(rows);
    }
    Ok(out)
}

/// What a hook left: its `query`, `rows`, and whether it set `skipQuery` or `skipDML`.
pub(crate) struct HookOut {
    pub query: Json,
    pub rows: Vec<Json>,
    pub skip: bool,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs one hook of the alias's datasource in the sandbox, serving its `db` calls inside the
/// request's transaction.
fn run_hook<'a, E: Exec>(
    exec: &'a mut E,
    ctx: &'a mut Ctx<'_>,
    a: &'a AliasPlan,
    hook: Hook,
    query: Json,
    rows: Vec<Json>,
) -> BoxFuture<'a, Result<HookOut>> {
    Box::pin(async move {
        let Some(body) = a.hooks.get(hook).cloned() else {
            return Ok(HookOut {
                query,
                rows,
                skip: false,
            });
        };
        let name = format!("{}.{}", a.ds.name, hook.name());
        if !exec.runs_scripts() {
            return Err(Error::Script(format!(
                "{name}: scripts cannot run on this connection"
            )));
        }
        if ctx.depth >= MAX_HOOK_DEPTH {
            return Err(Error::Script(format!(
                "{name}: hooks nested deeper than {MAX_HOOK_DEPTH} levels"
            )));
        }
        let keys: Vec<Json> = if a.ds.key_generation == query::KeyGeneration::None {
            Vec::new()
        } else {
            a.ds.primary_key
                .iter()
                .map(|k| Json::from(k.as_str()))
                .collect()
        };
        // Moved in, not copied (as `json!` would, through serde): the rows can be many.
        let mut input = Map::with_capacity(3);
        input.insert("query".into(), query);
        input.insert("rows".into(), Json::Array(rows));
        input.insert("keys".into(), Json::Array(keys));
        if !matches!(hook, Hook::PreQuery) {
            // Only a preQuery's query is used after it: not read back out of the sandbox.
            input.insert("rowsOnly".into(), Json::Bool(true));
        }
        let execution = script::Execution {
            program: script::Program::Hook { body },
            name: name.clone(),
            request_id: ctx.who.request_id.clone(),
            session: session_info(ctx.who, &a.ds.app_uid),
            input: Json::Object(input),
            limits: ctx.engine.limits(&a.ds.app_uid).0,
        };
        let out = run_script(exec, ctx, execution, Some((&a.ds.app_uid, &a.ds.name))).await?;
        let skip_flag = if matches!(hook, Hook::PreQuery) {
            "skipQuery"
        } else {
            "skipDML"
        };
        let mut out = match out {
            Json::Object(m) => m,
            _ => Map::new(),
        };
        let rows = match out.remove("rows") {
            Some(Json::Array(rows)) => rows,
            Some(Json::Null) | None => Vec::new(),
            Some(_) => {
                return Err(Error::Script(format!(
                    "{name}: `rows` must be an array of rows"
                )));
            }
        };
        Ok(HookOut {
            query: out.remove("query").unwrap_or(Json::Null),
            rows,
            skip: out.get(skip_flag).and_then(Json::as_bool).unwrap_or(false),
        })
    })
}

/// How deep hooks may run inside one another's `db` calls.
pub const MAX_HOOK_DEPTH: usize = 8;

pub(crate) fn session_info(who: &Principal, app: &str) -> script::SessionInfo {
    script::SessionInfo {
        user_name: who.user_name.clone(),
        org_uid: who.org_uid.clone(),
        app_uid: app.to_string(),
        roles: who.roles_in(app),
    }
}

/// Starts an execution and serves its `db` calls until it ends. `running`: the datasource
/// whose hook this is (its own hooks do not run again for its `db` calls).
pub(crate) async fn run_script<E: Exec>(
    exec: &mut E,
    ctx: &mut Ctx<'_>,
    execution: script::Execution,
    running: Option<(&str, &str)>,
) -> Result<Json> {
    let nested = ctx.depth > 0;
    let app = execution.session.app_uid.clone();
    let mut handle = ctx.engine.scripts.start(execution, nested).await?;
    ctx.depth += 1;
    if let Some((app, ds)) = running {
        ctx.running.push((app.to_string(), ds.to_string()));
    }
    let out = loop {
        match handle.next().await {
            script::Event::Call(call) => {
                if call.op != "fetch"
                    && let Err(e) = exec.enter_script().await
                {
                    call.reply(Err(Error::from(e).public_message()));
                    continue;
                }
                let result = super::host::serve(exec, ctx, &app, &call.op, &call.args).await;
                match result {
                    Err(super::Error::User(m)) => call.reply_user_error(m),
                    result => call.reply(result.map_err(|e| e.public_message())),
                }
            }
            script::Event::Done(out) => break out,
        }
    };
    ctx.depth -= 1;
    if running.is_some() {
        ctx.running.pop();
    }
    Ok(out?)
}

/// A cloud function call, in a transaction of its own.
pub(crate) async fn run_function(
    engine: &Engine,
    who: &Principal,
    app: &str,
    module: &str,
    function: &str,
    arg: Json,
    trace: bool,
) -> Result<(Json, Option<Vec<exec::Statement>>)> {
    let catalog = engine.catalog.get();
    // Grants first: a function the user may not call is a 403 whether or not it exists.
    if !catalog.allows_function(&who.roles, app, module, function) {
        return Err(Error::Denied(format!(
            "Access Denied - function `{module}/{function}` of app `{app}` is not available to you."
        )));
    }
    run_function_ungranted(engine, who, app, module, function, arg, trace).await
}

/// [`run_function`] without the grant check: for calls the platform makes itself.
pub(crate) async fn run_function_ungranted(
    engine: &Engine,
    who: &Principal,
    app: &str,
    module: &str,
    function: &str,
    arg: Json,
    trace: bool,
) -> Result<(Json, Option<Vec<exec::Statement>>)> {
    let catalog = engine.catalog.get();
    let Some(modules) = catalog.modules(app).filter(|m| m.contains_key(module)) else {
        return Err(Error::NotFound(format!(
            "app `{app}` has no function module `{module}`"
        )));
    };
    let _turn = engine.user_turn(who).await;
    let mut ctx = Ctx::new(engine, who);
    let execution = script::Execution {
        program: script::Program::Function {
            modules,
            module: module.to_string(),
            function: function.to_string(),
        },
        name: format!("{module}.{function}"),
        request_id: who.request_id.clone(),
        session: session_info(who, app),
        input: Json::Object(Map::from_iter([
            ("arg".to_string(), arg),
            ("keys".to_string(), Json::Array(Vec::new())),
        ])),
        limits: engine.limits(app).1,
    };
    let mut tx = exec::Lazy::new(&engine.store.db);
    if !trace {
        let out = run_script(&mut tx, &mut ctx, execution, None).await?;
        tx.commit().await?;
        ctx.committed();
        return Ok((out, None));
    }
    let mut log = Vec::new();
    let mut traced = exec::Traced {
        inner: &mut tx,
        log: &mut log,
        redact_all: false,
    };
    let out = run_script(&mut traced, &mut ctx, execution, None).await?;
    tx.commit().await?;
    ctx.committed();
    Ok((out, Some(log)))
}
