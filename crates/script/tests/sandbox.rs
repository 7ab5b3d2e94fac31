//! The sandbox on its own: globals, errors, limits with hostile scripts, host calls, isolation
//! between executions, escapes tried, modules. The engine's use of it is tested in the server's
//! API tests, on real databases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use script::{
    Event, Execution, Kind, Limits, Modules, Pool, Program, ScriptError, SessionInfo, compile,
};
use serde_json::{Value as Json, json};

/// The `cloudio` binary's allocator, which also serves QuickJS's `malloc` (unprefixed): the
/// memory limit must hold under it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn hook(body: &str, input: Json) -> Execution {
    Execution {
        program: Program::Hook {
            body: compile("t.js", body, Kind::Hook).unwrap().into(),
        },
        name: "Employees.postQuery".into(),
        request_id: Some("req-1".into()),
        session: SessionInfo {
            user_name: "steve".into(),
            org_uid: "cloudio".into(),
            app_uid: "demo".into(),
            roles: vec!["hr".into()],
        },
        input,
        limits: Limits::HOOK,
    }
}

fn rows_input(rows: Json) -> Json {
    json!({"query": {"filter": []}, "rows": rows, "keys": ["empId"]})
}

/// Runs an execution, answering each host call with `serve`.
async fn run_with(
    pool: &Pool,
    exec: Execution,
    mut serve: impl FnMut(&str, &Json) -> Result<Json, String>,
) -> Result<Json, ScriptError> {
    let mut running = pool.start(exec, false).await?;
    loop {
        match running.next().await {
            Event::Call(call) => {
                let r = serve(&call.op, &call.args);
                call.reply(r);
            }
            Event::Done(out) => return out,
        }
    }
}

async fn run(pool: &Pool, exec: Execution) -> Result<Json, ScriptError> {
    run_with(pool, exec, |op, _| Err(format!("no host for {op}"))).await
}

#[tokio::test]
async fn a_hook_changes_rows_and_sees_its_globals() {
    let pool = Pool::new(1);
    let out = run(
        &pool,
        hook(
            "rows.forEach(r => { r.double = r.n * 2; });\n\
             rows.push({n: 0, who: session.userName(), app: session.appUid(), roles: session.roles()});\n\
             query.filter.push({n: {gt: 1}});",
            rows_input(json!([{"n": 1}, {"n": 2}])),
        ),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"][0]["double"], 2);
    assert_eq!(out["rows"][1]["double"], 4);
    assert_eq!(
        out["rows"][2],
        json!({"n": 0, "who": "steve", "app": "demo", "roles": ["hr"]})
    );
    assert_eq!(out["query"]["filter"], json!([{"n": {"gt": 1}}]));
    assert_eq!(out["skipQuery"], false);
}

#[tokio::test]
async fn rows_may_be_replaced_and_flags_set() {
    let pool = Pool::new(1);
    let out = run(
        &pool,
        hook(
            "rows = [{a: 1}]; skipQuery = true; skipDML = true; return 5;",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"], json!([{"a": 1}]));
    assert_eq!(out["skipQuery"], true);
    assert_eq!(out["skipDML"], true);
}

/// Keys that `Object.prototype` also has are a row's own properties, as `JSON.parse` makes
/// them: made by definition, not by assignment (which would reach the prototype's setter,
/// frozen method or `__proto__`), in rows and in objects inside them.
#[tokio::test]
async fn keys_object_prototype_also_has_are_own_properties_of_a_row() {
    let pool = Pool::new(1);
    let fields = json!({
        "a": 1, "constructor": "c", "toString": "t", "__defineGetter__": 2, "valueOf": {"x": 1},
        "hasOwnProperty": null, "__proto__": [1], "isPrototypeOf": true, "z": 3
    });
    let input = json!([fields.clone(), {"nested": fields.clone()}]);
    let names =
        "a,constructor,toString,__defineGetter__,valueOf,hasOwnProperty,__proto__,isPrototypeOf,z";
    let out = run(
        &pool,
        hook(
            "const look = (o) => [Object.keys(o).join(','),\n\
               Object.keys(o).every(k => Object.prototype.hasOwnProperty.call(o, k)),\n\
               Object.getPrototypeOf(o) === Object.prototype, o.toString, o.constructor];\n\
             rows[0].seen = look(rows[0]);\n\
             rows[1].seen = look(rows[1].nested);",
            rows_input(input.clone()),
        ),
    )
    .await
    .unwrap();
    for (i, row) in out["rows"].as_array().unwrap().iter().enumerate() {
        assert_eq!(row["seen"], json!([names, true, true, "t", "c"]), "row {i}");
    }
    let mut first = out["rows"][0].clone();
    first.as_object_mut().unwrap().remove("seen");
    assert_eq!(first, fields);
    assert_eq!(out["rows"][1]["nested"], fields);
}

/// Rows cross into and out of a script as `JSON.parse` and `JSON.stringify` would carry them
/// (built directly, not through text): the same values, key order, `toJSON`, omissions.
#[tokio::test]
async fn rows_cross_as_json_would_carry_them() {
    let pool = Pool::new(1);
    let input = json!([{
        "s": "\u{e9}t\u{e9} \"q\" \n", "i": -7, "big": 9007199254740993i64, "f": 1.5, "z": 0,
        "t": true, "n": null, "a": [1, [2, {"x": []}]], "o": {"b": 1, "a": 2}, "__proto__": {"p": 1}
    }]);
    let out = run(
        &pool,
        hook(
            "const r = rows[0];\n\
             // what JSON.parse would have given the script\n\
             r.seen = JSON.stringify(r);\n\
             r.ownProto = Object.prototype.hasOwnProperty.call(r, '__proto__');\n\
             r.whole = 2.0; r.negZero = -0; r.nan = NaN; r.inf = -Infinity;\n\
             r.date = new Date(Date.UTC(2026, 10, 29, 9, 30));\n\
             r.undef = undefined; r.fn = function () {}; r.sym = Symbol('s');\n\
             r.arr = [undefined, () => 1, 3];\n\
             r.custom = { toJSON(key) { return 'custom:' + key; } };\n\
             Object.defineProperty(r, 'hidden', { value: 1, enumerable: false });",
            rows_input(input.clone()),
        ),
    )
    .await
    .unwrap();
    let r = &out["rows"][0];
    let seen: Json = serde_json::from_str(r["seen"].as_str().unwrap()).unwrap();
    assert_eq!(seen["s"], input[0]["s"]);
    assert_eq!(seen["o"], json!({"b": 1, "a": 2}));
    assert!(
        r["seen"].as_str().unwrap().find("\"o\"").unwrap()
            < r["seen"].as_str().unwrap().find("\"__proto__\"").unwrap()
    );
    assert_eq!(
        r["ownProto"], true,
        "`__proto__` is an own property, as JSON.parse makes it"
    );
    assert_eq!(r["__proto__"], json!({"p": 1}));
    for k in ["s", "i", "f", "z", "t", "n", "a", "o"] {
        assert_eq!(r[k], input[0][k], "{k} came back unchanged");
    }
    // Beyond 2^53 a JS number cannot hold the integer; JSON.parse would round it the same way.
    assert_eq!(r["big"].as_f64(), Some(9007199254740992.0));
    assert_eq!(r["whole"], json!(2));
    assert!(
        r["whole"].is_i64(),
        "2.0 is written 2, as JSON.stringify writes it"
    );
    assert_eq!(r["negZero"], json!(0));
    assert_eq!(r["nan"], Json::Null);
    assert_eq!(r["inf"], Json::Null);
    assert_eq!(r["date"], "2026-11-29T09:30:00.000Z");
    for k in ["undef", "fn", "sym", "hidden"] {
        assert!(r.get(k).is_none(), "{k} is left out");
    }
    assert_eq!(r["arr"], json!([null, null, 3]));
    assert_eq!(r["custom"], "custom:custom");
    let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "s", "keys keep their order");
}

/// A hook's rows come back as `JSON.stringify` writes them, whatever the hook did to them.
/// Rows that are still the input's objects are moved back from the input with only their
/// changed and added fields read out of QuickJS: this compares that with QuickJS's own
/// `JSON.stringify`, key order included.
#[tokio::test]
async fn rows_handed_back_are_what_json_stringify_makes_of_them() {
    let pool = Pool::new(1);
    let rows: Vec<Json> = (0..13)
        .map(|i| {
            json!({"empId": i, "name": format!("n{i}"), "salary": 1000.5 + f64::from(i),
                   "active": i % 2 == 0, "note": null, "email": format!("e{i}@example.com"),
                   "tags": ["a", i], "dept": "sales", "who": if i % 2 == 0 { "a" } else { "b" }})
        })
        .collect();
    // `dept` and `who` repeat their text down the rows (one JS string per column and text).
    let body = r#"
        rows[0].x = 1;
        rows[1].dept = rows[2].who;
        rows[3].who = 'b';
        rows[5].who = rows[6].who;
        rows[6].dept = rows[7].dept + '';
        rows[1].name = 'changed';
        rows[2].salary = undefined;
        delete rows[3].email;
        rows[4] = { ...rows[4] };
        rows.push(rows[5]);
        rows[6].when = new Date(Date.UTC(2026, 0, 2));
        rows[7].toJSON = function () { return { only: this.empId }; };
        const r8 = rows[8]; rows[8] = rows[9]; rows[9] = r8;
        rows[10].name = rows[10].name;
        rows[10].active = 'yes';
        rows[10].tags.push('more');
        rows[11].fn = function () {};
        rows[11].nested = { a: [1, 2] };
        rows[11].note = 0;
        let seen = false;
        rows[12].empId = { toJSON() { seen = true; return 'x'; } };
        Object.defineProperty(rows[12], 'name', {
            get() { return seen ? 'after' : 'before'; }, enumerable: true });
        rows.push(rows.splice(0, 1)[0]);
        rows.push({ expected: JSON.stringify(rows) });
        seen = false;
    "#;
    for _ in 0..3 {
        let out = run(&pool, hook(body, rows_input(Json::Array(rows.clone()))))
            .await
            .unwrap();
        let mut got = out["rows"].as_array().unwrap().clone();
        let expected = got.pop().unwrap()["expected"].as_str().unwrap().to_string();
        assert_eq!(serde_json::to_string(&got).unwrap(), expected);
        assert_eq!(got.len(), 14);
        assert_eq!(got[0]["name"], "changed");
        assert_eq!(got[13]["x"], 1, "the first row, moved to the end");
        assert_eq!(
            got[11]["name"], "after",
            "a getter runs when its turn comes, after the fields before it were written"
        );
    }
    assert_eq!(pool.stats().inline, 3);
}

/// Rows that are not objects (a hook's input is whatever the caller gives) keep every object
/// row paired with its own input: none is handed back as another's.
#[tokio::test]
async fn rows_that_are_not_objects_leave_the_others_paired_with_their_own() {
    let pool = Pool::new(1);
    let rows = json!([null, {"a": 1}, 7, {"a": 2}, "s", {"a": 3}]);
    // An empty row handed back (it once indexed past the names learned: a panic inside the
    // context, which aborts the process).
    let out = run(&pool, hook("", rows_input(json!([{}, {}]))))
        .await
        .unwrap();
    assert_eq!(out["rows"], json!([{}, {}]));
    for body in [
        "",
        "rows[3].b = 1;",
        "rows.reverse();",
        "rows.splice(0, 1);",
    ] {
        let out = run(&pool, hook(body, rows_input(rows.clone())))
            .await
            .unwrap();
        let expected = match body {
            "" => rows.clone(),
            "rows[3].b = 1;" => json!([null, {"a": 1}, 7, {"a": 2, "b": 1}, "s", {"a": 3}]),
            "rows.reverse();" => json!([{"a": 3}, "s", {"a": 2}, 7, {"a": 1}, null]),
            _ => json!([{"a": 1}, 7, {"a": 2}, "s", {"a": 3}]),
        };
        assert_eq!(out["rows"], expected, "after `{body}`");
    }
}

/// An execution that must start again on a thread while its result is being read (a row's
/// `toJSON` calls `db` on the caller's thread) finds its input rows whole there.
#[tokio::test]
async fn an_execution_moved_while_its_rows_are_read_finds_its_input_whole() {
    let pool = Pool::new(1);
    let rows =
        json!([{"empId": 1, "name": "a"}, {"empId": 2, "name": "b"}, {"empId": 3, "name": "c"}]);
    let body = "rows[1].x = 2;\n\
                rows[2].toJSON = function () { db.find('X', {}).catch(() => {}); return { third: true }; };";
    let mut calls = 0;
    let out = run_with(&pool, hook(body, rows_input(rows)), |_, _| {
        calls += 1;
        Ok(json!([]))
    })
    .await
    .unwrap();
    assert_eq!(
        out["rows"],
        json!([{"empId": 1, "name": "a"}, {"empId": 2, "name": "b", "x": 2}, {"third": true}])
    );
    assert_eq!(calls, 1);
    assert_eq!(pool.stats().inline, 0, "it ran on a thread in the end");
}

/// A result that cannot be JSON fails the execution with a clear message: cycles, depth, a
/// BigInt, and a result far larger than the runtime's memory (a shared object repeated).
#[tokio::test]
async fn results_that_cannot_be_json_fail_clearly() {
    let pool = Pool::new(1);
    for (body, expect) in [
        (
            "const a = {}; a.self = a; rows = [a];",
            "nested deeper than 128",
        ),
        (
            "let o = {}; for (let i = 0; i < 200; i++) o = {o}; rows = [o];",
            "nested deeper than 128",
        ),
        ("rows = [{n: 10n}];", "BigInt"),
        (
            "let o = {s: 'x'.repeat(1 << 16)}; for (let i = 0; i < 20; i++) o = {a: o, b: o}; rows = [o];",
            "larger than",
        ),
        (
            "rows = [{ get boom() { throw new Error('getter failed'); } }];",
            "getter failed",
        ),
    ] {
        let err = run(&pool, hook(body, rows_input(json!([]))))
            .await
            .unwrap_err();
        match err {
            ScriptError::Script(m) => assert!(m.contains(expect), "{body}: {m}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    // The worker goes on.
    let out = run(&pool, hook("rows = [{ok: 1}];", rows_input(json!([]))))
        .await
        .unwrap();
    assert_eq!(out["rows"], json!([{"ok": 1}]));
}

#[tokio::test]
async fn user_error_is_its_message_and_other_errors_name_the_hook() {
    let pool = Pool::new(1);
    let e = run(
        &pool,
        hook(
            "throw new UserError('Salary must be positive');",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e, ScriptError::User("Salary must be positive".into()));
    let e = run(&pool, hook("const x = 1; x();", rows_input(json!([]))))
        .await
        .unwrap_err();
    let ScriptError::Script(m) = e else {
        panic!("{e:?}")
    };
    assert!(m.starts_with("Employees.postQuery: TypeError: "), "{m}");
    let e = run(
        &pool,
        hook(
            "await Promise.reject(new RangeError('no'));",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        ScriptError::Script("Employees.postQuery: RangeError: no".into())
    );
}

#[tokio::test]
async fn an_endless_loop_is_stopped_near_the_limit_and_the_pool_goes_on() {
    let pool = Pool::new(1);
    let mut exec = hook("while (true) {}", rows_input(json!([])));
    exec.limits.wall = Duration::from_millis(300);
    let started = Instant::now();
    let e = run(&pool, exec).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(400 + 300),
        "{took:?}"
    );
    assert!(e.to_string().contains("limit of 300 ms"), "{e}");
    // The same worker serves the next execution.
    let out = run(&pool, hook("rows.push(1);", rows_input(json!([]))))
        .await
        .unwrap();
    assert_eq!(out["rows"], json!([1]));
}

#[tokio::test]
async fn memory_past_the_limit_fails_the_execution_not_the_process() {
    let pool = Pool::new(1);
    let mut exec = hook(
        "const a = []; while (true) { a.push('x'.repeat(1 << 20) + a.length); }",
        rows_input(json!([])),
    );
    exec.limits.memory_bytes = 16 << 20;
    exec.limits.wall = Duration::from_secs(20);
    let e = run(&pool, exec).await.unwrap_err();
    assert!(matches!(e, ScriptError::Script(_)), "{e:?}");
    // Catching the out-of-memory error does not help the script either.
    let mut exec = hook(
        "try { const a = []; while (true) a.push(new Array(1e6).fill(1)); } catch (e) { rows.push('caught'); }",
        rows_input(json!([])),
    );
    exec.limits.memory_bytes = 16 << 20;
    exec.limits.wall = Duration::from_secs(20);
    let _ = run(&pool, exec).await;
    let out = run(&pool, hook("rows.push('fine');", rows_input(json!([]))))
        .await
        .unwrap();
    assert_eq!(out["rows"], json!(["fine"]));
}

#[tokio::test]
async fn deep_recursion_is_a_script_error() {
    let pool = Pool::new(1);
    let e = run(
        &pool,
        hook(
            "function f(n) { return f(n + 1) + 1; } f(0);",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap_err();
    let ScriptError::Script(m) = e else {
        panic!("{e:?}")
    };
    assert!(m.contains("stack"), "{m}");
}

#[tokio::test]
async fn host_calls_round_trip_and_the_101st_fails() {
    let pool = Pool::new(1);
    let mut seen = Vec::new();
    let out = run_with(
        &pool,
        hook(
            "const r = await db.find('Employees', {filter: [{name: {is: 'a'}}]});\n\
             rows = r;\n\
             const d = new Date(Date.UTC(2021, 4, 30, 4, 19, 41));\n\
             await db.insertOne('Employees', {name: 'b', joined: d});\n\
             try { await db.findOne('Missing', {}); } catch (e) { rows.push(e.message); }",
            rows_input(json!([])),
        ),
        |op, args| {
            seen.push((op.to_string(), args.clone()));
            match op {
                "find" => Ok(json!([{"name": "a", "_rs": "Q"}])),
                "insertOne" => Ok(args[1].clone()),
                _ => Err("Access Denied - datasource `Missing` is not available to you.".into()),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        out["rows"],
        json!([{"name": "a", "_rs": "Q"}, "Access Denied - datasource `Missing` is not available to you."])
    );
    assert_eq!(
        seen[0].1,
        json!(["Employees", {"filter": [{"name": {"is": "a"}}]}])
    );
    assert_eq!(
        seen[1].1[1]["joined"],
        json!({"$date": "2021-05-30T04:19:41.000Z"})
    );
    let mut calls = 0;
    let out = run_with(
        &pool,
        hook(
            "for (let i = 0; i < 100; i++) await db.queryString('SELECT 1', []);\n\
             try { await db.queryString('SELECT 1', []); } catch (e) { rows.push(e.message); }\n\
             try { await db.queryString('SELECT 1', []); } catch (e) { rows.push('again'); }",
            rows_input(json!([])),
        ),
        |_, _| {
            calls += 1;
            Ok(json!("1"))
        },
    )
    .await
    .unwrap();
    assert_eq!(calls, 100);
    assert!(
        out["rows"][0]
            .as_str()
            .unwrap()
            .contains("at most 100 db calls"),
        "{out}"
    );
    assert_eq!(out["rows"][1], "again");
}

#[tokio::test]
async fn promise_all_runs_calls_together() {
    let pool = Pool::new(1);
    let out = run_with(
        &pool,
        hook(
            "const [a, b] = await Promise.all([db.find('A', {}), db.find('B', {})]);\n\
             rows = a.concat(b);",
            rows_input(json!([])),
        ),
        |_, args| Ok(json!([{"ds": args[0]}])),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"], json!([{"ds": "A"}, {"ds": "B"}]));
}

#[tokio::test]
async fn a_host_call_never_answered_ends_at_the_wall_clock() {
    let pool = Pool::new(1);
    let mut exec = hook("await db.find('A', {});", rows_input(json!([])));
    exec.limits.wall = Duration::from_millis(200);
    let started = Instant::now();
    let mut running = pool.start(exec, false).await.unwrap();
    let mut held = Vec::new();
    let out = loop {
        match running.next().await {
            Event::Call(call) => held.push(call),
            Event::Done(out) => break out,
        }
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(out.unwrap_err().to_string().contains("wall-clock"));
}

/// A request that goes away while its script awaits a `db` call (its client disconnected, and
/// the server dropped the request) gives its runtime back at once, not at the script's
/// wall-clock limit: otherwise clients that hang up could hold every runtime of the pool.
#[tokio::test]
async fn a_request_dropped_while_its_script_awaits_frees_the_runtime_at_once() {
    let pool = Pool::new(1);
    let mut exec = hook(
        "await db.find('A', {}); rows.push(1);",
        rows_input(json!([])),
    );
    exec.limits.wall = Duration::from_secs(30);
    let mut running = pool.start(exec, false).await.unwrap();
    let call = match running.next().await {
        Event::Call(call) => call,
        Event::Done(out) => panic!("ended without a call: {out:?}"),
    };
    assert_eq!(pool.busy(), 1);
    let dropped = Instant::now();
    drop(running);
    drop(call);
    while pool.busy() > 0 {
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "the runtime is still taken {:?} after the request went away",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // And the pool serves the next request.
    let mut quick = hook("rows.push(2);", rows_input(json!([])));
    quick.limits.wall = Duration::from_millis(500);
    let out = run(&pool, quick).await.unwrap();
    assert_eq!(out["rows"], json!([2]));
    assert_eq!(pool.stats().failed, 1);
}

#[tokio::test]
async fn nothing_leaks_between_executions() {
    let pool = Pool::new(1);
    // Everything a script might use to hand data to the next execution (another user's).
    run(
        &pool,
        hook(
            "const tries = [() => { globalThis.leak = 42; }, () => { leak2 = 1; },\n\
               () => { Object.prototype.polluted = 1; }, () => { Array.prototype.push = null; },\n\
               () => { JSON.stringify = null; }, () => { Math.max = null; },\n\
               () => { Object.getPrototypeOf(async function () {}).evil = 1; },\n\
               () => { Object.getPrototypeOf(function* () {}).evil = 1; },\n\
               () => { Object.getPrototypeOf([][Symbol.iterator]()).evil = 1; },\n\
               () => { Promise.prototype.evil = 1; }, () => { Error.prototype.evil = 1; },\n\
               () => { UserError.prototype.evil = 1; }, () => { db.evil = 1; },\n\
               () => { session.evil = 1; }, () => { utils.toNewRow.evil = 1; },\n\
               () => { delete globalThis.rows; }];\n\
             let refused = 0;\n\
             for (const t of tries) { try { t(); } catch (e) { refused++; } }\n\
             try { arguments.callee.evil = 1; } catch (e) { refused++; }\n\
             rows = ['secret of the first user', refused]; skipQuery = true;",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap();
    let out = run(
        &pool,
        hook(
            "const p = (o) => o.evil;\n\
             rows.push(typeof leak, typeof leak2, ({}).polluted === undefined, typeof [].push,\n\
               typeof Math.max, p(Object.getPrototypeOf(async function () {})),\n\
               p(Object.getPrototypeOf(function* () {})), p(Object.getPrototypeOf([][Symbol.iterator]())),\n\
               p(Promise.prototype), p(Error.prototype), p(db), p(session),\n\
               (() => { try { return arguments.callee.evil; } catch (e) { return null; } })());",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        out["rows"],
        json!([
            "undefined",
            "undefined",
            true,
            "function",
            "function",
            null,
            null,
            null,
            null,
            null,
            null,
            null,
            null
        ])
    );
    assert_eq!(out["skipQuery"], false);
    // Subclasses may still name their errors (frozen prototypes, no override mistake).
    let e = run(
        &pool,
        hook(
            "class MyError extends Error { constructor(m) { super(m); this.name = 'MyError'; } }\n\
             throw new MyError('mine');",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        ScriptError::Script("Employees.postQuery: MyError: mine".into())
    );
    // A microtask chain left running after the hook returned does not run into the next one.
    run(
        &pool,
        hook(
            "const spin = () => Promise.resolve().then(spin); spin(); return;",
            rows_input(json!([])),
        ),
    )
    .await
    .ok();
    let out = run(&pool, hook("rows.push('clean');", rows_input(json!([]))))
        .await
        .unwrap();
    assert_eq!(out["rows"], json!(["clean"]));
}

#[tokio::test]
async fn escapes_find_nothing() {
    let pool = Pool::new(1);
    let out = run(
        &pool,
        hook(
            "rows.push(typeof require, typeof process, typeof setTimeout, typeof std, typeof os);\n\
             const g = Function('return this')();\n\
             rows.push(Object.getOwnPropertyNames(g).filter(n => n.startsWith('__')).length);\n\
             try { await import('/etc/passwd'); rows.push('imported'); } catch (e) { rows.push('no import'); }\n\
             try { db.find = null; } catch (e) {}\n\
             rows.push(typeof db.find);",
            rows_input(json!([])),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        out["rows"],
        json!([
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            0,
            "no import",
            "function"
        ])
    );
}

#[tokio::test]
async fn functions_import_each_other() {
    let pool = Pool::new(1);
    let mut modules = Modules::new();
    modules.insert(
        "payroll/util".into(),
        compile(
            "functions/payroll/util.ts",
            "export const twice = (n: number): number => n * 2;",
            Kind::Module,
        )
        .unwrap()
        .into(),
    );
    modules.insert(
        "payroll/calc".into(),
        compile(
            "functions/payroll/calc.ts",
            "import type { X } from '@cloudio-saas/datasource-types';\n\
             import { twice } from './util.js';\n\
             export async function run(arg: {n: number}) { return {n: twice(arg.n), user: session.userName()}; }\n\
             let calls = 0;\n\
             export function count() { calls += 1; return calls; }",
            Kind::Module,
        )
        .unwrap()
        .into(),
    );
    let modules = Arc::new(modules);
    let call = |function: &str, arg: Json| Execution {
        program: Program::Function {
            modules: modules.clone(),
            module: "payroll/calc".into(),
            function: function.into(),
        },
        name: format!("payroll/calc.{function}"),
        request_id: None,
        session: SessionInfo {
            user_name: "steve".into(),
            ..Default::default()
        },
        input: json!({"arg": arg}),
        limits: Limits::FUNCTION,
    };
    let out = run(&pool, call("run", json!({"n": 21}))).await.unwrap();
    assert_eq!(out, json!({"n": 42, "user": "steve"}));
    // A module's top-level state is fresh for every call (the context is kept, the modules
    // are not), also past the point where the worker replaces its context.
    for _ in 0..70 {
        let out = run(&pool, call("count", json!(null))).await.unwrap();
        assert_eq!(out, json!(1));
    }
    let e = run(&pool, call("missing", json!(null))).await.unwrap_err();
    assert!(matches!(e, ScriptError::NotFound(_)), "{e:?}");
}

#[test]
fn syntax_errors_name_file_and_line() {
    let e = compile(
        "datasources/E.beforeInsert.js",
        "let a = 1;\nlet b = (;\n",
        Kind::Hook,
    )
    .unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.line),
        ("datasources/E.beforeInsert.js", 2)
    );
}

#[tokio::test]
async fn a_full_pool_answers_busy_after_the_wall_clock() {
    let pool = Pool::new(1);
    let mut slow = hook("while (true) {}", rows_input(json!([])));
    slow.limits.wall = Duration::from_millis(800);
    // One running: the pool is full.
    let mut first = pool.start(slow, false).await.unwrap();
    let mut quick = hook("rows.push(1);", rows_input(json!([])));
    quick.limits.wall = Duration::from_millis(100);
    let e = pool.start(quick.clone(), false).await.err().unwrap();
    assert_eq!(e, ScriptError::Busy);
    assert_eq!(pool.stats().busy, 1);
    // The slow one ends at its own wall clock (not at the slice it first ran on the caller's
    // thread), and then the pool takes work again.
    match first.next().await {
        Event::Done(Err(ScriptError::Script(m))) => assert!(m.contains("800 ms"), "{m}"),
        other => panic!("{other:?}"),
    }
    let out = run(&pool, quick).await.unwrap();
    assert_eq!(out["rows"], json!([1]));
}

#[tokio::test]
async fn executions_run_on_the_callers_thread_until_they_call_db_or_run_long() {
    let pool = Pool::new(1);
    // A pure hook runs whole on the caller's thread, every time.
    for _ in 0..3 {
        let out = run(
            &pool,
            hook("rows.push(rows.length);", rows_input(json!([]))),
        )
        .await
        .unwrap();
        assert_eq!(out["rows"], json!([0]));
    }
    assert_eq!(pool.stats().inline, 3);
    // One that calls `db` starts again on a thread, where its call is served once, and its
    // log line is written once; it runs there from then on.
    let body = "Logger.info('before'); rows.push(await db.find('X', {}));";
    for _ in 0..2 {
        let mut calls = 0;
        let out = run_with(&pool, hook(body, rows_input(json!([]))), |op, _| {
            calls += 1;
            assert_eq!(op, "find");
            Ok(json!(["found"]))
        })
        .await
        .unwrap();
        assert_eq!(out["rows"], json!([["found"]]));
        assert_eq!(calls, 1);
    }
    assert_eq!(pool.stats().inline, 3);
    // One that computes longer than the slice finishes on a thread, with its own wall clock.
    let long = "let x = 0; for (let i = 0; i < 3e6; i++) { x = (x + i) % 1000003; } rows.push(x);";
    let out = run(&pool, hook(long, rows_input(json!([])))).await.unwrap();
    assert!(out["rows"][0].is_number(), "{out}");
    let stats = pool.stats();
    assert_eq!((stats.inline, stats.ok, stats.failed), (3, 6, 0));
    // Caught by the script or not, a `db` call made on the caller's thread never counts.
    let sneaky = "db.find('X', {}).catch(() => {}); rows.push('done');";
    let mut calls = 0;
    let out = run_with(&pool, hook(sneaky, rows_input(json!([]))), |_, _| {
        calls += 1;
        Ok(json!([]))
    })
    .await
    .unwrap();
    assert_eq!((out["rows"].clone(), calls), (json!(["done"]), 1));
}

#[tokio::test]
async fn stateless_modules_share_one_instance_that_nothing_can_change() {
    let pool = Pool::new(1);
    let set = |answer: &str| {
        let mut m = Modules::new();
        m.insert(
            "calc".into(),
            compile(
                "functions/calc.js",
                &format!(
                    "const answer = '{answer}';\n\
                     export function get() {{ return answer; }}\n\
                     export function tamper() {{ get.hidden = 1; return 'changed'; }}\n\
                     export function peek() {{ return get.hidden === undefined; }}"
                ),
                Kind::Module,
            )
            .unwrap()
            .into(),
        );
        Arc::new(m)
    };
    let call = |modules: &Arc<Modules>, function: &str| Execution {
        program: Program::Function {
            modules: modules.clone(),
            module: "calc".into(),
            function: function.into(),
        },
        name: format!("calc.{function}"),
        request_id: None,
        session: SessionInfo::default(),
        input: json!({"arg": null}),
        limits: Limits::FUNCTION,
    };
    // Two apps (or one app before and after an update) with the same module name: each set
    // answers with its own code, also past the point where unshared calls replace the context.
    let (a, b) = (set("a"), set("b"));
    for _ in 0..80 {
        assert_eq!(run(&pool, call(&a, "get")).await.unwrap(), json!("a"));
        assert_eq!(run(&pool, call(&b, "get")).await.unwrap(), json!("b"));
    }
    // The shared functions are frozen: hanging state on one fails (modules are strict code),
    // and nothing was hung.
    let e = run(&pool, call(&a, "tamper")).await.unwrap_err();
    assert!(
        matches!(&e, ScriptError::Script(m) if m.contains("TypeError")),
        "{e:?}"
    );
    assert_eq!(run(&pool, call(&a, "peek")).await.unwrap(), json!(true));
}

#[tokio::test]
async fn a_rows_only_hook_gives_back_rows_and_skip_dml_alone() {
    let pool = Pool::new(1);
    let mut input = rows_input(json!([{"n": 1}]));
    input["rowsOnly"] = json!(true);
    let out = run(
        &pool,
        hook(
            "rows[0].n = query.filter.length + 2; skipDML = true;",
            input,
        ),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"rows": [{"n": 2}], "skipDML": true}));
}
