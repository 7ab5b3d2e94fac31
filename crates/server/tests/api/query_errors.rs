//! What `POST /v1/api` refuses: 403 for datasources the user may not query (the same answer
//! whether or not they exist), 400 for every malformed query (naming the alias and the
//! offending attribute, operator or field), 400 for malformed bodies, 401 without csrf; and
//! hostile input, which must neither reach SQL text nor break anything.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_all;
use crate::query::{ALL, Qa};

/// Asserts a 403 `Access Denied` and returns its message.
#[track_caller]
fn denied(status: u16, resp: &Value) -> String {
    assert_envelope(status, resp, 403);
    assert_eq!(resp["title"], "Access Denied", "{resp}");
    resp["message"].as_str().unwrap().to_string()
}

on_all!(
    datasources_the_user_may_not_query_are_403,
    |kind| async move {
        let qa = Qa::spawn(kind).await;
        let q = |ds: &str| json!({"A": {"ds": ds, "query": {}}});
        let q_app = |ds: &str, app: &str| json!({"A": {"ds": ds, "appUid": app, "query": {}}});

        // An unknown datasource and one of an app where the user holds no role: the same answer.
        let (s, r) = qa.post(&q("NoSuchDatasource")).await;
        let unknown = denied(s, &r);
        let (s, r) = qa.post(&q("IoUsers")).await;
        let exists = denied(s, &r);
        assert_eq!(
            unknown.replace("NoSuchDatasource", "X"),
            exists.replace("IoUsers", "X"),
            "an existing datasource must not be distinguishable from a missing one"
        );
        assert!(!exists.contains("cloudio"), "{exists}");
        for body in [
            q_app("Things", "cloudio"),
            q_app("Things", "no-such-app"),
            q_app("IoUsers", "cloudio"),
            q_app("IoUsers", "qa"),
            q_app("Nope", "qa"),
        ] {
            let (s, r) = qa.post(&body).await;
            denied(s, &r);
        }
        // The admin holds no role in `qa`.
        let admin = qa.app.admin().await;
        let (s, r) = qa.app.api(&admin, &q("Things")).await;
        let admin_things = denied(s, &r);
        let (s, r) = qa.app.api(&admin, &q("Thingz")).await;
        let admin_thingz = denied(s, &r);
        assert_eq!(
            admin_things.replace("Things", "X"),
            admin_thingz.replace("Thingz", "X")
        );
        let (s, r) = qa.app.api(&admin, &q_app("Things", "qa")).await;
        denied(s, &r);
        // A user with no role at all.
        let outsider = qa.user_with("outsider", &[]).await;
        for ds in ["Things", "Notes", "Events", "IoUsers", "Nope"] {
            let (s, r) = qa.app.api(&outsider, &q(ds)).await;
            denied(s, &r);
        }
        // A role in the app that grants everything but `query` on Things, and nothing on Notes.
        let writer = qa.user_with("writer", &["qa_writer"]).await;
        for ds in ["Things", "Notes"] {
            let (s, r) = qa.app.api(&writer, &q(ds)).await;
            denied(s, &r);
            let (s, r) = qa.app.api(&writer, &q_app(ds, "qa")).await;
            denied(s, &r);
        }
        // One denied alias refuses the whole request.
        let (s, r) = qa
            .post(
                &json!({"Ok": {"ds": "Things", "query": {}}, "No": {"ds": "IoUsers", "query": {}}}),
            )
            .await;
        denied(s, &r);
        // qa_all may query as well.
        let all = qa.user_with("everything", &["qa_all"]).await;
        let (s, r) = qa.app.api(&all, &q("Things")).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["data"]["A"]["rowsFetched"], json!(22));
        qa.stop().await;
    }
);

on_all!(malformed_queries_are_400, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let f = |item: Value| json!({"filter": [item]});
    // Unknown attributes, wherever they are used.
    qa.bad(
        "Things",
        f(json!({"nope": {"is": "x"}})),
        &["unknown attribute `nope` in filter"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"sort": {"nope": 1}}),
        &["unknown attribute `nope` in sort"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"projection": {"nope": 1}}),
        &["unknown attribute `nope` in projection"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"selectAttributeCodeList": ["thingId", "nope"]}),
        &["unknown attribute `nope`"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"groupByAttributeCodeList": ["nope"]}),
        &["unknown attribute `nope` in groupByAttributeCodeList"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"aggregateList": [{"fn": "sum", "attributeCode": "nope", "alias": "s"}]}),
        &["unknown attribute `nope` in aggregateList"],
    )
    .await;
    // Attribute codes are case-sensitive.
    qa.bad("Things", f(json!({"Name": {"is": "x"}})), &["`Name`"])
        .await;
    // Unknown operators, and operators of another family.
    qa.bad(
        "Things",
        f(json!({"name": {"equals": "x"}})),
        &["unknown operator `equals`", "`name`"],
    )
    .await;
    for (attr, op, ty) in [
        ("name", "gt", "String"),
        ("name", "null", "String"),
        ("name", "eq", "String"),
        ("email", "bn", "Email"),
        ("activeFlag", "eq", "YN"),
        ("qty", "like", "Integer"),
        ("qty", "empty", "Integer"),
        ("qty", "on", "Integer"),
        ("price", "is", "Decimal"),
        ("madeOn", "eq", "Date"),
        ("madeOn", "like", "Date"),
        ("seenAt", "gt", "DateTime"),
        ("enabled", "gt", "Boolean"),
        ("enabled", "in", "Boolean"),
        ("enabled", "is", "Boolean"),
        ("details", "is", "JSON"),
        ("details", "eq", "JSON"),
    ] {
        qa.bad(
            "Things",
            f(json!({attr: {op: "2024-01-01"}})),
            &[
                &format!("operator `{op}`"),
                &format!("{ty} attribute `{attr}`"),
            ],
        )
        .await;
    }
    // Values of the wrong type.
    for (attr, op, value) in [
        ("qty", "eq", json!("10")),
        ("qty", "eq", json!(1.5)),
        ("qty", "eq", json!(9_223_372_036_854_775_808_u64)),
        ("qty", "gt", json!(null)),
        ("qty", "in", json!(5)),
        ("qty", "in", json!([1, "2"])),
        ("qty", "bn", json!([1])),
        ("qty", "bn", json!([1, 2, 3])),
        ("price", "eq", json!("1.25")),
        ("price", "lt", json!(true)),
        ("name", "is", json!(5)),
        ("name", "like", json!(["a"])),
        ("name", "in", json!("apple")),
        ("name", "in", json!(["apple", 1])),
        ("name", "hasAny", json!([1])),
        ("enabled", "eq", json!("true")),
        ("enabled", "eq", json!(1)),
        ("madeOn", "lastNDays", json!(-1)),
        ("madeOn", "nextNDays", json!("3")),
        ("seenAt", "lastNDays", json!(1.5)),
    ] {
        qa.bad(
            "Things",
            f(json!({attr: {op: value}})),
            &[&format!("operator `{op}` on `{attr}` expects")],
        )
        .await;
    }
    // Bad dates.
    for (attr, op, value) in [
        ("madeOn", "on", "2024-02-30"),
        ("madeOn", "on", "2024-13-01"),
        ("madeOn", "on", "15/01/2024"),
        ("madeOn", "after", "yesterday"),
        ("madeOn", "on", "2024-01-15T00:00:00Z"),
        ("seenAt", "on", "2024-01-15"),
        ("seenAt", "notOn", "2024-01-15"),
        ("seenAt", "before", "2024-01-15T25:00:00Z"),
        ("seenAt", "after", "not a date"),
        ("seenAt", "bn", ""),
    ] {
        qa.bad(
            "Things",
            f(json!({attr: {op: value}})),
            &[&format!("operator `{op}` on `{attr}`")],
        )
        .await;
    }
    qa.bad(
        "Things",
        f(json!({"madeOn": {"bn": ["2024-01-01", "2024-02-30"]}})),
        &["operator `bn` on `madeOn`", "2024-02-30"],
    )
    .await;
    // The query object itself.
    qa.bad(
        "Things",
        json!({"where": {}}),
        &["unknown query field `where`"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"Limit": 3}),
        &["unknown query field `Limit`"],
    )
    .await;
    qa.bad("Things", json!([]), &["query"]).await;
    qa.bad("Things", json!("filter"), &["query"]).await;
    qa.bad(
        "Things",
        json!({"sort": {"qty": 2}}),
        &["`sort` of `qty` must be 1 or -1"],
    )
    .await;
    qa.bad("Things", json!({"sort": {"qty": 0}}), &["`sort` of `qty`"])
        .await;
    qa.bad(
        "Things",
        json!({"sort": {"qty": "asc"}}),
        &["`sort` of `qty`"],
    )
    .await;
    qa.bad("Things", json!({"sort": ["qty"]}), &["`sort`"])
        .await;
    qa.bad("Things", json!({"sort": {"details": 1}}), &["`details`"])
        .await;
    qa.bad("Things", json!({"offset": -1}), &["`offset`"]).await;
    qa.bad("Things", json!({"offset": "3"}), &["`offset`"])
        .await;
    qa.bad("Things", json!({"limit": -1}), &["`limit`"]).await;
    qa.bad("Things", json!({"limit": 2.5}), &["`limit`"]).await;
    qa.bad(
        "Things",
        json!({"limit": 10001}),
        &["`limit` must be between 0 and 10000"],
    )
    .await;
    qa.bad("Things", json!({"count": "yes"}), &["`count`"])
        .await;
    qa.bad("Things", json!({"fetchDistinct": 1}), &["`fetchDistinct`"])
        .await;
    qa.bad(
        "Things",
        json!({"projection": {"name": 0}}),
        &["`projection` of `name`"],
    )
    .await;
    qa.bad("Things", json!({"projection": ["name"]}), &["`projection`"])
        .await;
    qa.bad(
        "Things",
        json!({"selectAttributeCodeList": "name"}),
        &["`selectAttributeCodeList`"],
    )
    .await;
    // Filters of the wrong shape.
    qa.bad(
        "Things",
        json!({"filter": {"name": {"is": "x"}}}),
        &["`filter`"],
    )
    .await;
    qa.bad("Things", json!({"filter": ["name"]}), &["filter item"])
        .await;
    qa.bad("Things", json!({"filter": [{}]}), &["filter item"])
        .await;
    qa.bad("Things", f(json!({"name": "apple"})), &["`name`"])
        .await;
    qa.bad("Things", f(json!({"name": {}})), &["`name`"]).await;
    qa.bad("Things", f(json!({"or": {"name": {"is": "x"}}})), &["`or`"])
        .await;
    qa.bad(
        "Things",
        f(json!({"not": [{"name": {"is": "x"}}]})),
        &["filter item"],
    )
    .await;
    // Nesting: 33 levels is one too many; far deeper is refused just the same.
    let mut deep = json!({"qty": {"eq": 10}});
    for _ in 0..33 {
        deep = json!({ "not": deep });
    }
    qa.bad("Things", f(deep), &["nested deeper than 32 levels"])
        .await;
    for levels in [129, 500] {
        let mut deep = json!({"qty": {"eq": 10}});
        for _ in 0..levels {
            deep = json!({ "not": deep });
        }
        let (s, r) = qa
            .post(&json!({"A": {"ds": "Things", "query": {"filter": [deep]}}}))
            .await;
        assert_envelope(s, &r, 400);
        assert_eq!(r["title"], "Invalid Request", "{r}");
    }
    let mut deep = json!({"qty": {"eq": 10}});
    for _ in 0..33 {
        deep = json!({"and": [deep]});
    }
    qa.bad("Things", f(deep), &["nested deeper than 32 levels"])
        .await;
    qa.bad(
        "Things",
        json!({"offset": 9_223_372_036_854_775_808_u64}),
        &["`offset`"],
    )
    .await;
    qa.bad("Things", json!({"limit": u64::MAX}), &["`limit`"])
        .await;
    // Lists hold at most 1,000 values.
    let many: Vec<i64> = (1..=1000).collect();
    qa.check(json!({"thingId": {"in": many}}), &ALL).await;
    let many: Vec<i64> = (0..1001).collect();
    qa.bad(
        "Things",
        f(json!({"qty": {"in": many}})),
        &["`in`", "`qty`", "1000"],
    )
    .await;
    // fetchDistinct and grouping rules.
    qa.bad(
        "Things",
        json!({"fetchDistinct": true, "selectAttributeCodeList": ["category"], "sort": {"qty": 1}}),
        &["`qty`", "fetchDistinct"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"groupByAttributeCodeList": ["category"], "projection": {"category": 1}}),
        &["projection"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"groupByAttributeCodeList": ["category"], "fetchDistinct": true}),
        &["fetchDistinct"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"groupByAttributeCodeList": ["details"]}),
        &["`details`"],
    )
    .await;
    qa.bad(
        "Things",
        json!({"groupByAttributeCodeList": ["category"], "sort": {"qty": 1}}),
        &["`qty`"],
    )
    .await;
    for (agg, needle) in [
        (
            json!({"fn": "sum", "attributeCode": "name", "alias": "s"}),
            "`name`",
        ),
        (
            json!({"fn": "avg", "attributeCode": "madeOn", "alias": "s"}),
            "`madeOn`",
        ),
        (
            json!({"fn": "max", "attributeCode": "details", "alias": "s"}),
            "`details`",
        ),
        (
            json!({"fn": "max", "attributeCode": "enabled", "alias": "s"}),
            "`enabled`",
        ),
        (
            json!({"fn": "median", "attributeCode": "qty", "alias": "s"}),
            "`median`",
        ),
        (json!({"fn": "sum", "alias": "s"}), "attributeCode"),
        (json!({"fn": "count"}), "alias"),
        (json!({"fn": "count", "alias": "_rs"}), "`_rs`"),
        (json!({"fn": "count", "alias": "a b"}), "`a b`"),
        (json!({"fn": "count", "alias": "category"}), "`category`"),
        (json!({"fn": "count", "alias": "n", "extra": 1}), "`extra`"),
    ] {
        qa.bad(
            "Things",
            json!({"groupByAttributeCodeList": ["category"], "aggregateList": [agg]}),
            &[needle],
        )
        .await;
    }
    // The alias named is the offending one.
    let (s, r) = qa
        .post(&json!({
            "Good": {"ds": "Things", "query": {}},
            "Broken": {"ds": "Things", "query": {"filter": [{"qty": {"gt": "x"}}]}}
        }))
        .await;
    assert_envelope(s, &r, 400);
    assert!(
        r["message"].as_str().unwrap().starts_with("Broken: "),
        "{r}"
    );
    qa.stop().await;
});

on_all!(
    malformed_bodies_are_400_and_csrf_is_required,
    |kind| async move {
        let qa = Qa::spawn(kind).await;
        let raw = |body: &'static str| qa.app.api_raw(&qa.reader, body);
        for body in [
            "",
            "   ",
            "{",
            "{\"A\": ",
            "not json",
            "[]",
            "\"A\"",
            "42",
            "null",
            "{}",
            "{\"A\": {\"ds\": \"Things\", \"query\": {}}} trailing",
        ] {
            let (s, r) = raw(body).await;
            assert_envelope(s, &r, 400);
            assert_eq!(r["title"], "Invalid Request", "{body:?}: {r}");
        }
        // A JSON document nested far too deep is refused, not a crash.
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let (s, r) = qa.app.api_raw(&qa.reader, deep).await;
        assert_envelope(s, &r, 400);
        let deep_filter = format!(
            "{{\"A\": {{\"ds\": \"Things\", \"query\": {{\"filter\": [{}{{\"qty\": {{\"eq\": 1}}}}{}]}}}}}}",
            "{\"not\": ".repeat(3000),
            "}".repeat(3000)
        );
        let (s, r) = qa.app.api_raw(&qa.reader, deep_filter).await;
        assert_envelope(s, &r, 400);
        // Aliases that are not requests.
        for (body, needle) in [
            (json!({"A": 5}), "A: "),
            (json!({"A": "Things"}), "A: "),
            (json!({"A": null}), "A: "),
            (json!({"A": []}), "A: "),
            (
                json!({"A": {"ds": "Things", "query": {}, "bogus": 1}}),
                "`bogus`",
            ),
            (json!({"A": {"ds": "Things", "Query": {}}}), "`Query`"),
            (json!({"A": {"query": {}}}), "`ds`"),
            (json!({"A": {"ds": 5, "query": {}}}), "`ds`"),
            (
                json!({"A": {"ds": "Things", "appUid": 5, "query": {}}}),
                "`appUid`",
            ),
        ] {
            let (s, r) = qa.post(&body).await;
            assert_envelope(s, &r, 400);
            assert_eq!(r["title"], "Invalid Request", "{body}: {r}");
            let message = r["message"].as_str().unwrap();
            assert!(message.contains(needle), "{body}: {message}");
        }
        // csrf: missing, wrong, or another session's.
        let body = json!({"A": {"ds": "Things", "query": {}}}).to_string();
        let send = |url: String, jwt: Option<String>| {
            let mut req = qa
                .app
                .client
                .post(qa.app.url(&url))
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(jwt) = jwt {
                req = req.header("Authorization", format!("Bearer {jwt}"));
            }
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }
        };
        let jwt = Some(qa.reader.jwt.clone());
        let other = qa.app.login("reader", crate::query::READER_PW).await;
        for (url, jwt) in [
            ("/v1/api".to_string(), jwt.clone()),
            ("/v1/api?csrf=".to_string(), jwt.clone()),
            ("/v1/api?csrf=not-the-csrf".to_string(), jwt.clone()),
            (format!("/v1/api?csrf={}", other.csrf), jwt.clone()),
            (format!("/v1/api?csrf={}", qa.reader.csrf), None),
            (
                format!("/v1/api?csrf={}", qa.reader.csrf),
                Some("not-a-jwt".to_string()),
            ),
        ] {
            let (s, r) = send(url.clone(), jwt).await;
            assert_envelope(s, &r, 401);
            assert_eq!(r["title"], "Unauthorized", "{url}: {r}");
        }
        // And the genuine call works (the csrf as a header too).
        let (s, r) = send(format!("/v1/api?csrf={}", qa.reader.csrf), jwt.clone()).await;
        assert_eq!(s, 200, "{r}");
        let r = qa
            .app
            .client
            .post(qa.app.url("/v1/api"))
            .header("Authorization", format!("Bearer {}", qa.reader.jwt))
            .header("X-CSRF-Token", &qa.reader.csrf)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        qa.stop().await;
    }
);

on_all!(hostile_values_and_names, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // Values are bound: each string means only itself. (value, rows whose name contains it)
    let hostile: [(&str, &[i64]); 18] = [
        ("'; DROP TABLE THINGS; --", &[]),
        ("\" OR 1=1 --", &[]),
        ("' OR '1'='1", &[]),
        ("x' OR name IS NOT NULL --", &[]),
        ("\\", &[14]),
        ("\\'", &[]),
        ("\\\\'; DELETE FROM THINGS; --", &[]),
        ("%", &[6, 21]),
        ("_", &[8, 21]),
        ("%%", &[]),
        ("!", &[10, 11, 21]),
        ("'", &[12]),
        ("\"", &[13]),
        ("`", &[]),
        (");", &[]),
        ("$1", &[]),
        ("?", &[]),
        ("Robert'); DROP TABLE NOTES;--", &[]),
    ];
    for (value, containing) in hostile {
        qa.check(json!({"name": {"is": value}}), &[]).await;
        qa.check(json!({"name": {"in": [value]}}), &[]).await;
        qa.check(json!({"email": {"is": value}}), &[]).await;
        qa.check(json!({"name": {"nin": [value]}}), &ALL).await;
        qa.check(json!({"name": {"like": value}}), containing).await;
        qa.check(json!({"name": {"hasAll": [value]}}), containing)
            .await;
        qa.check(json!({"name": {"sw": value}}), &[]).await;
    }
    // NUL: PostgreSQL cannot store it in text and says so; that is the client's error (400),
    // never a 500. SQLite may answer, but then with the rows the value really selects: no name
    // contains a NUL.
    let nul: [(Value, &[i64]); 6] = [
        (json!({"name": {"is": "a\u{0}b"}}), &[]),
        (json!({"name": {"like": "\u{0}"}}), &[]),
        (json!({"name": {"sw": "\u{0}"}}), &[]),
        (json!({"name": {"hasAny": ["\u{0}"]}}), &[]),
        (json!({"name": {"nct": "\u{0}"}}), &ALL),
        (json!({"name": {"in": ["apple", "\u{0}"]}}), &[2]),
    ];
    let mut wrong = Vec::new();
    for (filter, expected) in nul {
        let body = json!({"A": {"ds": "Things",
                                "query": {"filter": [filter], "projection": {"thingId": 1}}}});
        let (s, r) = qa.post(&body).await;
        if kind == Kind::Postgres || s != 200 {
            assert_envelope(s, &r, 400);
            assert_eq!(r["title"], "Invalid Request", "{body}: {r}");
        } else {
            let mut ids =
                crate::query::ids_of(r["data"]["A"]["data"].as_array().unwrap(), "thingId");
            ids.sort_unstable();
            if ids != expected {
                wrong.push(format!("{filter}: got {ids:?}, expected {expected:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "NUL values on {kind:?}:\n{}",
        wrong.join("\n")
    );

    // Hostile attribute names are unknown attributes, wherever they appear.
    for name in [
        "name; DROP TABLE THINGS",
        "NAME",
        "x.NAME",
        "name\" FROM THINGS --",
        "1=1",
        "*",
        "THING_ID",
        "(SELECT 1)",
        "",
        "name ",
    ] {
        let unknown = format!("unknown attribute `{name}`");
        qa.bad(
            "Things",
            json!({"filter": [{name: {"is": "x"}}]}),
            &[&unknown],
        )
        .await;
        qa.bad("Things", json!({"sort": {name: 1}}), &[&unknown])
            .await;
        qa.bad("Things", json!({"projection": {name: 1}}), &[&unknown])
            .await;
        qa.bad(
            "Things",
            json!({"groupByAttributeCodeList": [name]}),
            &[&unknown],
        )
        .await;
    }
    // Hostile aggregate aliases are refused (an alias is the one client string that reaches
    // SQL text, so it must be a plain identifier).
    for alias in [
        "n\"; DROP TABLE THINGS; --",
        "n n",
        "\"n\"",
        "n--",
        "ünï",
        "",
    ] {
        qa.bad(
            "Things",
            json!({"aggregateList": [{"fn": "count", "alias": alias}]}),
            &["alias"],
        )
        .await;
    }
    // Hostile datasource and app names are simply not found.
    for ds in [
        "Things; DROP TABLE THINGS",
        "THINGS",
        "qa.Things",
        "../Things",
        "Things\u{0}",
    ] {
        let (s, r) = qa.post(&json!({"A": {"ds": ds, "query": {}}})).await;
        denied(s, &r);
    }
    let (s, r) = qa
        .post(&json!({"A": {"ds": "Things", "appUid": "qa; DROP SCHEMA qa", "query": {}}}))
        .await;
    denied(s, &r);

    // Everything is still there.
    let result = qa.query("Things", json!({"count": true, "limit": 0})).await;
    assert_eq!(result["totalCount"], json!(22));
    let result = qa.query("Notes", json!({"count": true})).await;
    assert_eq!(result["totalCount"], json!(3));
    qa.check(json!({"name": {"is": "O'Brien"}}), &[12]).await;
    qa.stop().await;
});

on_all!(
    a_query_too_big_for_the_database_is_not_a_500,
    |kind| async move {
        // Every part of this query is within the documented limits (lists of at most 1,000 values,
        // no nesting), but together it needs 70,000 bind parameters: more than SQLite (32,766) or
        // PostgreSQL (65,535) accept in one statement. The server must answer it or refuse it as
        // the client's error, not fail with a 500.
        let qa = Qa::spawn_with(kind, |c| c.body_limit_bytes = 4 * 1024 * 1024).await;
        let list: Vec<i64> = (0..1000).collect();
        let filter: Vec<Value> = (0..70).map(|_| json!({"qty": {"in": list}})).collect();
        let body = json!({"A": {"ds": "Things",
                            "query": {"filter": filter, "projection": {"thingId": 1}}}});
        let (s, r) = qa.post(&body).await;
        if s == 200 {
            let mut ids =
                crate::query::ids_of(r["data"]["A"]["data"].as_array().unwrap(), "thingId");
            ids.sort_unstable();
            assert_eq!(
                ids,
                [
                    1, 2, 3, 4, 6, 8, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22
                ]
            );
        } else {
            assert_envelope(s, &r, 400);
            assert_eq!(r["title"], "Invalid Request", "{r}");
        }
        // The server is fine afterwards.
        let result = qa.query("Things", json!({"count": true, "limit": 0})).await;
        assert_eq!(result["totalCount"], json!(22));
        qa.stop().await;
    }
);

on_all!(
    long_like_patterns_are_400_naming_the_limit,
    |kind| async move {
        let qa = Qa::spawn(kind).await;
        // Past SQLite's 50,000-byte pattern limit this was a 500 ("pattern too complex").
        let long = "%".repeat(50_000);
        for op in ["like", "nct", "sw", "ew", "hasAll", "hasAny", "notAny"] {
            let value = if op.starts_with("has") || op == "notAny" {
                json!([long])
            } else {
                json!(long)
            };
            qa.bad(
                "Things",
                json!({"filter": [{"name": {op: value}}]}),
                &[
                    &format!("operator `{op}` on `name`"),
                    "at most 10000 characters",
                ],
            )
            .await;
        }
        // At the limit, even of characters that are escaped and of four bytes each, it runs.
        qa.check(json!({"name": {"like": "%".repeat(10_000)}}), &[])
            .await;
        qa.check(json!({"name": {"nct": "😀".repeat(10_000)}}), &ALL)
            .await;
        qa.app.stop().await;
    }
);
