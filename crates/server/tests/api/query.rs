//! Queries through `POST /v1/api` over the `qa` fixture app (`tests/fixtures/qa`): every filter
//! operator of every family against hand-computed answers, on SQLite and on PostgreSQL.
//! Projection, sorting, paging, grouping and the response shape are in `query_shape.rs`;
//! refusals (400/401/403) and hostile input in `query_errors.rs`.
//!
//! The `Things` rows, inserted by the fixture's migrations (the same in both dialects). Every
//! expected answer below was derived by hand from this table; change a row and re-derive them.
//!
//! ```text
//! id name         category qty   price  active madeOn     seenAt                       enabled details
//!  1 Apple        fruit     10    1.25  Y      2024-01-15 2024-01-15T08:30:00.123456Z  true    {"color":"red"}
//!  2 apple        fruit     10    1.25  Y      2024-01-15 2024-01-15T08:30:00.123457Z  true    {"color":"green"}
//!  3 APPLE pie    baked      3    7.50  N      2024-02-29 2024-02-29T23:59:59.999999Z  false   -
//!  4 Banana       fruit     25    0.25  Y      2024-03-01 2024-03-01T00:00:00.000000Z  true    {"ripe":true}
//!  5 -            misc       -       -  -      -          -                            -       -
//!  6 100%         promo    100   99.75  Y      2023-12-31 2023-12-31T23:59:59.000001Z  false   []
//!  7 1000         promo   1000 1000     N      2025-06-30 2025-06-30T12:00:00.500000Z  true    {"n":1000}
//!  8 a_b          code       0    0     N      2024-01-14 2024-01-14T00:00:00.000000Z  false   -
//!  9 axb          code      -5   -2.50  -      2024-01-16 2024-01-15T08:30:00.123456Z  -       -
//! 10 Hi!          greeting   1    2     Y      2024-06-01 -                            true    {"lang":"en"}
//! 11 Hi!!         greeting   2    2     Y      2024-06-01 2024-06-01T10:00:00.000000Z  -       -
//! 12 O'Brien      person     7    3.50  N      -          2024-01-15T08:30:00.123455Z  false   -
//! 13 say "hi"     quote      7       -  Y      2024-01-15 -                            true    -
//! 14 C:\temp      path       -   12.25  N      2022-02-02 2022-02-02T02:02:02.020202Z  false   -
//! 15 Ünïcödé      unicode   15   15     Y      2024-01-15 2024-01-15T00:00:00.000000Z  true    {"u":"Ü"}
//! 16 ünïcödé      unicode   16   16     N      2024-01-16 2024-01-16T00:00:00.000000Z  false   -
//! 17 日本         unicode   17   17     Y      2024-01-17 2024-01-17T09:00:00.000000Z  -       -
//! 18 cherry tart  baked      3    4.75  Y      2024-02-28 2024-02-28T12:00:00.000000Z  true    -
//! 19 Cherry       fruit      3    0.50  -      2024-03-01 2024-02-29T00:00:00.000000Z  true    -
//! 20 -            misc       0       -  N      2024-01-14 -                            false   -
//! 21 wow!%_       promo     50   50.50  Y      2024-12-31 2024-12-31T23:59:59.999999Z  true    {"x":[1,2]}
//! 22 Date Palm    fruit     10    1.25  Y      2024-01-15 2024-01-15T08:30:00.123456Z  true    -
//! ```
//! (`-` is NULL.) `email` is set on rows 1 apple@, 3 pie@, 6 promo@, 8 ab@, 10 hi@,
//! 12 obrien@, 21 wow@ (all `@example.com`). WHO columns: created by `seed` at
//! 2024-01-01T00:00:00.000000Z; last updated by `seed` at 2024-01-02T03:04:05.678901Z, except
//! row 1: by `editor` at 2024-05-06T07:08:09.000001Z.
//!
//! `Notes` (noteId, thingId, body, secret — `secret` is not queryable): (1, 1, first, top
//! secret 1), (2, 1, second, top secret 2), (3, 4, third, NULL). `ScopedNotes` is the same
//! table with a default filter (`secret` not empty, `thingId` in `:things`). `Events` (eventId,
//! eventDay: Date, eventAt: DateTime) is empty and filled by the relative-date test.

use std::path::PathBuf;

use chrono::{Days, NaiveDate, Utc};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_all;

pub const READER: &str = "reader";
pub const READER_PW: &str = "reader-password-1";

/// Every id of `Things`.
pub const ALL: [i64; 22] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
];

pub fn qa_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qa")
}

/// A server with the `qa` app loaded and a user `reader` holding `qa_reader`, logged in.
pub struct Qa {
    pub app: TestApp,
    pub kind: Kind,
    pub reader: Login,
}

impl Qa {
    pub async fn spawn(kind: Kind) -> Qa {
        Self::spawn_with(kind, |_| {}).await
    }

    /// As [`Qa::spawn`], with a changed configuration.
    pub async fn spawn_with(kind: Kind, change: impl FnOnce(&mut server::Config)) -> Qa {
        let db = TestDb::new(kind).await;
        let mut config = db.config();
        config.app_dirs = vec![qa_dir()];
        change(&mut config);
        let app = TestApp::spawn_on(db, config).await;
        app.create_user(READER, READER_PW).await;
        app.state
            .store
            .grant_role("cloudio", READER, "qa", "qa_reader", "test")
            .await
            .expect("grant qa_reader");
        let reader = app.login(READER, READER_PW).await;
        Qa { app, kind, reader }
    }

    /// Creates a user holding these `qa` roles and logs it in.
    pub async fn user_with(&self, user: &str, roles: &[&str]) -> Login {
        let pw = format!("{user}-password-1");
        self.app.create_user(user, &pw).await;
        for role in roles {
            self.app
                .state
                .store
                .grant_role("cloudio", user, "qa", role, "test")
                .await
                .expect("grant");
        }
        self.app.login(user, &pw).await
    }

    /// `POST /v1/api` as `reader`.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.app.api(&self.reader, body).await
    }

    /// One alias `A` querying `ds`; asserts 200 and returns the alias's result.
    pub async fn query(&self, ds: &str, query: Value) -> Value {
        let body = json!({"A": {"ds": ds, "query": query}});
        let (status, resp) = self.post(&body).await;
        assert_eq!(status, 200, "{body} -> {resp}");
        assert_eq!(resp["status"], "OK", "{resp}");
        resp["data"]["A"].clone()
    }

    /// The rows of a query on `Things`.
    pub async fn rows(&self, query: Value) -> Vec<Value> {
        let result = self.query("Things", query).await;
        result["data"].as_array().expect("data array").clone()
    }

    /// The `thingId`s a query on `Things` returns, in order.
    pub async fn ids(&self, query: Value) -> Vec<i64> {
        ids_of(&self.rows(query).await, "thingId")
    }

    /// Asserts that this one filter item selects exactly `expected` (ascending ids) of `Things`.
    pub async fn check(&self, filter: Value, expected: &[i64]) {
        self.check_ds("Things", "thingId", filter, expected).await;
    }

    /// As [`Qa::check`], on any datasource with an integer key `key`.
    pub async fn check_ds(&self, ds: &str, key: &str, filter: Value, expected: &[i64]) {
        let query = json!({"filter": [filter], "projection": {key: 1}, "limit": 1000});
        let result = self.query(ds, query).await;
        let mut got = ids_of(result["data"].as_array().expect("data"), key);
        got.sort_unstable();
        assert_eq!(
            got, expected,
            "{ds} filter {filter} on {:?}: got {got:?}, expected {expected:?}",
            self.kind
        );
        assert_eq!(result["rowsFetched"], json!(expected.len()), "{filter}");
    }

    /// Asserts a 400 `Invalid Request` whose message names the alias `A` and every needle.
    pub async fn bad(&self, ds: &str, query: Value, needles: &[&str]) {
        let body = json!({"A": {"ds": ds, "query": query}});
        let (status, resp) = self.post(&body).await;
        assert_envelope(status, &resp, 400);
        assert_eq!(resp["title"], "Invalid Request", "{body} -> {resp}");
        let message = resp["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("A: "), "{body} -> {message}");
        for n in needles {
            assert!(message.contains(n), "{body}: `{message}` lacks `{n}`");
        }
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

/// The integer `key` of every row, in order.
pub fn ids_of(rows: &[Value], key: &str) -> Vec<i64> {
    rows.iter()
        .map(|r| {
            r[key]
                .as_i64()
                .unwrap_or_else(|| panic!("row without integer `{key}`: {r}"))
        })
        .collect()
}

on_all!(string_operators, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // PostgreSQL's ILIKE (UTF-8 locale) and MySQL's lower-cased LIKE fold all of Unicode;
    // SQLite's LIKE folds ASCII only.
    let pg = kind != Kind::Sqlite;

    // is: exact and case-sensitive; quotes, backslashes and Unicode round-trip.
    qa.check(json!({"name": {"is": "apple"}}), &[2]).await;
    qa.check(json!({"name": {"is": "Apple"}}), &[1]).await;
    qa.check(json!({"name": {"is": "APPLE"}}), &[]).await;
    qa.check(json!({"name": {"is": "O'Brien"}}), &[12]).await;
    qa.check(json!({"name": {"is": "say \"hi\""}}), &[13]).await;
    qa.check(json!({"name": {"is": "C:\\temp"}}), &[14]).await;
    qa.check(json!({"name": {"is": "Ünïcödé"}}), &[15]).await;
    qa.check(json!({"name": {"is": "ünïcödé"}}), &[16]).await;
    qa.check(json!({"name": {"is": "日本"}}), &[17]).await;
    qa.check(json!({"name": {"is": "100%"}}), &[6]).await;
    qa.check(json!({"name": {"is": "a_b"}}), &[8]).await;
    qa.check(json!({"name": {"is": "wow!%_"}}), &[21]).await;
    qa.check(json!({"name": {"is": "no such name"}}), &[]).await;

    // not: everything else, NULL names (5, 20) included.
    qa.check(
        json!({"name": {"not": "apple"}}),
        &[
            1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ],
    )
    .await;

    // empty / notEmpty: the value is ignored.
    qa.check(json!({"name": {"empty": ""}}), &[5, 20]).await;
    qa.check(json!({"name": {"empty": "ignored"}}), &[5, 20])
        .await;
    qa.check(
        json!({"name": {"notEmpty": ""}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22,
        ],
    )
    .await;

    // like: contains, case-insensitive on ASCII; %, _ and ! match literally.
    qa.check(json!({"name": {"like": "apple"}}), &[1, 2, 3])
        .await;
    qa.check(json!({"name": {"like": "PpL"}}), &[1, 2, 3]).await;
    qa.check(json!({"name": {"like": "100%"}}), &[6]).await;
    qa.check(json!({"name": {"like": "%"}}), &[6, 21]).await;
    qa.check(json!({"name": {"like": "_"}}), &[8, 21]).await;
    qa.check(json!({"name": {"like": "a_b"}}), &[8]).await;
    qa.check(json!({"name": {"like": "!"}}), &[10, 11, 21])
        .await;
    qa.check(json!({"name": {"like": "!!"}}), &[11]).await;
    qa.check(json!({"name": {"like": "!%_"}}), &[21]).await;
    qa.check(json!({"name": {"like": "'"}}), &[12]).await;
    qa.check(json!({"name": {"like": "\""}}), &[13]).await;
    qa.check(json!({"name": {"like": "\\"}}), &[14]).await;
    qa.check(json!({"name": {"like": "hi"}}), &[10, 11, 13])
        .await;
    qa.check(json!({"name": {"like": "日"}}), &[17]).await;
    qa.check(
        json!({"name": {"like": "Ünïcödé"}}),
        if pg { &[15, 16][..] } else { &[15][..] },
    )
    .await;
    // Beyond ASCII, case-insensitivity is PostgreSQL's only (docs/query-language.md).
    qa.check(
        json!({"name": {"like": "ünï"}}),
        if pg { &[15, 16][..] } else { &[16][..] },
    )
    .await;
    qa.check(
        json!({"name": {"like": "ÜNÏCÖDÉ"}}),
        if pg { &[15, 16][..] } else { &[][..] },
    )
    .await;
    qa.check(
        json!({"name": {"like": ""}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22,
        ],
    )
    .await;

    // nct: does not contain, or NULL.
    qa.check(
        json!({"name": {"nct": "APPLE"}}),
        &[
            4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ],
    )
    .await;
    qa.check(
        json!({"name": {"nct": "%"}}),
        &[
            1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22,
        ],
    )
    .await;
    qa.check(
        json!({"name": {"nct": "_"}}),
        &[
            1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22,
        ],
    )
    .await;

    // sw / ew.
    qa.check(json!({"name": {"sw": "a"}}), &[1, 2, 3, 8, 9])
        .await;
    qa.check(json!({"name": {"sw": "A_"}}), &[8]).await;
    qa.check(json!({"name": {"sw": "hi!"}}), &[10, 11]).await;
    qa.check(json!({"name": {"sw": "1"}}), &[6, 7]).await;
    qa.check(json!({"name": {"sw": "100%"}}), &[6]).await;
    qa.check(json!({"name": {"sw": "c:\\"}}), &[14]).await;
    qa.check(json!({"name": {"sw": "日"}}), &[17]).await;
    qa.check(json!({"name": {"sw": "pie"}}), &[]).await;
    qa.check(json!({"name": {"ew": "!"}}), &[10, 11]).await;
    qa.check(json!({"name": {"ew": "_"}}), &[21]).await;
    qa.check(json!({"name": {"ew": "%_"}}), &[21]).await;
    qa.check(json!({"name": {"ew": "E"}}), &[1, 2, 3]).await;
    qa.check(json!({"name": {"ew": "RY"}}), &[19]).await;
    qa.check(json!({"name": {"ew": "本"}}), &[17]).await;

    // in / nin: exact.
    qa.check(
        json!({"name": {"in": ["apple", "Banana", "nope"]}}),
        &[2, 4],
    )
    .await;
    qa.check(json!({"name": {"in": ["APPLE"]}}), &[]).await;
    qa.check(json!({"name": {"in": []}}), &[]).await;
    qa.check(
        json!({"name": {"in": ["O'Brien", "C:\\temp", "日本"]}}),
        &[12, 14, 17],
    )
    .await;
    qa.check(
        json!({"name": {"nin": ["apple", "Banana"]}}),
        &[
            1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ],
    )
    .await;
    qa.check(json!({"name": {"nin": []}}), &ALL).await;

    // hasAll / hasAny / notAny: a list, or one string split on whitespace.
    qa.check(json!({"name": {"hasAll": "cherry TART"}}), &[18])
        .await;
    qa.check(json!({"name": {"hasAll": ["apple", "pie"]}}), &[3])
        .await;
    qa.check(json!({"name": {"hasAll": ["apple", "tart"]}}), &[])
        .await;
    qa.check(json!({"name": {"hasAll": "  "}}), &ALL).await;
    qa.check(json!({"name": {"hasAll": []}}), &ALL).await;
    qa.check(json!({"name": {"hasAny": ["pie", "TART"]}}), &[3, 18])
        .await;
    qa.check(json!({"name": {"hasAny": "banana 日本"}}), &[4, 17])
        .await;
    qa.check(json!({"name": {"hasAny": ["%", "!!"]}}), &[6, 11, 21])
        .await;
    qa.check(json!({"name": {"hasAny": []}}), &[]).await;
    qa.check(
        json!({"name": {"notAny": ["apple", "CHERRY"]}}),
        &[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21, 22],
    )
    .await;
    qa.check(
        json!({"name": {"notAny": "_ !"}}),
        &[
            1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22,
        ],
    )
    .await;
    qa.check(json!({"name": {"notAny": []}}), &ALL).await;
    qa.stop().await;
});

on_all!(email_and_yn_are_string_family, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // Email.
    qa.check(json!({"email": {"is": "apple@example.com"}}), &[1])
        .await;
    qa.check(
        json!({"email": {"like": "@EXAMPLE.com"}}),
        &[1, 3, 6, 8, 10, 12, 21],
    )
    .await;
    qa.check(json!({"email": {"ew": ".com"}}), &[1, 3, 6, 8, 10, 12, 21])
        .await;
    qa.check(json!({"email": {"sw": "p"}}), &[3, 6]).await;
    qa.check(
        json!({"email": {"in": ["hi@example.com", "HI@example.com"]}}),
        &[10],
    )
    .await;
    qa.check(
        json!({"email": {"empty": ""}}),
        &[2, 4, 5, 7, 9, 11, 13, 14, 15, 16, 17, 18, 19, 20, 22],
    )
    .await;
    qa.check(
        json!({"email": {"nct": "apple"}}),
        &[
            2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ],
    )
    .await;
    // YN.
    let yes = [1, 2, 4, 6, 10, 11, 13, 15, 17, 18, 21, 22];
    let not_yes = [3, 5, 7, 8, 9, 12, 14, 16, 19, 20];
    qa.check(json!({"activeFlag": {"is": "Y"}}), &yes).await;
    qa.check(json!({"activeFlag": {"is": "y"}}), &[]).await;
    qa.check(json!({"activeFlag": {"like": "y"}}), &yes).await;
    qa.check(json!({"activeFlag": {"not": "Y"}}), &not_yes)
        .await;
    qa.check(json!({"activeFlag": {"nin": ["Y"]}}), &not_yes)
        .await;
    qa.check(
        json!({"activeFlag": {"in": ["N"]}}),
        &[3, 7, 8, 12, 14, 16, 20],
    )
    .await;
    qa.check(json!({"activeFlag": {"empty": ""}}), &[5, 9, 19])
        .await;
    // A plain String column with a NOT NULL constraint.
    qa.check(
        json!({"category": {"in": ["fruit", "baked"]}}),
        &[1, 2, 3, 4, 18, 19, 22],
    )
    .await;
    qa.stop().await;
});

on_all!(number_operators, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // Integer `qty`.
    qa.check(json!({"qty": {"eq": 10}}), &[1, 2, 22]).await;
    qa.check(json!({"qty": {"eq": 0}}), &[8, 20]).await;
    qa.check(json!({"qty": {"eq": -5}}), &[9]).await;
    qa.check(json!({"qty": {"eq": 999}}), &[]).await;
    qa.check(
        json!({"qty": {"ne": 10}}),
        &[
            3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
        ],
    )
    .await;
    qa.check(json!({"qty": {"null": ""}}), &[5, 14]).await;
    qa.check(json!({"qty": {"null": true}}), &[5, 14]).await;
    let not_null = [
        1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22,
    ];
    qa.check(json!({"qty": {"notNull": ""}}), &not_null).await;
    qa.check(json!({"qty": {"gt": 16}}), &[4, 6, 7, 17, 21])
        .await;
    qa.check(json!({"qty": {"gte": 16}}), &[4, 6, 7, 16, 17, 21])
        .await;
    qa.check(json!({"qty": {"lt": 1}}), &[8, 9, 20]).await;
    qa.check(json!({"qty": {"lte": 1}}), &[8, 9, 10, 20]).await;
    qa.check(json!({"qty": {"gt": i64::MIN}}), &not_null).await;
    qa.check(json!({"qty": {"gte": i64::MAX}}), &[]).await;
    qa.check(json!({"qty": {"in": [3, 7, 999]}}), &[3, 12, 13, 18, 19])
        .await;
    qa.check(json!({"qty": {"in": []}}), &[]).await;
    qa.check(
        json!({"qty": {"nin": [3, 7]}}),
        &[1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16, 17, 20, 21, 22],
    )
    .await;
    qa.check(json!({"qty": {"nin": []}}), &ALL).await;
    qa.check(
        json!({"qty": {"bn": [2, 10]}}),
        &[1, 2, 3, 11, 12, 13, 18, 19, 22],
    )
    .await;
    qa.check(json!({"qty": {"bn": [-5, 0]}}), &[8, 9, 20]).await;
    // Several operators on one attribute are ANDed.
    qa.check(json!({"qty": {"gte": 3, "lt": 10}}), &[3, 12, 13, 18, 19])
        .await;

    // Decimal `price`: compared as numbers (12.25 > 12.2 although "12.2" < "12.25" < "2").
    qa.check(json!({"price": {"eq": 1.25}}), &[1, 2, 22]).await;
    qa.check(json!({"price": {"eq": 2}}), &[10, 11]).await;
    qa.check(json!({"price": {"eq": 1000}}), &[7]).await;
    qa.check(
        json!({"price": {"ne": 1.25}}),
        &[
            3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
        ],
    )
    .await;
    qa.check(json!({"price": {"null": ""}}), &[5, 13, 20]).await;
    qa.check(
        json!({"price": {"notNull": ""}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 21, 22,
        ],
    )
    .await;
    qa.check(json!({"price": {"gt": 15}}), &[6, 7, 16, 17, 21])
        .await;
    qa.check(json!({"price": {"gte": 15}}), &[6, 7, 15, 16, 17, 21])
        .await;
    qa.check(json!({"price": {"gt": 12.2}}), &[6, 7, 14, 15, 16, 17, 21])
        .await;
    qa.check(json!({"price": {"lt": 0.5}}), &[4, 8, 9]).await;
    qa.check(json!({"price": {"lte": 0.5}}), &[4, 8, 9, 19])
        .await;
    qa.check(json!({"price": {"bn": [0.25, 1.25]}}), &[1, 2, 4, 19, 22])
        .await;
    qa.check(json!({"price": {"in": [0.25, 99.75]}}), &[4, 6])
        .await;
    qa.check(
        json!({"price": {"nin": [1.25, 2]}}),
        &[3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    )
    .await;
    qa.stop().await;
});

on_all!(boolean_and_json_operators, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let yes = [1, 2, 4, 7, 10, 13, 15, 18, 19, 21, 22];
    let no = [3, 6, 8, 12, 14, 16, 20];
    qa.check(json!({"enabled": {"eq": true}}), &yes).await;
    qa.check(json!({"enabled": {"eq": false}}), &no).await;
    qa.check(
        json!({"enabled": {"ne": true}}),
        &[3, 5, 6, 8, 9, 11, 12, 14, 16, 17, 20],
    )
    .await;
    qa.check(
        json!({"enabled": {"ne": false}}),
        &[1, 2, 4, 5, 7, 9, 10, 11, 13, 15, 17, 18, 19, 21, 22],
    )
    .await;
    qa.check(json!({"enabled": {"null": ""}}), &[5, 9, 11, 17])
        .await;
    qa.check(
        json!({"enabled": {"notNull": ""}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 10, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22,
        ],
    )
    .await;
    // JSON: only null / notNull. An empty array is not NULL.
    qa.check(
        json!({"details": {"notNull": ""}}),
        &[1, 2, 4, 6, 7, 10, 15, 21],
    )
    .await;
    qa.check(
        json!({"details": {"null": ""}}),
        &[3, 5, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22],
    )
    .await;
    qa.stop().await;
});

on_all!(date_operators, |kind| async move {
    let qa = Qa::spawn(kind).await;
    qa.check(json!({"madeOn": {"on": "2024-01-15"}}), &[1, 2, 13, 15, 22])
        .await;
    qa.check(json!({"madeOn": {"on": "2024-02-29"}}), &[3])
        .await;
    qa.check(
        json!({"madeOn": {"notOn": "2024-01-15"}}),
        &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17, 18, 19, 20, 21],
    )
    .await;
    qa.check(json!({"madeOn": {"before": "2024-01-15"}}), &[6, 8, 14, 20])
        .await;
    qa.check(
        json!({"madeOn": {"after": "2024-03-01"}}),
        &[4, 7, 10, 11, 19, 21],
    )
    .await;
    qa.check(
        json!({"madeOn": {"onOrBefore": "2024-01-14"}}),
        &[6, 8, 14, 20],
    )
    .await;
    qa.check(
        json!({"madeOn": {"onOrBefore": "2024-01-15"}}),
        &[1, 2, 6, 8, 13, 14, 15, 20, 22],
    )
    .await;
    qa.check(
        json!({"madeOn": {"bn": ["2024-01-16", "2024-02-29"]}}),
        &[3, 9, 16, 17, 18],
    )
    .await;
    qa.check(json!({"madeOn": {"null": ""}}), &[5, 12]).await;
    qa.check(
        json!({"madeOn": {"notNull": ""}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ],
    )
    .await;
    qa.stop().await;
});

on_all!(datetime_operators, |kind| async move {
    let qa = Qa::spawn(kind).await;
    let at = "2024-01-15T08:30:00.123456Z";
    qa.check(json!({"seenAt": {"on": at}}), &[1, 9, 22]).await;
    // Any offset, normalised to UTC; beyond microseconds truncated.
    qa.check(
        json!({"seenAt": {"on": "2024-01-15T14:00:00.123456+05:30"}}),
        &[1, 9, 22],
    )
    .await;
    qa.check(
        json!({"seenAt": {"on": "2024-01-15T08:30:00.1234569Z"}}),
        &[1, 9, 22],
    )
    .await;
    qa.check(json!({"seenAt": {"on": "2024-01-15T08:30:00.123Z"}}), &[])
        .await;
    qa.check(
        json!({"seenAt": {"on": "2024-01-15T08:30:00.123457Z"}}),
        &[2],
    )
    .await;
    qa.check(
        json!({"seenAt": {"notOn": at}}),
        &[
            2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
        ],
    )
    .await;
    qa.check(json!({"seenAt": {"before": at}}), &[6, 8, 12, 14, 15])
        .await;
    qa.check(
        json!({"seenAt": {"after": at}}),
        &[1, 2, 3, 4, 7, 9, 11, 16, 17, 18, 19, 21, 22],
    )
    .await;
    qa.check(
        json!({"seenAt": {"onOrBefore": at}}),
        &[1, 6, 8, 9, 12, 14, 15, 22],
    )
    .await;
    // A bare date is midnight UTC.
    qa.check(json!({"seenAt": {"after": "2024-03-01"}}), &[4, 7, 11, 21])
        .await;
    qa.check(
        json!({"seenAt": {"after": "2024-03-01T05:30:00+05:30"}}),
        &[4, 7, 11, 21],
    )
    .await;
    let before_march = [1, 2, 3, 6, 8, 9, 12, 14, 15, 16, 17, 18, 19, 22];
    qa.check(json!({"seenAt": {"before": "2024-03-01"}}), &before_march)
        .await;
    qa.check(
        json!({"seenAt": {"onOrBefore": "2024-02-29T23:59:59.999999Z"}}),
        &before_march,
    )
    .await;
    // bn with bare dates stops at the first instant of the last day (16 is exactly that).
    qa.check(
        json!({"seenAt": {"bn": ["2024-01-15", "2024-01-16"]}}),
        &[1, 2, 9, 12, 15, 16, 22],
    )
    .await;
    qa.check(
        json!({"seenAt": {"bn": ["2024-02-29T00:00:00Z", "2024-02-29T23:59:59.999999Z"]}}),
        &[3, 19],
    )
    .await;
    qa.check(json!({"seenAt": {"null": ""}}), &[5, 10, 13, 20])
        .await;
    qa.check(
        json!({"seenAt": {"notNull": ""}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 21, 22,
        ],
    )
    .await;
    // WHO columns are DateTime / String attributes like any other.
    qa.check(json!({"lastUpdateDate": {"after": "2024-05-01"}}), &[1])
        .await;
    qa.check(json!({"lastUpdatedBy": {"is": "editor"}}), &[1])
        .await;
    qa.check(json!({"createdBy": {"not": "seed"}}), &[]).await;
    qa.stop().await;
});

fn day(d: NaiveDate, offset: i64) -> NaiveDate {
    if offset >= 0 {
        d.checked_add_days(Days::new(offset.unsigned_abs()))
    } else {
        d.checked_sub_days(Days::new(offset.unsigned_abs()))
    }
    .expect("date in range")
}

on_all!(relative_date_operators, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // Rows relative to today (UTC), inserted behind the server's back. Should the date change
    // while the test runs (midnight UTC), the rows are made again for the new day.
    for attempt in 0..2 {
        let today = Utc::now().date_naive();
        let rows: [(i64, i64, &str); 8] = [
            (1, -3, "12:00:00.000000"),
            (2, -1, "23:59:59.999999"),
            (3, 0, "00:00:00.000000"),
            (4, 0, "23:59:59.999999"),
            (5, 1, "00:00:00.000000"),
            (6, 2, "23:59:59.999999"),
            (7, 3, "00:00:00.000000"),
            (9, -2, "00:00:00.000000"),
        ];
        let mut sql = String::from("DELETE FROM EVENTS;\n");
        for (id, offset, time) in rows {
            let d = day(today, offset);
            // MySQL's DATETIME takes no zone (its sessions run in UTC).
            let at = if kind == Kind::Mysql {
                format!("{d} {time}")
            } else {
                format!("{d}T{time}Z")
            };
            sql.push_str(&format!(
                "INSERT INTO EVENTS (EVENT_ID, EVENT_DAY, EVENT_AT) VALUES ({id}, '{d}', '{at}');\n"
            ));
        }
        sql.push_str(
            "INSERT INTO EVENTS (EVENT_ID, EVENT_DAY, EVENT_AT) VALUES (8, NULL, NULL);\n",
        );
        qa.app.app_sql("qa", &sql).await;

        let cases: [(&str, Value, &[i64]); 9] = [
            ("today", json!(""), &[3, 4]),
            ("lastNDays", json!(0), &[3, 4]),
            ("lastNDays", json!(1), &[2, 3, 4]),
            ("lastNDays", json!(2), &[2, 3, 4, 9]),
            ("lastNDays", json!(3), &[1, 2, 3, 4, 9]),
            ("nextNDays", json!(0), &[3, 4]),
            ("nextNDays", json!(1), &[3, 4, 5]),
            ("nextNDays", json!(2), &[3, 4, 5, 6]),
            ("nextNDays", json!(3), &[3, 4, 5, 6, 7]),
        ];
        for attr in ["eventDay", "eventAt"] {
            for (op, value, expected) in &cases {
                qa.check_ds(
                    "Events",
                    "eventId",
                    json!({attr: {*op: value.clone()}}),
                    expected,
                )
                .await;
            }
            qa.check_ds(
                "Events",
                "eventId",
                json!({"not": {attr: {"today": ""}}}),
                &[1, 2, 5, 6, 7, 8, 9],
            )
            .await;
        }
        qa.check_ds(
            "Events",
            "eventId",
            json!({"eventDay": {"on": today.to_string()}}),
            &[3, 4],
        )
        .await;
        if Utc::now().date_naive() == today {
            break;
        }
        assert_eq!(attempt, 0, "the date changed twice during the test");
    }
    qa.stop().await;
});

on_all!(and_or_not, |kind| async move {
    let qa = Qa::spawn(kind).await;
    qa.check(
        json!({"or": [{"qty": {"eq": 10}}, {"name": {"is": "Banana"}}]}),
        &[1, 2, 4, 22],
    )
    .await;
    qa.check(
        json!({"and": [{"category": {"is": "fruit"}}, {"qty": {"gte": 10}}]}),
        &[1, 2, 4, 22],
    )
    .await;
    qa.check(json!({"or": []}), &[]).await;
    qa.check(json!({"and": []}), &ALL).await;
    // `not` includes the rows where the inner filter is unknown (NULL).
    qa.check(
        json!({"not": {"name": {"is": "apple"}}}),
        &[
            1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ],
    )
    .await;
    qa.check(
        json!({"not": {"qty": {"gt": 5}}}),
        &[3, 5, 8, 9, 10, 11, 14, 18, 19, 20],
    )
    .await;
    qa.check(
        json!({"not": {"not": {"qty": {"gt": 5}}}}),
        &[1, 2, 4, 6, 7, 12, 13, 15, 16, 17, 21, 22],
    )
    .await;
    qa.check(
        json!({"not": {"price": {"null": ""}}}),
        &[
            1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 21, 22,
        ],
    )
    .await;
    qa.check(
        json!({"not": {"or": [{"activeFlag": {"is": "N"}}, {"qty": {"gt": 20}}]}}),
        &[1, 2, 5, 9, 10, 11, 13, 15, 17, 18, 19, 22],
    )
    .await;
    qa.check(
        json!({"not": {"qty": {"gte": 3, "lt": 10}}}),
        &[1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16, 17, 20, 21, 22],
    )
    .await;
    // Inside an operator object `not` is the string operator.
    qa.check(json!({"not": {"name": {"not": "apple"}}}), &[2])
        .await;
    qa.check(
        json!({"or": [{"enabled": {"eq": false}}, {"enabled": {"null": ""}}]}),
        &[3, 5, 6, 8, 9, 11, 12, 14, 16, 17, 20],
    )
    .await;
    // Nested three levels.
    qa.check(
        json!({"and": [
            {"or": [{"category": {"is": "fruit"}}, {"category": {"is": "baked"}}]},
            {"not": {"or": [{"activeFlag": {"is": "N"}}, {"price": {"lt": 1}}]}}
        ]}),
        &[1, 2, 18, 22],
    )
    .await;
    // Several attributes in one item, and several items in the list, are ANDed.
    qa.check(
        json!({"category": {"is": "fruit"}, "activeFlag": {"is": "Y"}}),
        &[1, 2, 4, 22],
    )
    .await;
    let ids = qa
        .ids(json!({
            "filter": [{"category": {"in": ["fruit", "baked"]}}, {"enabled": {"eq": true}}],
            "sort": {"thingId": 1}
        }))
        .await;
    assert_eq!(ids, [1, 2, 4, 18, 19, 22]);
    // 32 levels are allowed (the default cap); an even number of `not`s is the item itself,
    // without the NULL rows.
    let mut deep = json!({"qty": {"eq": 10}});
    for _ in 0..32 {
        deep = json!({ "not": deep });
    }
    qa.check(deep, &[1, 2, 22]).await;
    qa.stop().await;
});
