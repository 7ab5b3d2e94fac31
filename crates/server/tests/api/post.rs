//! The post API: I/U/D rows, WHO columns, key generation, type checks, optimistic locking,
//! one transaction per request, permissions per action, and administration through IoUsers.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_all;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/posts")
}

/// A server with the demo app and the `posts` fixture; admin holds `writer` in `posts`.
async fn spawn(kind: Kind) -> TestApp {
    let db = TestDb::new(kind).await;
    let config = server::Config {
        demo: true,
        app_dirs: vec![fixture()],
        ..db.config()
    };
    let app = TestApp::spawn_on(db, config).await;
    app.state
        .store
        .grant_role("cloudio", "admin", "posts", "writer", "test")
        .await
        .unwrap();
    app
}

async fn ok(app: &TestApp, login: &Login, body: Value) -> Value {
    let (status, b) = app.api(login, &body).await;
    assert_eq!(status, 200, "{b}");
    b
}

async fn count(app: &TestApp, login: &Login, ds: &str) -> i64 {
    let b = ok(
        app,
        login,
        json!({"c": {"ds": ds, "query": {"count": true, "limit": 0}}}),
    )
    .await;
    b["data"]["c"]["totalCount"].as_i64().unwrap()
}

/// Sends `body(i)` for each `i` in `0..n` at once, each from its own task and connection;
/// the answers `(i, status, body)` in the order they completed.
async fn api_concurrently(
    app: &TestApp,
    login: &Login,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<(usize, u16, Value)> {
    let url = app.url(&format!("/v1/api?csrf={}", login.csrf));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (client, url, jwt, body) =
            (app.client.clone(), url.clone(), login.jwt.clone(), body(i));
        tasks.spawn(async move {
            let r = client
                .post(url)
                .header("Authorization", format!("Bearer {jwt}"))
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            (i, status, r.json::<Value>().await.expect("json"))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        out.push(done.expect("task"));
    }
    out
}

fn is_micros_utc(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 27 && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

on_all!(
    the_documented_insert_returns_the_key_and_who_columns,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let b = ok(
        &app,
        &admin,
        json!({"EmployeesAlias": {"ds": "Employees", "data": [
            {"_rs": "I", "name": "Steve", "createdBy": "mallory", "creationDate": "2000-01-01T00:00:00Z",
             "lastUpdateDate": "2000-01-01T00:00:00Z"}]}}),
    )
    .await;
        assert_eq!(b["status"], "OK");
        let rows = b["data"]["EmployeesAlias"]["data"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row["_rs"], "Q");
        assert_eq!(row["name"], "Steve");
        assert_eq!(
            row["empId"], 1001,
            "the demo holds 1..=1000; the database makes the next key"
        );
        assert_eq!(row["createdBy"], "admin");
        assert_eq!(row["lastUpdatedBy"], "admin");
        assert!(is_micros_utc(&row["creationDate"]), "{row}");
        assert_eq!(row["creationDate"], row["lastUpdateDate"]);
        assert_ne!(row["creationDate"], "2000-01-01T00:00:00.000000Z");
        // It is really there.
        let q = ok(
            &app,
            &admin,
            json!({"q": {"ds": "Employees", "query": {"filter": [{"empId": {"eq": 1001}}]}}}),
        )
        .await;
        assert_eq!(q["data"]["q"]["data"][0], *row);
        app.stop().await;
    }
);

on_all!(
    updates_keep_creation_who_and_ignore_read_only_values,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let ins = ok(&app, &admin, json!({"e": {"ds": "Employees", "data": [{"_rs": "I", "name": "Ann", "badge": "B-1", "salary": 10}]}})).await;
        let row = ins["data"]["e"]["data"][0].clone();
        app.create_user("editor", "pw").await;
        app.state
            .store
            .grant_role("cloudio", "editor", "demo", "demo_user", "t")
            .await
            .unwrap();
        let editor = app.login("editor", "pw").await;
        let upd = ok(
        &app,
        &editor,
        json!({"e": {"ds": "Employees", "data": [{"_rs": "U", "empId": row["empId"], "salary": 20, "badge": "B-2",
               "name": "Anne", "createdBy": "x", "lastUpdateDate": row["lastUpdateDate"]}]}}),
    )
    .await;
        let new = &upd["data"]["e"]["data"][0];
        assert_eq!(new["salary"], 20.0);
        assert_eq!(new["name"], "Anne");
        assert_eq!(new["badge"], "B-1", "badge is not updatable");
        assert_eq!(new["createdBy"], "admin");
        assert_eq!(new["creationDate"], row["creationDate"]);
        assert_eq!(new["lastUpdatedBy"], "editor");
        assert!(new["lastUpdateDate"].as_str().unwrap() > row["lastUpdateDate"].as_str().unwrap());
        // Deleting returns the row as it was.
        let del = ok(&app, &admin, json!({"e": {"ds": "Employees", "data": [{"_rs": "D", "empId": row["empId"], "lastUpdateDate": new["lastUpdateDate"]}]}})).await;
        assert_eq!(del["data"]["e"]["data"][0], *new);
        assert_eq!(count(&app, &admin, "Employees").await, 1000);
        app.stop().await;
    }
);

on_all!(key_generation_uuid_and_none, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    let b = ok(&app, &admin, json!({"c": {"ds": "Contacts", "data": [{"_rs": "I", "name": "A", "contactId": "client-made"}]}})).await;
    let id = b["data"]["c"]["data"][0]["contactId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "server-made uuid, client value ignored: {id}"
    );
    let (s, e) = app
        .api(
            &admin,
            &json!({"n": {"ds": "Notes", "data": [{"_rs": "I", "body": "no key"}]}}),
        )
        .await;
    assert_envelope(s, &e, 400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`noteCode` is required"),
        "{e}"
    );
    ok(
        &app,
        &admin,
        json!({"n": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "k1", "body": "x"}]}}),
    )
    .await;
    let (s, e) = app
        .api(
            &admin,
            &json!({"n": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "k1"}]}}),
        )
        .await;
    assert_envelope(s, &e, 409);
    app.stop().await;
});

on_all!(every_type_is_checked_and_named, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    let good = json!({"_rs": "I", "name": "Typed", "age": 42, "score": 1.5, "vip": "Y", "email": "a@b.io",
        "phone": "+1 (555) 010-2000", "homepage": "https://example.com/x", "birthday": "1990-02-28",
        "seenAt": "2024-05-30T06:19:41.483732+02:00", "verified": true, "extra": {"k": [1, "two"]}});
    let b = ok(
        &app,
        &admin,
        json!({"c": {"ds": "Contacts", "data": [good.clone()]}}),
    )
    .await;
    let row = &b["data"]["c"]["data"][0];
    assert_eq!(row["age"], 42);
    assert_eq!(row["score"], 1.5);
    assert_eq!(row["birthday"], "1990-02-28");
    assert_eq!(
        row["seenAt"], "2024-05-30T04:19:41.483732Z",
        "normalised to UTC, six digits"
    );
    assert_eq!(row["verified"], true);
    assert_eq!(row["extra"], json!({"k": [1, "two"]}));
    let bad: Vec<(&str, Value)> = vec![
        ("age", json!("42")),
        ("age", json!(1.5)),
        ("age", json!(9_223_372_036_854_775_808u64)),
        ("score", json!("x")),
        ("vip", json!("yes")),
        ("email", json!("not-an-email")),
        ("phone", json!("call me")),
        ("homepage", json!("javascript:alert(1)")),
        ("birthday", json!("28/02/1990")),
        ("birthday", json!("1990-02-30")),
        ("seenAt", json!("yesterday")),
        ("verified", json!("true")),
        ("name", json!("x".repeat(41))),
        ("name", json!(null)),
    ];
    for (attr, v) in bad {
        let mut row = good.clone();
        row[attr] = v.clone();
        let (s, e) = app.api(&admin, &json!({"first": {"ds": "Notes", "data": []}, "c": {"ds": "Contacts", "data": [good.clone(), row]}})).await;
        assert_envelope(s, &e, 400);
        let m = e["message"].as_str().unwrap();
        assert!(
            m.starts_with("c: row 1: ") && m.contains(&format!("`{attr}`")),
            "{attr}={v}: {m}"
        );
    }
    let mut extra = good.clone();
    extra["nickname"] = json!("x");
    let (s, e) = app
        .api(&admin, &json!({"c": {"ds": "Contacts", "data": [extra]}}))
        .await;
    assert_envelope(s, &e, 400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown attribute `nickname`"),
        "{e}"
    );
    assert_eq!(
        count(&app, &admin, "Contacts").await,
        1,
        "nothing from the failed requests"
    );
    app.stop().await;
});

on_all!(
    a_failing_row_rolls_back_the_whole_request,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        // Invalid last row: refused before any SQL.
        let mut rows: Vec<Value> = (0..999)
            .map(|i| json!({"_rs": "I", "name": format!("Bulk {i}")}))
            .collect();
        rows.push(json!({"_rs": "I", "salary": 1}));
        let (s, e) = app
            .api(&admin, &json!({"e": {"ds": "Employees", "data": rows}}))
            .await;
        assert_envelope(s, &e, 400);
        assert!(e["message"].as_str().unwrap().contains("row 999"), "{e}");
        // A last row the database refuses (a duplicate key) after 999 inserts ran.
        let mut rows: Vec<Value> = (0..999)
            .map(|i| json!({"_rs": "I", "noteCode": format!("n{i}")}))
            .collect();
        rows.push(json!({"_rs": "I", "noteCode": "n0"}));
        let (s, e) = app.api(&admin, &json!({"e": {"ds": "Employees", "data": [{"_rs": "I", "name": "Before"}]}, "n": {"ds": "Notes", "data": rows}})).await;
        assert_envelope(s, &e, 409);
        assert!(
            e["message"].as_str().unwrap().starts_with("n: row 999"),
            "{e}"
        );
        assert_eq!(count(&app, &admin, "Notes").await, 0);
        assert_eq!(count(&app, &admin, "Employees").await, 1000);
        // A stale update after an insert in the same request also undoes the insert.
        let (s, _) = app.api(&admin, &json!({
        "a": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "kept?"}]},
        "b": {"ds": "Employees", "data": [{"_rs": "U", "empId": 1, "salary": 1, "lastUpdateDate": "1999-01-01T00:00:00Z"}]}})).await;
        assert_eq!(s, 409);
        assert_eq!(count(&app, &admin, "Notes").await, 0);
        app.stop().await;
    }
);

on_all!(
    mixed_rows_across_datasources_then_queries_that_see_them,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let first = ok(&app, &admin, json!({"q": {"ds": "Employees", "query": {"filter": [{"empId": {"in": [1, 2]}}], "sort": {"empId": 1}}}})).await;
        let (one, two) = (
            first["data"]["q"]["data"][0].clone(),
            first["data"]["q"]["data"][1].clone(),
        );
        let b = ok(
            &app,
            &admin,
            json!({
        "seen": {"ds": "Employees", "query": {"filter": [{"name": {"is": "Zed"}}]}},
        "emp": {"ds": "Employees", "data": [
            {"_rs": "I", "name": "Zed"},
            {"_rs": "U", "empId": 1, "salary": 1, "lastUpdateDate": one["lastUpdateDate"]},
            {"_rs": "D", "empId": 2, "lastUpdateDate": two["lastUpdateDate"]}]},
        "notes": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "x", "body": "hello"}]}}),
        )
        .await;
        let keys: Vec<&String> = b["data"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["seen", "emp", "notes"],
            "answers keep the request's alias order"
        );
        assert_eq!(b["data"]["emp"]["data"].as_array().unwrap().len(), 3);
        assert_eq!(
            b["data"]["seen"]["rowsFetched"], 1,
            "queries run after the posts"
        );
        assert_eq!(b["data"]["notes"]["data"][0]["body"], "hello");
        assert_eq!(count(&app, &admin, "Employees").await, 1000);
        app.stop().await;
    }
);

on_all!(
    optimistic_locking_404_409_and_required_lock_fields,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let q = ok(
            &app,
            &admin,
            json!({"q": {"ds": "Employees", "query": {"filter": [{"empId": {"eq": 5}}]}}}),
        )
        .await;
        let lud = q["data"]["q"]["data"][0]["lastUpdateDate"].clone();
        // Millisecond precision from the client is the same instant when it is.
        let (s, e) = app.api(&admin, &json!({"e": {"ds": "Employees", "data": [{"_rs": "U", "empId": 5, "salary": 1, "lastUpdateDate": "2026-01-01T00:00:00.000Z"}]}})).await;
        assert_eq!(s, 200, "{e}");
        let (s, e) = app.api(&admin, &json!({"e": {"ds": "Employees", "data": [{"_rs": "U", "empId": 5, "salary": 2, "lastUpdateDate": lud}]}})).await;
        assert_envelope(s, &e, 409);
        assert_eq!(e["title"], "Conflict");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("e: row 0 (empId=5)"),
            "{e}"
        );
        let (s, e) = app.api(&admin, &json!({"e": {"ds": "Employees", "data": [{"_rs": "D", "empId": 4242, "lastUpdateDate": lud}]}})).await;
        assert_envelope(s, &e, 404);
        for row in [
            json!({"_rs": "U", "salary": 1, "lastUpdateDate": lud}),
            json!({"_rs": "D", "empId": 5}),
            json!({"_rs": "Q", "empId": 5}),
            json!({"empId": 5}),
        ] {
            let (s, e) = app
                .api(&admin, &json!({"e": {"ds": "Employees", "data": [row]}}))
                .await;
            assert_envelope(s, &e, 400);
        }
        app.stop().await;
    }
);

on_all!(each_action_needs_its_grant, |kind| async move {
    let app = spawn(kind).await;
    app.create_user("reader", "pw").await;
    app.state
        .store
        .grant_role("cloudio", "reader", "posts", "reader", "t")
        .await
        .unwrap();
    app.create_user("inserter", "pw").await;
    app.state
        .store
        .grant_role("cloudio", "inserter", "posts", "inserter", "t")
        .await
        .unwrap();
    let reader = app.login("reader", "pw").await;
    let inserter = app.login("inserter", "pw").await;
    let admin = app.admin().await;
    let b = ok(
        &app,
        &admin,
        json!({"c": {"ds": "Contacts", "data": [{"_rs": "I", "name": "Target"}]}}),
    )
    .await;
    let target = b["data"]["c"]["data"][0].clone();
    let upd = json!({"_rs": "U", "contactId": target["contactId"], "name": "x", "lastUpdateDate": target["lastUpdateDate"]});
    let del = json!({"_rs": "D", "contactId": target["contactId"], "lastUpdateDate": target["lastUpdateDate"]});
    for (who, row, expected) in [
        (&reader, json!({"_rs": "I", "name": "n"}), 403),
        (&reader, upd.clone(), 403),
        (&reader, del.clone(), 403),
        (&inserter, json!({"_rs": "I", "name": "n"}), 200),
        (&inserter, upd.clone(), 403),
        (&inserter, del.clone(), 403),
    ] {
        let (s, e) = app
            .api(who, &json!({"c": {"ds": "Contacts", "data": [row]}}))
            .await;
        assert_eq!(s, expected, "{e}");
        if expected == 403 {
            assert_eq!(e["title"], "Access Denied");
        }
    }
    // Notes: the inserter holds no grant at all.
    let (s, _) = app
        .api(
            &inserter,
            &json!({"n": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "z"}]}}),
        )
        .await;
    assert_eq!(s, 403);
    app.stop().await;
});

on_all!(
    administration_through_io_users_and_io_user_roles,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let b = ok(&app, &admin, json!({"u": {"ds": "IoUsers", "data": [{"_rs": "I", "orgUid": "cloudio", "userName": "carol",
        "displayName": "Carol", "emailAddress": "carol@example.com", "password": "carol-pw-1"}]}})).await;
        let carol = b["data"]["u"]["data"][0].clone();
        assert!(carol.get("password").is_none(), "{carol}");
        assert!(!b.to_string().contains("argon2"), "no hash in responses");
        let all = ok(&app, &admin, json!({"u": {"ds": "IoUsers", "query": {}}})).await;
        assert!(
            !all.to_string().contains("argon2") && !all.to_string().contains("password"),
            "{all}"
        );
        let (s, _) = app
            .api(
                &admin,
                &json!({"u": {"ds": "IoUsers", "query": {"projection": {"password": 1}}}}),
            )
            .await;
        assert_eq!(s, 400);
        let session = app.login("carol", "carol-pw-1").await;
        // A name the `Token` header cannot carry is refused, and nothing is written.
        for bad in ["ca:rol", "line\nbreak"] {
            let (s, b) = app
                .api(&admin, &json!({"u": {"ds": "IoUsers", "data": [{"_rs": "I", "orgUid": "cloudio", "userName": bad, "password": "pw-123456"}]}}))
                .await;
            assert_eq!(s, 400, "{b}");
            assert!(b["message"].as_str().unwrap().contains("userName"), "{b}");
        }
        // Grant a role through IoUserRoles: it shows in the session at once.
        ok(&app, &admin, json!({"r": {"ds": "IoUserRoles", "data": [{"_rs": "I", "orgUid": "cloudio", "userName": "carol", "appUid": "demo", "roleUid": "demo_user"}]}})).await;
        let (s, me) = app.session(&session.jwt, &session.csrf).await;
        assert_eq!(s, 200);
        assert_eq!(me["roles"]["demo"], json!(["demo_user"]));
        ok(
            &app,
            &session,
            json!({"q": {"ds": "Employees", "query": {"limit": 1}}}),
        )
        .await;
        // Change the password: the old session ends at once, the new password works.
        let b = ok(&app, &admin, json!({"u": {"ds": "IoUsers", "data": [{"_rs": "U", "userId": carol["userId"], "password": "carol-pw-2", "lastUpdateDate": carol["lastUpdateDate"]}]}})).await;
        let carol = b["data"]["u"]["data"][0].clone();
        assert_eq!(app.session(&session.jwt, &session.csrf).await.0, 401);
        assert_eq!(app.login_response("carol", "carol-pw-1").await.0, 403);
        let session = app.login("carol", "carol-pw-2").await;
        // Disable: the session ends at once and login is refused.
        ok(&app, &admin, json!({"u": {"ds": "IoUsers", "data": [{"_rs": "U", "userId": carol["userId"], "enabledFlag": "N", "lastUpdateDate": carol["lastUpdateDate"]}]}})).await;
        assert_eq!(app.session(&session.jwt, &session.csrf).await.0, 401);
        assert_eq!(app.login_response("carol", "carol-pw-2").await.0, 403);
        // A user without `administrator` cannot touch IoUsers.
        app.create_user("dave", "pw").await;
        let dave = app.login("dave", "pw").await;
        let (s, _) = app
            .api(&dave, &json!({"u": {"ds": "IoUsers", "query": {}}}))
            .await;
        assert_eq!(s, 403);
        app.stop().await;
    }
);

on_all!(
    concurrent_updates_of_one_row_never_lose_an_update,
    |kind| async move {
        let app = spawn(kind).await;
        let admin = app.admin().await;
        let a = app.login("admin", ADMIN_PASSWORD).await;
        let b = app.login("admin", ADMIN_PASSWORD).await;
        for round in 0..50 {
            let q = ok(
                &app,
                &admin,
                json!({"q": {"ds": "Employees", "query": {"filter": [{"empId": {"eq": 7}}]}}}),
            )
            .await;
            let lud = q["data"]["q"]["data"][0]["lastUpdateDate"].clone();
            let body = |salary: i64| json!({"e": {"ds": "Employees", "data": [{"_rs": "U", "empId": 7, "salary": salary, "lastUpdateDate": lud}]}});
            let (body_a, body_b) = (body(100_000 + round), body(200_000 + round));
            let (ra, rb) = tokio::join!(app.api(&a, &body_a), app.api(&b, &body_b));
            let mut statuses = [ra.0, rb.0];
            statuses.sort();
            assert_eq!(statuses, [200, 409], "round {round}: {ra:?} {rb:?}");
            let winner = if ra.0 == 200 {
                100_000 + round
            } else {
                200_000 + round
            };
            let q = ok(
                &app,
                &admin,
                json!({"q": {"ds": "Employees", "query": {"filter": [{"empId": {"eq": 7}}]}}}),
            )
            .await;
            assert_eq!(
                q["data"]["q"]["data"][0]["salary"],
                json!(winner as f64),
                "round {round}"
            );
        }
        app.stop().await;
    }
);

on_all!(malformed_post_bodies_are_400, |kind| async move {
    let app = spawn(kind).await;
    let admin = app.admin().await;
    for body in [
        json!({"e": {"ds": "Employees", "data": {"_rs": "I"}}}),
        json!({"e": {"ds": "Employees", "data": ["row"]}}),
        json!({"e": {"ds": "Employees", "data": [], "query": {}}}),
        json!({"e": {"ds": "Employees", "data": [], "extra": 1}}),
    ] {
        let (s, e) = app.api(&admin, &body.clone()).await;
        assert_envelope(s, &e, 400);
        assert!(
            e["message"].as_str().unwrap().starts_with("e: "),
            "{body}: {e}"
        );
    }
    app.stop().await;
});

on_all!(
    concurrent_single_row_posts_are_each_answered_with_their_own_row,
    |kind| async move {
        // On SQLite these are jobs of one batching writer: a duplicate in the middle of a batch
        // fails alone, and no answer is crossed with another request's.
        let app = spawn(kind).await;
        let admin = app.admin().await;
        ok(
            &app,
            &admin,
            json!({"n": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "taken", "body": "first"}]}}),
        )
        .await;
        let answers = api_concurrently(&app, &admin, 80, |i| {
            let code = if i % 5 == 3 {
                "taken".to_string()
            } else {
                format!("c{i:02}")
            };
            json!({"n": {"ds": "Notes", "data": [
                {"_rs": "I", "noteCode": code, "body": format!("body {i}")}]}})
        })
        .await;
        let mut stored = 0;
        for (i, status, b) in answers {
            if i % 5 == 3 {
                assert_eq!(status, 409, "{i}: {b}");
                assert_eq!(b["status"], "ERROR");
            } else {
                assert_eq!(status, 200, "{i}: {b}");
                let row = &b["data"]["n"]["data"][0];
                assert_eq!(row["noteCode"], format!("c{i:02}"), "{b}");
                assert_eq!(row["body"], format!("body {i}"), "{b}");
                assert_eq!(b["data"]["n"]["rowsPosted"], 1);
                stored += 1;
            }
        }
        assert_eq!(stored, 64);
        assert_eq!(count(&app, &admin, "Notes").await, 65);
        let first = ok(
            &app,
            &admin,
            json!({"q": {"ds": "Notes", "query": {"filter": [{"noteCode": {"is": "taken"}}]}}}),
        )
        .await;
        assert_eq!(first["data"]["q"]["data"][0]["body"], "first");
        app.stop().await;
    }
);

on_all!(
    concurrent_multi_row_posts_fail_or_succeed_whole,
    |kind| async move {
        // Each request writes five rows and queries them back; every third breaks at its last
        // row (a duplicate key). On SQLite each is a job of the one writer, in a transaction of
        // its own: a failing one must leave none of its rows, and the others all of theirs.
        let app = spawn(kind).await;
        let admin = app.admin().await;
        ok(
            &app,
            &admin,
            json!({"n": {"ds": "Notes", "data": [{"_rs": "I", "noteCode": "taken"}]}}),
        )
        .await;
        let answers = api_concurrently(&app, &admin, 30, |i| {
            let mut rows: Vec<Value> = (0..4)
                .map(|r| json!({"_rs": "I", "noteCode": format!("r{i:02}-{r}")}))
                .collect();
            let last = if i % 3 == 0 {
                "taken".to_string()
            } else {
                format!("r{i:02}-4")
            };
            rows.push(json!({"_rs": "I", "noteCode": last}));
            json!({
                "mine": {"ds": "Notes", "query": {"filter": [{"noteCode": {"sw": format!("r{i:02}-")}}]}},
                "n": {"ds": "Notes", "data": rows}})
        })
        .await;
        for (i, status, b) in answers {
            if i % 3 == 0 {
                assert_eq!(status, 409, "{i}: {b}");
            } else {
                assert_eq!(status, 200, "{i}: {b}");
                assert_eq!(b["data"]["n"]["rowsPosted"], 5, "{b}");
                assert_eq!(
                    b["data"]["mine"]["rowsFetched"], 5,
                    "the query sees its own request's rows: {b}"
                );
            }
        }
        assert_eq!(count(&app, &admin, "Notes").await, 1 + 20 * 5);
        app.stop().await;
    }
);
