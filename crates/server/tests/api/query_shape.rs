//! What a query returns: the response shape, projection, readable attributes only, sorting
//! (NULLs, tie-break, defaultSort), paging, limits, fetchDistinct, grouping and aggregates,
//! counts, several aliases, `appUid`, and the demo app. The `Things` rows are tabulated in
//! `query.rs`; every expected answer is derived by hand from them.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_all;
use crate::query::{ALL, Qa, ids_of};

/// JSON equality where numbers compare as numbers (`4` equals `4.0`; 1e-9 relative tolerance,
/// for averages).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-9 * y.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[track_caller]
fn assert_same(actual: &Value, expected: &Value) {
    assert!(
        same(actual, expected),
        "\nactual:   {actual}\nexpected: {expected}"
    );
}

fn keys(row: &Value) -> Vec<&str> {
    row.as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn sorted_keys(row: &Value) -> Vec<&str> {
    let mut k = keys(row);
    k.sort_unstable();
    k
}

/// Every readable attribute of `Things` (sorted), plus `_rs`.
const THINGS_KEYS: [&str; 16] = [
    "_rs",
    "activeFlag",
    "category",
    "createdBy",
    "creationDate",
    "details",
    "email",
    "enabled",
    "lastUpdateDate",
    "lastUpdatedBy",
    "madeOn",
    "name",
    "price",
    "qty",
    "seenAt",
    "thingId",
];

on_all!(response_shape_and_values, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let body = json!({"Things": {"ds": "Things", "query": {
        "filter": [{"thingId": {"in": [1, 5, 6, 7, 9, 12, 13, 14, 15, 17, 21]}}],
        "sort": {"thingId": 1}
    }}});
    let (status, resp) = qa.post(&body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(keys(&resp), ["status", "data"], "{resp}");
    assert_eq!(resp["status"], "OK");
    assert_eq!(keys(&resp["data"]), ["Things"]);
    let result = &resp["data"]["Things"];
    assert_eq!(
        sorted_keys(result),
        ["data", "queryElapsed", "rowsFetched"],
        "counting is never done unless asked: {result}"
    );
    assert!(result["queryElapsed"].is_u64(), "{result}");
    assert_eq!(result["rowsFetched"], json!(11));
    let rows = result["data"].as_array().unwrap();
    assert_eq!(rows.len(), 11);
    for row in rows {
        assert_eq!(sorted_keys(row), THINGS_KEYS, "{row}");
        assert_eq!(row["_rs"], "Q");
    }
    assert_same(
        &rows[0],
        &json!({"thingId": 1, "name": "Apple", "category": "fruit", "qty": 10, "price": 1.25,
            "activeFlag": "Y", "madeOn": "2024-01-15", "seenAt": "2024-01-15T08:30:00.123456Z",
            "enabled": true, "details": {"color": "red"}, "email": "apple@example.com",
            "createdBy": "seed", "creationDate": "2024-01-01T00:00:00.000000Z",
            "lastUpdatedBy": "editor", "lastUpdateDate": "2024-05-06T07:08:09.000001Z",
            "_rs": "Q"}),
    );
    assert_same(
        &rows[1],
        &json!({"thingId": 5, "name": null, "category": "misc", "qty": null, "price": null,
            "activeFlag": null, "madeOn": null, "seenAt": null, "enabled": null,
            "details": null, "email": null, "createdBy": "seed",
            "creationDate": "2024-01-01T00:00:00.000000Z", "lastUpdatedBy": "seed",
            "lastUpdateDate": "2024-01-02T03:04:05.678901Z", "_rs": "Q"}),
    );
    // Integers are JSON integers; the other values as their types say.
    assert_eq!(rows[0]["qty"], json!(10));
    assert!(rows[0]["thingId"].is_i64());
    let by_id = |id: i64| rows.iter().find(|r| r["thingId"] == json!(id)).unwrap();
    assert_eq!(by_id(6)["details"], json!([]));
    assert_eq!(by_id(6)["enabled"], json!(false));
    assert_eq!(by_id(6)["seenAt"], "2023-12-31T23:59:59.000001Z");
    assert_same(&by_id(6)["price"], &json!(99.75));
    assert_eq!(by_id(7)["details"], json!({"n": 1000}));
    assert_same(&by_id(7)["price"], &json!(1000));
    assert_eq!(by_id(7)["seenAt"], "2025-06-30T12:00:00.500000Z");
    assert_eq!(by_id(9)["qty"], json!(-5));
    assert_same(&by_id(9)["price"], &json!(-2.5));
    assert_eq!(by_id(9)["enabled"], Value::Null);
    assert_eq!(by_id(12)["name"], "O'Brien");
    assert_eq!(by_id(12)["madeOn"], Value::Null);
    assert_eq!(by_id(13)["name"], "say \"hi\"");
    assert_eq!(by_id(14)["name"], "C:\\temp");
    assert_eq!(by_id(14)["seenAt"], "2022-02-02T02:02:02.020202Z");
    assert_eq!(by_id(15)["name"], "Ünïcödé");
    assert_eq!(by_id(15)["details"], json!({"u": "Ü"}));
    assert_eq!(by_id(17)["name"], "日本");
    assert_eq!(by_id(17)["enabled"], Value::Null);
    assert_eq!(by_id(21)["name"], "wow!%_");
    assert_eq!(by_id(21)["details"], json!({"x": [1, 2]}));
    assert_same(&by_id(21)["price"], &json!(50.5));
    qa.stop().await;
});

on_all!(projection_and_select_list, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let one = json!([{"thingId": {"eq": 1}}]);
    // In key order, only those keys plus `_rs`.
    let rows = qa
        .rows(json!({"filter": one, "projection": {"name": 1, "thingId": 1}}))
        .await;
    assert_eq!(rows, [json!({"name": "Apple", "thingId": 1, "_rs": "Q"})]);
    assert_eq!(keys(&rows[0]), ["name", "thingId", "_rs"]);
    let rows = qa
        .rows(
            json!({"filter": one, "selectAttributeCodeList": ["qty", "madeOn", "lastUpdateDate"]}),
        )
        .await;
    assert_eq!(keys(&rows[0]), ["qty", "madeOn", "lastUpdateDate", "_rs"]);
    assert_eq!(
        rows[0],
        json!({"qty": 10, "madeOn": "2024-01-15", "lastUpdateDate": "2024-05-06T07:08:09.000001Z", "_rs": "Q"})
    );
    // `true` works like 1; both fields together are a union in order of first appearance.
    let rows = qa
        .rows(json!({"filter": one, "projection": {"category": true},
                     "selectAttributeCodeList": ["thingId", "category"]}))
        .await;
    assert_eq!(keys(&rows[0]), ["category", "thingId", "_rs"]);
    // Empty projection / list: every readable attribute.
    for q in [
        json!({"filter": one, "projection": {}}),
        json!({"filter": one, "selectAttributeCodeList": []}),
        json!({"filter": one, "projection": null}),
        json!({"filter": one}),
    ] {
        let rows = qa.rows(q.clone()).await;
        assert_eq!(sorted_keys(&rows[0]), THINGS_KEYS, "{q}");
    }
    // A projected query still filters and sorts on other attributes.
    let rows = qa
        .rows(
            json!({"filter": [{"category": {"is": "unicode"}}], "sort": {"qty": -1},
                     "projection": {"name": 1}}),
        )
        .await;
    assert_eq!(
        rows,
        [
            json!({"name": "日本", "_rs": "Q"}),
            json!({"name": "ünïcödé", "_rs": "Q"}),
            json!({"name": "Ünïcödé", "_rs": "Q"})
        ]
    );
    qa.stop().await;
});

on_all!(only_readable_attributes_are_returned, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // `Notes.secret` is not queryable: never returned, and unknown wherever it is named.
    let result = qa.query("Notes", json!({})).await;
    let rows = result["data"].as_array().unwrap();
    assert_eq!(ids_of(rows, "noteId"), [1, 2, 3]);
    for row in rows {
        assert_eq!(
            sorted_keys(row),
            [
                "_rs",
                "body",
                "createdBy",
                "creationDate",
                "lastUpdateDate",
                "lastUpdatedBy",
                "noteId",
                "thingId"
            ]
        );
    }
    assert!(!result.to_string().contains("top secret"), "{result}");
    let unknown = "unknown attribute `secret`";
    qa.bad(
        "Notes",
        json!({"projection": {"secret": 1}}),
        &[unknown, "projection"],
    )
    .await;
    qa.bad(
        "Notes",
        json!({"selectAttributeCodeList": ["body", "secret"]}),
        &[unknown],
    )
    .await;
    qa.bad(
        "Notes",
        json!({"filter": [{"secret": {"notEmpty": ""}}]}),
        &[unknown, "filter"],
    )
    .await;
    qa.bad("Notes", json!({"sort": {"secret": 1}}), &[unknown, "sort"])
        .await;
    qa.bad(
        "Notes",
        json!({"groupByAttributeCodeList": ["secret"]}),
        &[unknown, "groupByAttributeCodeList"],
    )
    .await;
    qa.bad(
        "Notes",
        json!({"aggregateList": [{"fn": "count", "attributeCode": "secret", "alias": "n"}]}),
        &[unknown, "aggregateList"],
    )
    .await;

    // IoUsers' write-only `password` never appears, even when asked for.
    let admin = qa.app.admin().await;
    let (status, resp) = qa
        .app
        .api(&admin, &json!({"U": {"ds": "IoUsers", "query": {}}}))
        .await;
    assert_eq!(status, 200, "{resp}");
    let rows = resp["data"]["U"]["data"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["userName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "reader"], "{resp}");
    for row in rows {
        assert!(row.get("password").is_none(), "{row}");
        for k in [
            "userId",
            "userName",
            "displayName",
            "emailAddress",
            "lastUpdateDate",
        ] {
            assert!(row.get(k).is_some(), "`{k}` missing: {row}");
        }
    }
    assert!(!resp.to_string().contains("$argon2"), "{resp}");
    for query in [
        json!({"projection": {"password": 1}}),
        json!({"selectAttributeCodeList": ["userName", "password"]}),
        json!({"filter": [{"password": {"like": "argon"}}]}),
        json!({"sort": {"password": 1}}),
        json!({"groupByAttributeCodeList": ["password"]}),
        json!({"aggregateList": [{"fn": "max", "attributeCode": "password", "alias": "p"}]}),
    ] {
        let (status, resp) = qa
            .app
            .api(&admin, &json!({"U": {"ds": "IoUsers", "query": query}}))
            .await;
        assert_envelope(status, &resp, 400);
        let message = resp["message"].as_str().unwrap();
        assert!(
            message.contains("unknown attribute `password`"),
            "{query}: {message}"
        );
        assert!(!message.contains("PASSWORD_HASH"), "{message}");
    }
    qa.stop().await;
});

on_all!(sorting, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let cases: Vec<(Value, Vec<i64>)> = vec![
        // NULLs first ascending, last descending; equal keys broken by the primary key.
        (
            json!({"qty": 1}),
            vec![
                5, 14, 9, 8, 20, 10, 11, 3, 18, 19, 12, 13, 1, 2, 22, 15, 16, 17, 4, 21, 6, 7,
            ],
        ),
        (
            json!({"qty": -1}),
            vec![
                7, 6, 21, 4, 17, 16, 15, 1, 2, 22, 12, 13, 3, 18, 19, 11, 10, 8, 20, 9, 5, 14,
            ],
        ),
        (
            json!({"madeOn": 1}),
            vec![
                5, 12, 14, 6, 8, 20, 1, 2, 13, 15, 22, 9, 16, 17, 18, 3, 4, 19, 10, 11, 21, 7,
            ],
        ),
        (
            json!({"madeOn": -1}),
            vec![
                7, 21, 10, 11, 4, 19, 3, 18, 17, 9, 16, 1, 2, 13, 15, 22, 8, 20, 6, 14, 5, 12,
            ],
        ),
        (
            json!({"seenAt": -1}),
            vec![
                7, 21, 11, 4, 3, 19, 18, 17, 16, 2, 1, 9, 22, 12, 15, 8, 6, 14, 5, 10, 13, 20,
            ],
        ),
        // Numeric, not textual, order of a Decimal.
        (
            json!({"price": 1}),
            vec![
                5, 13, 20, 9, 8, 4, 19, 1, 2, 22, 10, 11, 12, 18, 3, 14, 15, 16, 17, 21, 6, 7,
            ],
        ),
        (
            json!({"enabled": 1}),
            vec![
                5, 9, 11, 17, 3, 6, 8, 12, 14, 16, 20, 1, 2, 4, 7, 10, 13, 15, 18, 19, 21, 22,
            ],
        ),
        // Several keys, in key order.
        (
            json!({"activeFlag": -1, "qty": 1}),
            vec![
                10, 11, 18, 13, 1, 2, 22, 15, 17, 4, 21, 6, 14, 8, 20, 3, 12, 16, 7, 5, 9, 19,
            ],
        ),
        (
            json!({"category": 1}),
            vec![
                3, 18, 8, 9, 1, 2, 4, 19, 22, 10, 11, 5, 20, 14, 12, 6, 7, 21, 13, 15, 16, 17,
            ],
        ),
        // The key, when sorted on, is not appended again.
        (
            json!({"qty": 1, "thingId": -1}),
            vec![
                14, 5, 9, 20, 8, 10, 11, 19, 18, 3, 13, 12, 22, 2, 1, 15, 16, 17, 4, 21, 6, 7,
            ],
        ),
        // WHO columns sort like any DateTime: row 1 was updated last.
        (
            json!({"lastUpdateDate": -1}),
            vec![
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
            ],
        ),
        (
            json!({"lastUpdateDate": 1}),
            vec![
                2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 1,
            ],
        ),
        (
            json!({"thingId": -1}),
            vec![
                22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1,
            ],
        ),
    ];
    for (sort, expected) in cases {
        let ids = qa
            .ids(json!({"sort": sort, "projection": {"thingId": 1}}))
            .await;
        assert_eq!(ids, expected, "sort {sort} on {kind:?}");
    }
    // Without sort (or with `{}`): the datasource's defaultSort (category asc, qty desc), then
    // the primary key.
    let default_order = [
        3, 18, 8, 9, 4, 1, 2, 22, 19, 11, 10, 20, 5, 14, 12, 7, 6, 21, 13, 17, 16, 15,
    ];
    assert_eq!(qa.ids(json!({})).await, default_order);
    assert_eq!(qa.ids(json!({"sort": {}})).await, default_order);
    assert_eq!(qa.ids(json!({"sort": null})).await, default_order);
    // Without defaultSort: the primary key.
    let result = qa
        .query("Notes", json!({"projection": {"body": 1, "noteId": 1}}))
        .await;
    assert_eq!(
        ids_of(result["data"].as_array().unwrap(), "noteId"),
        [1, 2, 3]
    );
    let result = qa.query("Notes", json!({"sort": {"thingId": -1}})).await;
    assert_eq!(
        ids_of(result["data"].as_array().unwrap(), "noteId"),
        [3, 1, 2]
    );
    qa.stop().await;
});

on_all!(paging_returns_every_row_exactly_once, |kind| async move {
    let qa = Qa::spawn(kind).await;
    for sort in [
        json!(null),
        json!({"qty": 1}),
        json!({"category": 1}),
        json!({"enabled": -1}),
        json!({"activeFlag": 1, "madeOn": -1}),
    ] {
        let full = qa
            .ids(json!({"sort": sort, "projection": {"thingId": 1}}))
            .await;
        assert_eq!(full.len(), 22);
        let mut paged = Vec::new();
        let mut offset = 0;
        loop {
            let result = qa
                .query(
                    "Things",
                    json!({"sort": sort, "projection": {"thingId": 1}, "offset": offset,
                           "limit": 3, "count": true}),
                )
                .await;
            let page = ids_of(result["data"].as_array().unwrap(), "thingId");
            assert_eq!(result["rowsFetched"], json!(page.len()));
            assert_eq!(
                result["totalCount"],
                json!(22),
                "count ignores offset and limit"
            );
            assert!(page.len() <= 3);
            if page.is_empty() {
                break;
            }
            paged.extend(page);
            offset += 3;
            assert!(offset <= 30, "paging does not end");
        }
        assert_eq!(paged, full, "sort {sort}");
        let mut unique = paged.clone();
        unique.sort_unstable();
        assert_eq!(unique, ALL, "sort {sort}");
    }
    // The last partial page and beyond the end.
    let ids = qa
        .ids(json!({"sort": {"thingId": 1}, "offset": 21, "limit": 3}))
        .await;
    assert_eq!(ids, [22]);
    assert_eq!(qa.ids(json!({"offset": 22})).await, Vec::<i64>::new());
    assert_eq!(qa.ids(json!({"offset": 1000})).await, Vec::<i64>::new());
    qa.stop().await;
});

on_all!(limits, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // The default maximum is 10,000: accepted at the maximum, refused (not capped) above it.
    let result = qa.query("Things", json!({"limit": 10000})).await;
    assert_eq!(result["rowsFetched"], json!(22));
    qa.bad(
        "Things",
        json!({"limit": 10001}),
        &["`limit` must be between 0 and 10000"],
    )
    .await;
    // limit 0 with count: no rows, the count.
    let result = qa.query("Things", json!({"limit": 0, "count": true})).await;
    assert_eq!(result["data"], json!([]));
    assert_eq!(result["rowsFetched"], json!(0));
    assert_eq!(result["totalCount"], json!(22));
    let result = qa
        .query(
            "Things",
            json!({"filter": [{"name": {"is": "nobody"}}], "count": true}),
        )
        .await;
    assert_eq!(result["totalCount"], json!(0));
    assert_eq!(result["rowsFetched"], json!(0));
    qa.stop().await;

    // Configured default and maximum.
    let qa = Qa::spawn_with(kind, |c| {
        c.query_default_limit = 4;
        c.query_max_limit = 10;
    })
    .await;
    assert_eq!(qa.ids(json!({"sort": {"thingId": 1}})).await, [1, 2, 3, 4]);
    assert_eq!(
        qa.ids(json!({"sort": {"thingId": 1}, "limit": 10})).await,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    qa.bad(
        "Things",
        json!({"limit": 11}),
        &["`limit` must be between 0 and 10"],
    )
    .await;
    qa.stop().await;
});

on_all!(fetch_distinct, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let result = qa
        .query(
            "Things",
            json!({"fetchDistinct": true, "selectAttributeCodeList": ["category"], "count": true}),
        )
        .await;
    assert_eq!(
        result["data"],
        json!([
            {"category": "baked", "_rs": "Q"}, {"category": "code", "_rs": "Q"},
            {"category": "fruit", "_rs": "Q"}, {"category": "greeting", "_rs": "Q"},
            {"category": "misc", "_rs": "Q"}, {"category": "path", "_rs": "Q"},
            {"category": "person", "_rs": "Q"}, {"category": "promo", "_rs": "Q"},
            {"category": "quote", "_rs": "Q"}, {"category": "unicode", "_rs": "Q"}
        ])
    );
    assert_eq!(result["rowsFetched"], json!(10));
    assert_eq!(result["totalCount"], json!(10));
    // Two attributes; NULL is a value of its own, last when descending.
    let result = qa
        .query(
            "Things",
            json!({"fetchDistinct": true, "projection": {"category": 1, "activeFlag": 1},
                   "sort": {"category": 1, "activeFlag": -1}, "count": true}),
        )
        .await;
    let pairs: Vec<(String, Value)> = result["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(keys(r), ["category", "activeFlag", "_rs"]);
            (
                r["category"].as_str().unwrap().to_string(),
                r["activeFlag"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, Value)> = [
        ("baked", json!("Y")),
        ("baked", json!("N")),
        ("code", json!("N")),
        ("code", json!(null)),
        ("fruit", json!("Y")),
        ("fruit", json!(null)),
        ("greeting", json!("Y")),
        ("misc", json!("N")),
        ("misc", json!(null)),
        ("path", json!("N")),
        ("person", json!("N")),
        ("promo", json!("Y")),
        ("promo", json!("N")),
        ("quote", json!("Y")),
        ("unicode", json!("Y")),
        ("unicode", json!("N")),
    ]
    .into_iter()
    .map(|(c, a)| (c.to_string(), a))
    .collect();
    assert_eq!(pairs, expected);
    assert_eq!(result["totalCount"], json!(16));
    // Distinct JSON values (no order is defined for JSON: compared as a set).
    let result = qa
        .query(
            "Things",
            json!({"fetchDistinct": true, "selectAttributeCodeList": ["details"], "count": true}),
        )
        .await;
    let mut got: Vec<String> = result["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["details"].to_string())
        .collect();
    got.sort();
    let mut expected: Vec<String> = [
        json!(null),
        json!({"color": "red"}),
        json!({"color": "green"}),
        json!({"ripe": true}),
        json!([]),
        json!({"n": 1000}),
        json!({"lang": "en"}),
        json!({"u": "Ü"}),
        json!({"x": [1, 2]}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(result["totalCount"], json!(9));
    // Paging distinct rows: limit 4 from offset 8.
    let result = qa
        .query(
            "Things",
            json!({"fetchDistinct": true, "selectAttributeCodeList": ["category"],
                   "offset": 8, "limit": 4}),
        )
        .await;
    assert_eq!(
        result["data"],
        json!([{"category": "quote", "_rs": "Q"}, {"category": "unicode", "_rs": "Q"}])
    );
    // With a filter.
    let result = qa
        .query(
            "Things",
            json!({"fetchDistinct": true, "selectAttributeCodeList": ["qty"],
                   "filter": [{"category": {"is": "fruit"}}], "sort": {"qty": 1}}),
        )
        .await;
    assert_eq!(
        result["data"],
        json!([{"qty": 3, "_rs": "Q"}, {"qty": 10, "_rs": "Q"}, {"qty": 25, "_rs": "Q"}])
    );
    qa.stop().await;
});

on_all!(group_by_and_aggregates, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let aggregates = json!([
        {"fn": "count", "alias": "n"},
        {"fn": "count", "attributeCode": "qty", "alias": "nQty"},
        {"fn": "sum", "attributeCode": "qty", "alias": "totalQty"},
        {"fn": "avg", "attributeCode": "qty", "alias": "avgQty"},
        {"fn": "min", "attributeCode": "qty", "alias": "minQty"},
        {"fn": "max", "attributeCode": "qty", "alias": "maxQty"},
        {"fn": "sum", "attributeCode": "price", "alias": "totalPrice"},
        {"fn": "min", "attributeCode": "madeOn", "alias": "firstMade"},
        {"fn": "max", "attributeCode": "seenAt", "alias": "lastSeen"}
    ]);
    let result = qa
        .query(
            "Things",
            json!({"groupByAttributeCodeList": ["category"], "aggregateList": aggregates,
                   "count": true}),
        )
        .await;
    let row = |c: &str,
               n: i64,
               nq: i64,
               tq: Value,
               aq: Value,
               mn: Value,
               mx: Value,
               tp: Value,
               fm: Value,
               ls: Value| {
        json!({"category": c, "n": n, "nQty": nq, "totalQty": tq, "avgQty": aq, "minQty": mn,
               "maxQty": mx, "totalPrice": tp, "firstMade": fm, "lastSeen": ls, "_rs": "Q"})
    };
    let expected = json!([
        row(
            "baked",
            2,
            2,
            json!(6),
            json!(3.0),
            json!(3),
            json!(3),
            json!(12.25),
            json!("2024-02-28"),
            json!("2024-02-29T23:59:59.999999Z")
        ),
        row(
            "code",
            2,
            2,
            json!(-5),
            json!(-2.5),
            json!(-5),
            json!(0),
            json!(-2.5),
            json!("2024-01-14"),
            json!("2024-01-15T08:30:00.123456Z")
        ),
        row(
            "fruit",
            5,
            5,
            json!(58),
            json!(11.6),
            json!(3),
            json!(25),
            json!(4.5),
            json!("2024-01-15"),
            json!("2024-03-01T00:00:00.000000Z")
        ),
        row(
            "greeting",
            2,
            2,
            json!(3),
            json!(1.5),
            json!(1),
            json!(2),
            json!(4.0),
            json!("2024-06-01"),
            json!("2024-06-01T10:00:00.000000Z")
        ),
        row(
            "misc",
            2,
            1,
            json!(0),
            json!(0.0),
            json!(0),
            json!(0),
            json!(null),
            json!("2024-01-14"),
            json!(null)
        ),
        row(
            "path",
            1,
            0,
            json!(null),
            json!(null),
            json!(null),
            json!(null),
            json!(12.25),
            json!("2022-02-02"),
            json!("2022-02-02T02:02:02.020202Z")
        ),
        row(
            "person",
            1,
            1,
            json!(7),
            json!(7.0),
            json!(7),
            json!(7),
            json!(3.5),
            json!(null),
            json!("2024-01-15T08:30:00.123455Z")
        ),
        row(
            "promo",
            3,
            3,
            json!(1150),
            json!(1150.0 / 3.0),
            json!(50),
            json!(1000),
            json!(1150.25),
            json!("2023-12-31"),
            json!("2025-06-30T12:00:00.500000Z")
        ),
        row(
            "quote",
            1,
            1,
            json!(7),
            json!(7.0),
            json!(7),
            json!(7),
            json!(null),
            json!("2024-01-15"),
            json!(null)
        ),
        row(
            "unicode",
            3,
            3,
            json!(48),
            json!(16.0),
            json!(15),
            json!(17),
            json!(48.0),
            json!("2024-01-15"),
            json!("2024-01-17T09:00:00.000000Z")
        ),
    ]);
    assert_same(&result["data"], &expected);
    assert_eq!(result["rowsFetched"], json!(10));
    assert_eq!(result["totalCount"], json!(10));
    let first = &result["data"][0];
    assert_eq!(
        keys(first),
        [
            "category",
            "n",
            "nQty",
            "totalQty",
            "avgQty",
            "minQty",
            "maxQty",
            "totalPrice",
            "firstMade",
            "lastSeen",
            "_rs"
        ]
    );
    // Counts and sums of an Integer are JSON integers.
    assert!(first["n"].is_i64() && first["nQty"].is_i64() && first["totalQty"].is_i64());

    // Sorted by an aggregate, descending: NULL last, ties by the group key.
    let result = qa
        .query(
            "Things",
            json!({"groupByAttributeCodeList": ["category"],
                   "aggregateList": [{"fn": "sum", "attributeCode": "qty", "alias": "total"}],
                   "sort": {"total": -1}}),
        )
        .await;
    let order: Vec<&str> = result["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["category"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "promo", "fruit", "unicode", "person", "quote", "baked", "greeting", "misc", "code",
            "path"
        ]
    );
    // Paging groups.
    let result = qa
        .query(
            "Things",
            json!({"groupByAttributeCodeList": ["category"],
                   "aggregateList": [{"fn": "count", "alias": "n"}], "offset": 3, "limit": 3}),
        )
        .await;
    assert_eq!(
        result["data"],
        json!([{"category": "greeting", "n": 2, "_rs": "Q"},
               {"category": "misc", "n": 2, "_rs": "Q"},
               {"category": "path", "n": 1, "_rs": "Q"}])
    );
    // Two group keys; NULL forms its own group, first ascending.
    let result = qa
        .query(
            "Things",
            json!({"groupByAttributeCodeList": ["category", "activeFlag"],
                   "aggregateList": [{"fn": "count", "alias": "n"}]}),
        )
        .await;
    let got: Vec<(String, Value, i64)> = result["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["category"].as_str().unwrap().to_string(),
                r["activeFlag"].clone(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, Value, i64)> = [
        ("baked", json!("N"), 1),
        ("baked", json!("Y"), 1),
        ("code", json!(null), 1),
        ("code", json!("N"), 1),
        ("fruit", json!(null), 1),
        ("fruit", json!("Y"), 4),
        ("greeting", json!("Y"), 2),
        ("misc", json!(null), 1),
        ("misc", json!("N"), 1),
        ("path", json!("N"), 1),
        ("person", json!("N"), 1),
        ("promo", json!("N"), 1),
        ("promo", json!("Y"), 2),
        ("quote", json!("Y"), 1),
        ("unicode", json!("N"), 1),
        ("unicode", json!("Y"), 2),
    ]
    .into_iter()
    .map(|(c, a, n)| (c.to_string(), a, n))
    .collect();
    assert_eq!(got, expected);
    // Grouping on a Boolean.
    let result = qa
        .query(
            "Things",
            json!({"groupByAttributeCodeList": ["enabled"],
                   "aggregateList": [{"fn": "count", "alias": "n"}]}),
        )
        .await;
    assert_eq!(
        result["data"],
        json!([{"enabled": null, "n": 4, "_rs": "Q"}, {"enabled": false, "n": 7, "_rs": "Q"},
               {"enabled": true, "n": 11, "_rs": "Q"}])
    );
    // Aggregates without group keys: one row over the filtered rows.
    let result = qa
        .query(
            "Things",
            json!({"aggregateList": [
                {"fn": "count", "alias": "n"},
                {"fn": "count", "attributeCode": "qty", "alias": "nQty"},
                {"fn": "sum", "attributeCode": "qty", "alias": "total"},
                {"fn": "min", "attributeCode": "qty", "alias": "low"},
                {"fn": "max", "attributeCode": "qty", "alias": "high"},
                {"fn": "min", "attributeCode": "madeOn", "alias": "first"},
                {"fn": "max", "attributeCode": "madeOn", "alias": "last"},
                {"fn": "min", "attributeCode": "category", "alias": "firstCategory"},
                {"fn": "count", "attributeCode": "details", "alias": "nDetails"},
                {"fn": "count", "attributeCode": null, "alias": "all"}
            ]}),
        )
        .await;
    assert_same(
        &result["data"],
        &json!([{"n": 22, "nQty": 20, "total": 1274, "low": -5, "high": 1000,
                 "first": "2022-02-02", "last": "2025-06-30", "firstCategory": "baked",
                 "nDetails": 8, "all": 22, "_rs": "Q"}]),
    );
    // Group keys without aggregates.
    let result = qa
        .query(
            "Things",
            json!({"groupByAttributeCodeList": ["category"], "count": true,
                   "filter": [{"qty": {"gte": 16}}]}),
        )
        .await;
    assert_eq!(
        result["data"],
        json!([{"category": "fruit", "_rs": "Q"}, {"category": "promo", "_rs": "Q"},
               {"category": "unicode", "_rs": "Q"}])
    );
    assert_eq!(result["totalCount"], json!(3));
    let result = qa
        .query(
            "Things",
            json!({"filter": [{"category": {"is": "fruit"}}],
                   "aggregateList": [{"fn": "count", "alias": "n"},
                                     {"fn": "sum", "attributeCode": "qty", "alias": "total"},
                                     {"fn": "avg", "attributeCode": "price", "alias": "avgPrice"}]}),
        )
        .await;
    assert_same(
        &result["data"],
        &json!([{"n": 5, "total": 58, "avgPrice": 0.9, "_rs": "Q"}]),
    );
    qa.stop().await;
});

on_all!(several_aliases_and_app_uid, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let body = json!({
        "Fruit": {"ds": "Things", "query": {"filter": [{"category": {"is": "fruit"}}],
                  "projection": {"thingId": 1}, "limit": 2, "count": true}},
        "Notes": {"ds": "Notes", "query": {"projection": {"noteId": 1, "body": 1}}},
        "Explicit": {"ds": "Things", "appUid": "qa",
                     "query": {"filter": [{"thingId": {"eq": 7}}],
                               "selectAttributeCodeList": ["name"]}},
        "NullApp": {"ds": "Events", "appUid": null, "query": {"count": true}},
        "Fruit2": {"ds": "Things", "query": {"filter": [{"category": {"is": "fruit"}}],
                   "projection": {"thingId": 1}, "offset": 3, "count": true}}
    });
    let (status, resp) = qa.post(&body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(keys(&resp), ["status", "data"]);
    assert_eq!(
        keys(&resp["data"]),
        ["Fruit", "Notes", "Explicit", "NullApp", "Fruit2"]
    );
    let d = &resp["data"];
    for alias in ["Fruit", "Notes", "Explicit", "NullApp", "Fruit2"] {
        assert!(d[alias]["queryElapsed"].is_u64(), "{alias}: {}", d[alias]);
    }
    assert_eq!(
        d["Fruit"]["data"],
        json!([{"thingId": 4, "_rs": "Q"}, {"thingId": 1, "_rs": "Q"}])
    );
    assert_eq!(d["Fruit"]["rowsFetched"], json!(2));
    assert_eq!(d["Fruit"]["totalCount"], json!(5));
    assert_eq!(
        sorted_keys(&d["Fruit"]),
        ["data", "queryElapsed", "rowsFetched", "totalCount"]
    );
    assert_eq!(
        d["Notes"]["data"],
        json!([{"noteId": 1, "body": "first", "_rs": "Q"},
               {"noteId": 2, "body": "second", "_rs": "Q"},
               {"noteId": 3, "body": "third", "_rs": "Q"}])
    );
    assert_eq!(d["Notes"]["rowsFetched"], json!(3));
    assert!(d["Notes"].get("totalCount").is_none());
    assert_eq!(d["Explicit"]["data"], json!([{"name": "1000", "_rs": "Q"}]));
    assert_eq!(d["NullApp"]["data"], json!([]));
    assert_eq!(d["NullApp"]["totalCount"], json!(0));
    assert_eq!(
        d["Fruit2"]["data"],
        json!([{"thingId": 22, "_rs": "Q"}, {"thingId": 19, "_rs": "Q"}])
    );
    assert_eq!(d["Fruit2"]["totalCount"], json!(5));
    // An alias may carry any name; the response keeps it as sent.
    let (status, resp) = qa
        .post(&json!({"weird alias ü": {"ds": "Notes", "query": {"limit": 1}}}))
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["data"]["weird alias ü"]["rowsFetched"], json!(1));
    qa.stop().await;
});

on_all!(demo_employees_for_the_admin, |kind| async move {
    // `serve --demo`: the admin can query the demo's Employees at once, with no grant made by
    // the test.
    let db = TestDb::new(kind).await;
    let mut config = db.config();
    config.demo = true;
    let app = TestApp::spawn_on(db, config).await;
    let admin = app.admin().await;
    let (status, resp) = app
        .api(
            &admin,
            &json!({"EmployeesAlias": {"ds": "Employees", "query": {"count": true}}}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let result = &resp["data"]["EmployeesAlias"];
    assert_eq!(result["totalCount"], json!(1000));
    assert_eq!(
        result["rowsFetched"],
        json!(100),
        "the default limit is 100"
    );
    let rows = result["data"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(rows[0]["name"], "Abigail Abbott");
    assert_eq!(rows[0]["empId"], json!(1));
    assert_eq!(rows[0]["_rs"], "Q");
    // The documented example request (there is no Steve among the demo's employees).
    let (status, resp) = app
        .api(
            &admin,
            &json!({"EmployeesAlias": {"ds": "Employees", "query": {
                "filter": [{"name": {"is": "Steve"}}, {"salary": {"eq": 12345}},
                           {"lastUpdateDate": {"after": "2020-11-30T23:59:59.999Z"}}],
                "projection": {"name": 1},
                "sort": {"name": 1, "lastUpdateDate": -1},
                "offset": 0, "limit": 10}}}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["data"]["EmployeesAlias"]["data"], json!([]), "{resp}");
    // Hand-computed from the demo's generator: one employee in seven (i % 7 == 0, i < 1000)
    // is inactive; one first name in twenty.
    let (status, resp) = app
        .api(
            &admin,
            &json!({
                "Inactive": {"ds": "Employees", "query": {"filter": [{"active": {"is": "N"}}],
                             "limit": 0, "count": true}},
                "Abigails": {"ds": "Employees", "query": {"filter": [{"name": {"sw": "abigail "}}],
                             "projection": {"empId": 1}, "sort": {"empId": 1}, "limit": 10000}},
                "All": {"ds": "Employees", "appUid": "demo",
                        "query": {"projection": {"empId": 1}, "limit": 10000}}
            }),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["data"]["Inactive"]["totalCount"], json!(143));
    let abigails = ids_of(
        resp["data"]["Abigails"]["data"].as_array().unwrap(),
        "empId",
    );
    let expected: Vec<i64> = (0..50).map(|k| k * 20 + 1).collect();
    assert_eq!(abigails, expected);
    assert_eq!(resp["data"]["All"]["rowsFetched"], json!(1000));
    app.stop().await;
});
