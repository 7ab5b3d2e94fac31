//! Script hooks and cloud functions through the real server, on both databases: every hook and
//! global, order and grouping, rollback of everything on a throw, limits with hostile scripts
//! while other requests are answered, grants inside `db`, no recursion, the sample scripts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Kind, Login, TestApp, TestDb, assert_envelope};
use crate::on_all;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hooks")
}

/// A server with the `hooks` fixture; admin holds `clerk` there, and `vic` holds `viewer`.
async fn spawn_with(kind: Kind, f: impl FnOnce(&mut server::Config)) -> TestApp {
    let db = TestDb::new(kind).await;
    let mut config = server::Config {
        app_dirs: vec![fixture()],
        ..db.config()
    };
    f(&mut config);
    let app = TestApp::spawn_on(db, config).await;
    app.state
        .store
        .grant_role("cloudio", "admin", "hooks", "clerk", "test")
        .await
        .unwrap();
    app.create_user("vic", "vic-password-1").await;
    app.state
        .store
        .grant_role("cloudio", "vic", "hooks", "viewer", "test")
        .await
        .unwrap();
    app
}

async fn spawn(kind: Kind) -> TestApp {
    spawn_with(kind, |_| {}).await
}

async fn ok(app: &TestApp, login: &Login, body: Value) -> Value {
    let (status, b) = app.api(login, &body).await;
    assert_eq!(status, 200, "{b}");
    b
}

async fn insert(app: &TestApp, login: &Login, rows: Value) -> (u16, Value) {
    app.api(login, &json!({"i": {"ds": "Items", "data": rows}}))
        .await
}

/// Audit messages, oldest first (through SQL behind the server, so no hook is involved).
async fn audit(app: &TestApp, login: &Login) -> Vec<String> {
    let b = ok(
        app,
        login,
        json!({"a": {"ds": "Audit", "query": {"limit": 1000}}}),
    )
    .await;
    b["data"]["a"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["msg"].as_str().unwrap().to_string())
        .collect()
}

async fn items(app: &TestApp, login: &Login) -> Vec<Value> {
    let b = ok(
        app,
        login,
        json!({"q": {"ds": "Items", "query": {"limit": 1000}}}),
    )
    .await;
    b["data"]["q"]["data"].as_array().unwrap().clone()
}

async fn call(app: &TestApp, login: &Login, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(&format!("/v1/fn/hooks/{path}?csrf={}", login.csrf)))
        .header("Authorization", format!("Bearer {}", login.jwt))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_script_error(status: u16, body: &Value, starts: &str) {
    assert_envelope(status, body, 400);
    assert_eq!(body["title"], "Script Error", "{body}");
    let m = body["message"].as_str().unwrap();
    assert!(m.starts_with(starts), "{m}");
}

on_all!(query_hooks_change_query_and_rows, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    let (s, b) = insert(
        &app,
        &admin,
        json!([{"_rs": "I", "name": "a", "qty": 5}, {"_rs": "I", "name": "b", "qty": 20}]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // postQuery adds a computed attribute to every row.
    let b = ok(&app, &admin, json!({"q": {"ds": "Items", "query": {}}})).await;
    let rows = b["data"]["q"]["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["label"], "a#5");
    assert_eq!(rows[0]["_rs"], "Q");
    // preQuery narrows the query.
    let b = ok(
        &app,
        &admin,
        json!({"q": {"ds": "Items", "query": {"params": {"big": true}, "count": true}}}),
    )
    .await;
    assert_eq!(b["data"]["q"]["data"][0]["label"], "b#20");
    assert_eq!(b["data"]["q"]["rowsFetched"], 1);
    assert_eq!(b["data"]["q"]["totalCount"], 1);
    // preQuery answers without SQL; postQuery still runs.
    let b = ok(
        &app,
        &admin,
        json!({"q": {"ds": "Items", "query": {"params": {"skip": true}}}}),
    )
    .await;
    assert_eq!(
        b["data"]["q"]["data"],
        json!([{"name": "virtual", "qty": 0, "label": "virtual#0", "_rs": "Q"}])
    );
    // postQuery removes a row: rowsFetched counts the rows answered.
    let b = ok(
        &app,
        &admin,
        json!({"q": {"ds": "Items", "query": {"params": {"drop": true}}}}),
    )
    .await;
    assert_eq!(b["data"]["q"]["rowsFetched"], 1);
    assert_eq!(b["data"]["q"]["data"][0]["name"], "b");
});

on_all!(post_hooks_run_grouped_and_in_order, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    let (s, b) = insert(&app, &admin, json!([{"_rs": "I", "name": "x", "qty": 1}])).await;
    assert_eq!(s, 200, "{b}");
    let row = &b["data"]["i"]["data"][0];
    // beforeInsert's change is what was written; afterInsert's is what is answered.
    assert_eq!(row["note"], "checked");
    assert_eq!(row["after"], true);
    let id = row["itemId"].clone();
    let stamp = row["lastUpdateDate"].clone();
    let (s, b) = insert(&app, &admin, json!([{"_rs": "I", "name": "y", "qty": 2}])).await;
    assert_eq!(s, 200, "{b}");
    let y = b["data"]["i"]["data"][0].clone();
    let body = json!({"p": {"ds": "Items", "data": [
        {"_rs": "D", "itemId": y["itemId"], "lastUpdateDate": y["lastUpdateDate"]},
        {"_rs": "I", "name": "z", "qty": 3},
        {"_rs": "U", "itemId": id, "lastUpdateDate": stamp, "qty": 9},
        {"_rs": "I", "name": "w", "qty": 4}
    ]}});
    let b = ok(&app, &admin, body).await;
    assert_eq!(b["data"]["p"]["rowsPosted"], 4);
    let log = audit(&app, &admin).await;
    // Other datasources' hooks run for a hook's db calls (Audit's adds "!").
    assert_eq!(
        log[4..],
        [
            "beforeInsert:2!",
            "beforeUpdate:1!",
            "beforeDelete:1!",
            "afterInsert:2!",
            "afterUpdate:1!",
            "afterDelete:1!"
        ]
    );
    let names: Vec<Value> = items(&app, &admin)
        .await
        .iter()
        .map(|r| json!([r["name"], r["qty"]]))
        .collect();
    assert_eq!(
        names,
        vec![json!(["x", 9]), json!(["z", 3]), json!(["w", 4])]
    );
});

on_all!(a_throw_rolls_back_everything, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    // UserError: 400 Invalid Request with the message exactly.
    let (s, b) = insert(
        &app,
        &admin,
        json!([{"_rs": "I", "name": "neg", "qty": -1}]),
    )
    .await;
    assert_envelope(s, &b, 400);
    assert_eq!(b["title"], "Invalid Request");
    assert_eq!(b["message"], "Quantity must be positive");
    // An after hook fails after the row and two audit rows were written: nothing stays.
    let (s, b) = insert(
        &app,
        &admin,
        json!([{"_rs": "I", "name": "ok", "qty": 1}, {"_rs": "I", "name": "boom", "qty": 1}]),
    )
    .await;
    assert_script_error(s, &b, "Items.afterInsert: Error: after failed");
    // A UserError thrown by a hook further down stays a UserError.
    let (s, b) = insert(&app, &admin, json!([{"_rs": "I", "name": "audit-refuses"}])).await;
    assert_envelope(s, &b, 400);
    assert_eq!(b["title"], "Invalid Request");
    assert_eq!(b["message"], "Audit refused");
    // Any other exception names the app's datasource and hook.
    let (s, b) = insert(&app, &admin, json!([{"_rs": "I", "name": "crash"}])).await;
    assert_script_error(s, &b, "Items.beforeInsert: TypeError");
    assert!(items(&app, &admin).await.is_empty());
    assert!(audit(&app, &admin).await.is_empty());
    // And a later request works normally.
    let (s, _) = insert(&app, &admin, json!([{"_rs": "I", "name": "fine"}])).await;
    assert_eq!(s, 200);
});

on_all!(skip_dml_writes_nothing_but_answers, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    let (s, b) = insert(
        &app,
        &admin,
        json!([{"_rs": "I", "name": "skip", "qty": 1}]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let row = &b["data"]["i"]["data"][0];
    assert_eq!(row["name"], "skip");
    assert_eq!(row["note"], "checked");
    assert_eq!(row["after"], true);
    assert!(items(&app, &admin).await.is_empty());
});

on_all!(db_calls_keep_grants_and_limits, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    // A datasource the user may not use is an error inside the script.
    let (s, b) = app
        .api(
            &admin,
            &json!({"q": {"ds": "Items", "query": {"params": {"secret": true}}}}),
        )
        .await;
    assert_script_error(s, &b, "Items.preQuery: Error: Access Denied");
    assert!(!b.to_string().contains("hidden"));
    // The 101st db call fails.
    let (s, b) = app
        .api(
            &admin,
            &json!({"q": {"ds": "Items", "query": {"params": {"calls": 101}}}}),
        )
        .await;
    assert_script_error(s, &b, "Items.preQuery: Error: at most 100 db calls");
    let b = ok(
        &app,
        &admin,
        json!({"q": {"ds": "Items", "query": {"params": {"calls": 100}}}}),
    )
    .await;
    assert_eq!(b["data"]["q"]["rowsFetched"], 0);
});

on_all!(no_recursion_into_the_same_datasource, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    let (s, b) = insert(
        &app,
        &admin,
        json!([{"_rs": "I", "name": "copy", "qty": 7}]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let names: Vec<Value> = items(&app, &admin)
        .await
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("copy"), json!("copied")]);
    // The copy's insert ran no Items hooks: only the original's two audit rows exist.
    assert_eq!(
        audit(&app, &admin).await,
        ["beforeInsert:1!", "afterInsert:1!"]
    );
});

on_all!(
    an_endless_loop_is_stopped_and_others_are_served,
    |kind| async move {
        // The app's own limit (`[scripts.apps.hooks]`) wins over the global one.
        let app = spawn_with(kind, |c| {
            c.scripts.apps.insert(
                "hooks".into(),
                server::config::AppScriptLimits {
                    hook_timeout_ms: Some(300),
                    ..Default::default()
                },
            );
        })
        .await;
        let admin = app.admin().await;
        let started = Instant::now();
        let looping = app.api_in_background(
            &admin,
            json!({"i": {"ds": "Items", "data": [{"_rs": "I", "name": "loop"}]}}),
        );
        // Meanwhile other requests are answered.
        for _ in 0..5 {
            let t = Instant::now();
            let (s, _) = app
                .api(&admin, &json!({"a": {"ds": "Audit", "query": {}}}))
                .await;
            assert_eq!(s, 200);
            assert!(
                t.elapsed() < Duration::from_millis(250),
                "{:?}",
                t.elapsed()
            );
        }
        let (s, b) = looping.await.unwrap();
        assert_script_error(
            s,
            &b,
            "Items.beforeInsert: the script ran longer than its limit",
        );
        let took = started.elapsed();
        assert!(took < Duration::from_millis(300 + 700), "{took:?}");
        assert!(items(&app, &admin).await.is_empty());
        // A query hook spinning in a read transaction ends the same way.
        let (s, b) = app
            .api(
                &admin,
                &json!({"q": {"ds": "Items", "query": {"params": {"spin": true}}}}),
            )
            .await;
        assert_script_error(s, &b, "Items.preQuery: the script ran longer");
    }
);

on_all!(
    memory_and_stack_limits_fail_the_request_not_the_server,
    |kind| async move {
        let app = spawn_with(kind, |c| c.scripts.memory_limit_mib = 16).await;
        let admin = app.admin().await;
        let q = |p: Value| json!({"q": {"ds": "Items", "query": {"params": p}}});
        let (s, b) = app.api(&admin, &q(json!({"hog": true}))).await;
        assert_script_error(s, &b, "Items.preQuery: ");
        let (s, b) = app.api(&admin, &q(json!({"deep": true}))).await;
        assert_script_error(
            s,
            &b,
            "Items.preQuery: RangeError: Maximum call stack size exceeded",
        );
        // Logging works and the server goes on.
        let b = ok(&app, &admin, q(json!({"log": true}))).await;
        assert_eq!(b["data"]["q"]["rowsFetched"], 0);
        let metrics = app.metrics_text().await;
        assert!(
            metrics.contains("cloudio_script_executions_total{outcome=\"error\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("cloudio_script_limit_hits_total 2"),
            "{metrics}"
        );
    }
);

on_all!(
    functions_run_with_grants_and_their_own_transaction,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let vic = app.login("vic", "vic-password-1").await;
        insert(
            &app,
            &admin,
            json!([{"_rs": "I", "name": "a", "qty": 5}, {"_rs": "I", "name": "b", "qty": 20}]),
        )
        .await;
        let (s, b) = call(&app, &vic, "payroll/calc/summary", json!({"min": 1})).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(
            b,
            json!({"status": "OK", "data": {"count": 2, "total": 25, "user": "vic"}})
        );
        // Granted only `summary`: 403 for the rest, before looking the function up.
        let (s, b) = call(&app, &vic, "payroll/calc/write", json!({"name": "v"})).await;
        assert_envelope(s, &b, 403);
        let (s, b) = call(&app, &vic, "payroll/nothing/x", json!({})).await;
        assert_envelope(s, &b, 403);
        // Granted but missing: 404.
        let (s, b) = call(&app, &admin, "payroll/calc/missing", json!({})).await;
        assert_envelope(s, &b, 404);
        let (s, b) = call(&app, &admin, "payroll/calc/notAFunction", json!({})).await;
        assert_envelope(s, &b, 404);
        // One transaction per call: a throw after a write leaves nothing.
        let (s, b) = call(
            &app,
            &admin,
            "payroll/calc/write",
            json!({"name": "t", "fail": true}),
        )
        .await;
        assert_envelope(s, &b, 400);
        assert_eq!(b["message"], "refused after writing t");
        assert_eq!(items(&app, &admin).await.len(), 2);
        let (s, b) = call(&app, &admin, "payroll/calc/write", json!({"name": "t"})).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(
            b["data"]["note"], "checked",
            "Items' hooks run for a function's db calls"
        );
        assert_eq!(items(&app, &admin).await.len(), 3);
    }
);

on_all!(the_sample_scripts_run_as_written, |kind| async move {
    // A local "external" REST service for db.fetch.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: String| async move {
            axum::Json(json!({"received": serde_json::from_str::<Value>(&body).unwrap()}))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, service).await });
    let app = spawn_with(kind, |c| {
        c.scripts.fetch_allow = vec![format!("127.0.0.1:{port}")]
    })
    .await;
    let admin = app.admin().await;
    let (s, b) = call(
        &app,
        &admin,
        "samples/insert",
        json!({"name": "bolt", "qty": 3}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // A JS Date becomes the UTC date of a Date attribute.
    assert_eq!(b["data"]["madeOn"], "2024-02-29");
    let id = b["data"]["partId"].clone();
    call(
        &app,
        &admin,
        "samples/insert",
        json!({"name": "nut", "qty": 1}),
    )
    .await;
    let (s, b) = call(&app, &admin, "samples/fetchMany", json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    let (_, b) = call(&app, &admin, "samples/fetchOne", json!({"name": "nut"})).await;
    assert_eq!(b["data"]["qty"], 1);
    let (s, b) = call(&app, &admin, "samples/madeOn", json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 2, "{b}");
    let (_, b) = call(&app, &admin, "samples/fetchOne", json!({"name": "none"})).await;
    assert_eq!(b["data"], Value::Null);
    let (s, b) = call(&app, &admin, "samples/duplicate", json!({"partId": id})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["name"], "bolt (copy)");
    assert_ne!(b["data"]["partId"], id);
    let (s, b) = call(&app, &admin, "samples/refuse", json!({})).await;
    assert_envelope(s, &b, 400);
    assert_eq!(b["message"], "Parts cannot be archived on weekends");
    let (s, b) = call(
        &app,
        &admin,
        "samples/external",
        json!({"url": format!("http://127.0.0.1:{port}/echo")}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["data"],
        json!({"status": 200, "body": {"received": {"ping": 1}}})
    );
    // A host outside the allow-list is refused.
    let (s, b) = call(
        &app,
        &admin,
        "samples/external",
        json!({"url": "http://localhost:9/echo"}),
    )
    .await;
    assert_script_error(
        s,
        &b,
        "samples.external: Error: db.fetch: host `localhost` is not in the allow-list",
    );
    let (s, b) = call(&app, &admin, "samples/sql", json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["data"]["rows"],
        json!([{"name": "bolt", "qty": 3}, {"name": "bolt (copy)", "qty": 3}])
    );
    assert_eq!(b["data"]["count"], "3");
    assert_eq!(b["data"]["changed"], 2);
    let (s, b) = call(&app, &admin, "samples/parallel", json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["items"], 3);
});

on_all!(
    a_script_that_does_not_compile_fails_the_load,
    |kind| async move {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture(), dir.path());
        std::fs::write(
            dir.path().join("datasources/Items.postQuery.js"),
            "for (const r of rows) {\n  r.x = ;\n}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("datasources/Items.preQuery.ts"), "return;").unwrap();
        let db = TestDb::new(kind).await;
        let config = server::Config {
            app_dirs: vec![dir.path().to_path_buf()],
            ..db.config()
        };
        let Err(e) = server::Server::build(config, None).await else {
            panic!("the load should fail");
        };
        let e = format!("{e:?}");
        assert!(e.contains("datasources/Items.postQuery.js:2"), "{e}");
        assert!(
            e.contains("Items.preQuery.js and datasources/Items.preQuery.ts"),
            "{e}"
        );
    }
);

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

on_all!(
    a_client_hanging_up_frees_its_scripts_runtime_at_once,
    |kind| async move {
        // An "external" service that accepts and never answers: the function waits on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let app = spawn_with(kind, |c| {
            c.scripts.fetch_allow = vec![format!("127.0.0.1:{port}")];
            c.scripts.workers = 1;
        })
        .await;
        let admin = app.admin().await;
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let hung_up = impatient
            .post(app.url(&format!(
                "/v1/fn/hooks/samples/external?csrf={}",
                admin.csrf
            )))
            .header("Authorization", format!("Bearer {}", admin.jwt))
            .header("content-type", "application/json")
            .body(json!({"url": format!("http://127.0.0.1:{port}/echo")}).to_string())
            .send()
            .await;
        assert!(hung_up.is_err(), "the client gave up: {hung_up:?}");
        let gone = Instant::now();
        // The one runtime comes back as soon as the server drops the request, not at the
        // function's wall clock (30 s) or db.fetch's timeout (10 s).
        while app.state.engine.scripts.busy() > 0 {
            assert!(
                gone.elapsed() < Duration::from_secs(3),
                "the runtime is still taken {:?} after the client hung up",
                gone.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (s, b) = call(&app, &admin, "samples/fetchMany", json!({})).await;
        assert_eq!(s, 200, "{b}");
    }
);
