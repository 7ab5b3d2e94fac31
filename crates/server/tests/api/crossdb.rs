//! SQLite, PostgreSQL and MySQL/MariaDB return the same rows for the same data: random filter
//! trees with hostile strings, run against the three databases through the API.

use std::collections::BTreeSet;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};

use crate::helpers::*;

/// Hostile and tricky strings, as data and as needles. No NUL (PostgreSQL refuses it in text;
/// that is a 400, tested elsewhere), and no non-ASCII letters whose case differs only outside
/// ASCII (SQLite folds ASCII case only; documented).
const WORDS: &[&str] = &[
    "Steve",
    "steve",
    "STEVE",
    "O'Brien",
    "o'brien",
    "back\\slash",
    "100%",
    "100",
    "under_score",
    "underXscore",
    "ex!cl",
    "ex!!cl",
    "日本語",
    "naïve",
    "' OR 1=1 --",
    "\"quoted\"",
    "%",
    "_",
    "!",
    "'; DROP TABLE CONTACTS; --",
    "a",
    "ab",
    "Ab",
    "",
];

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/posts")
}

async fn spawn(kind: Kind) -> (TestApp, Login) {
    let db = TestDb::new(kind).await;
    let config = server::Config {
        app_dirs: vec![fixture()],
        ..db.config()
    };
    let app = TestApp::spawn_on(db, config).await;
    app.state
        .store
        .grant_role("cloudio", "admin", "posts", "writer", "test")
        .await
        .unwrap();
    let admin = app.admin().await;
    let rows: Vec<Value> = (0..WORDS.len() * 2)
        .map(|i| {
            let name = format!("{}{}", WORDS[i % WORDS.len()], if i >= WORDS.len() { " x" } else { "" });
            let name = if name.is_empty() { "-".to_string() } else { name };
            json!({"_rs": "I", "name": name, "age": if i % 7 == 3 { Value::Null } else { json!(i as i64 - 10) },
                   "vip": if i % 3 == 0 { "Y" } else { "N" }, "verified": i % 2 == 0,
                   "birthday": if i % 5 == 0 { Value::Null } else { json!(format!("2020-0{}-1{}", 1 + i % 9, i % 10)) }})
        })
        .collect();
    let (s, b) = app
        .api(&admin, &json!({"c": {"ds": "Contacts", "data": rows}}))
        .await;
    assert_eq!(s, 200, "{b}");
    (app, admin)
}

fn word() -> impl Strategy<Value = Value> {
    prop::sample::select(WORDS).prop_map(|w| json!(w))
}

fn words() -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::sample::select(WORDS), 0..4).prop_map(|v| json!(v))
}

fn leaf() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        (
            prop::sample::select(&["is", "not", "like", "nct", "sw", "ew"][..]),
            word()
        )
            .prop_map(|(op, v)| json!({"name": {op: v}})),
        (
            prop::sample::select(&["in", "nin", "hasAll", "hasAny", "notAny"][..]),
            words()
        )
            .prop_map(|(op, v)| json!({"name": {op: v}})),
        prop::sample::select(&["empty", "notEmpty"][..]).prop_map(|op| json!({"name": {op: ""}})),
    ];
    let age = prop_oneof![
        (
            prop::sample::select(&["eq", "ne", "gt", "gte", "lt", "lte"][..]),
            -12i64..40
        )
            .prop_map(|(op, v)| json!({"age": {op: v}})),
        (
            prop::sample::select(&["in", "nin"][..]),
            prop::collection::vec(-12i64..40, 0..4)
        )
            .prop_map(|(op, v)| json!({"age": {op: v}})),
        (-12i64..40, 0i64..20).prop_map(|(a, d)| json!({"age": {"bn": [a, a + d]}})),
        prop::sample::select(&["null", "notNull"][..]).prop_map(|op| json!({"age": {op: true}})),
    ];
    let other = prop_oneof![
        prop::sample::select(&["Y", "N"][..]).prop_map(|v| json!({"vip": {"is": v}})),
        any::<bool>().prop_map(|v| json!({"verified": {"eq": v}})),
        (
            prop::sample::select(&["on", "notOn", "before", "after", "onOrBefore"][..]),
            1u32..10,
            0u32..10
        )
            .prop_map(|(op, m, d)| json!({"birthday": {op: format!("2020-0{m}-1{d}")}})),
    ];
    prop_oneof![name, age, other]
}

fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"and": v})),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"or": v})),
            inner.prop_map(|f| json!({"not": f})),
        ]
    })
}

fn ages(b: &Value) -> BTreeSet<String> {
    b["data"]["q"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}|{}", r["name"], r["age"]))
        .collect()
}

#[test]
fn the_three_databases_return_the_same_rows_for_random_filters() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ((lite, lite_admin), (pg, pg_admin), (my, my_admin)) = rt.block_on(async {
        (
            spawn(Kind::Sqlite).await,
            spawn(Kind::Postgres).await,
            spawn(Kind::Mysql).await,
        )
    });
    let mut runner = TestRunner::new(PropConfig {
        cases: 300,
        ..PropConfig::default()
    });
    let nonempty = std::cell::Cell::new(0);
    runner
        .run(&prop::collection::vec(tree(), 1..3), |filter| {
            let body = json!({"q": {"ds": "Contacts", "query": {"filter": filter, "limit": 1000,
                "projection": {"name": 1, "age": 1}}}});
            let ((s1, b1), (s2, b2), (s3, b3)) = rt.block_on(async {
                tokio::join!(
                    lite.api(&lite_admin, &body),
                    pg.api(&pg_admin, &body),
                    my.api(&my_admin, &body)
                )
            });
            prop_assert_eq!(s1, 200, "{}", b1);
            prop_assert_eq!(s2, 200, "{}", b2);
            prop_assert_eq!(s3, 200, "{}", b3);
            let (a, b, c) = (ages(&b1), ages(&b2), ages(&b3));
            if !a.is_empty() {
                nonempty.set(nonempty.get() + 1);
            }
            prop_assert_eq!(&a, &b, "SQLite and PostgreSQL, filter {}", body);
            prop_assert_eq!(&a, &c, "SQLite and MySQL, filter {}", body);
            Ok(())
        })
        .unwrap();
    let nonempty = nonempty.get();
    assert!(
        nonempty > 30,
        "the generated filters should often match rows ({nonempty}/300)"
    );
    rt.block_on(async {
        lite.stop().await;
        pg.stop().await;
        my.stop().await;
    });
}
