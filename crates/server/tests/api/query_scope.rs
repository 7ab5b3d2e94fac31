//! Which rows and which datasource a query reaches: default filters with `params`, and a
//! datasource name defined by two apps (ambiguous without `appUid`).

use std::path::Path;

use serde_json::json;

use crate::helpers::*;
use crate::on_all;
use crate::query::{Qa, READER, ids_of, qa_dir};

on_all!(default_filters_and_params, |kind| async move {
    let qa = Qa::spawn(kind).await;
    // `ScopedNotes` is `Notes` with the default filter
    // [{"secret": {"notEmpty": ""}}, {"thingId": {"in": ":things"}}]: it may use the
    // non-queryable `secret`, and takes `:things` from the query's params.
    let qa_ref = &qa;
    let notes = |query: serde_json::Value| async move {
        let result = qa_ref.query("ScopedNotes", query).await;
        ids_of(result["data"].as_array().unwrap(), "noteId")
    };
    assert_eq!(notes(json!({"params": {"things": [1, 4]}})).await, [1, 2]);
    assert_eq!(
        notes(json!({"params": {"things": [4]}})).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        notes(json!({"params": {"things": []}})).await,
        Vec::<i64>::new()
    );
    // The client's filter is ANDed after the default filter.
    assert_eq!(
        notes(json!({"params": {"things": [1, 4]}, "filter": [{"body": {"is": "second"}}]})).await,
        [2]
    );
    assert_eq!(
        notes(json!({"params": {"things": [1, 4]}, "filter": [{"body": {"is": "third"}}]})).await,
        Vec::<i64>::new()
    );
    // A ":name" string in the client's own filter is an ordinary value (were it replaced by
    // the array, `nin` on a String would refuse it).
    assert_eq!(
        notes(json!({"params": {"things": [1, 4]}, "filter": [{"body": {"nin": [":things"]}}]}))
            .await,
        [1, 2]
    );
    // Even with `or`, the client cannot widen the default filter.
    assert_eq!(
        notes(json!({"params": {"things": [1]},
                     "filter": [{"or": [{"noteId": {"eq": 3}}, {"noteId": {"notNull": ""}}]}]}))
        .await,
        [1, 2]
    );
    let result = qa
        .query(
            "ScopedNotes",
            json!({"params": {"things": [1, 4]}, "count": true, "limit": 1}),
        )
        .await;
    assert_eq!(result["totalCount"], json!(2));
    assert_eq!(result["rowsFetched"], json!(1));
    // `secret` stays unreadable.
    let result = qa
        .query("ScopedNotes", json!({"params": {"things": [1]}}))
        .await;
    assert!(!result.to_string().contains("secret"), "{result}");
    qa.bad(
        "ScopedNotes",
        json!({"params": {"things": [1]}, "filter": [{"secret": {"is": "top secret 1"}}]}),
        &["unknown attribute `secret`"],
    )
    .await;
    // A missing param, or one of the wrong shape, is a 400.
    qa.bad("ScopedNotes", json!({}), &["missing param `things`"])
        .await;
    qa.bad(
        "ScopedNotes",
        json!({"params": {"other": [1]}}),
        &["missing param `things`"],
    )
    .await;
    qa.bad(
        "ScopedNotes",
        json!({"params": {"things": 1}}),
        &["operator `in` on `thingId`"],
    )
    .await;
    qa.bad(
        "ScopedNotes",
        json!({"params": {"things": ["1"]}}),
        &["operator `in` on `thingId`"],
    )
    .await;
    qa.bad("ScopedNotes", json!({"params": [1]}), &["`params`"])
        .await;
    // `data` (context for scripts) is accepted and ignored by the query.
    assert_eq!(
        notes(json!({"params": {"things": [1]}, "data": {"thingId": 4, "any": ["json"]}})).await,
        [1, 2]
    );
    qa.stop().await;
});

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

on_all!(a_name_in_two_apps_needs_app_uid, |kind| async move {
    // A second app, `qa_copy`: the fixture under another appUid (its own schema and rows).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&qa_dir(), copy.path());
    std::fs::write(
        copy.path().join("app.json"),
        r#"{"appUid": "qa_copy", "name": "QA copy"}"#,
    )
    .unwrap();
    let copy_path = copy.path().to_path_buf();
    let qa = Qa::spawn_with(kind, move |c| c.app_dirs.push(copy_path)).await;
    qa.app
        .app_sql(
            "qa_copy",
            "INSERT INTO THINGS (THING_ID, NAME, CATEGORY) VALUES (23, 'only in the copy', 'copy')",
        )
        .await;
    let count = |app: Option<&str>| {
        let mut alias = json!({"ds": "Things", "query": {"count": true, "limit": 0}});
        if let Some(app) = app {
            alias["appUid"] = json!(app);
        }
        json!({ "A": alias })
    };
    // The reader holds a role in `qa` only: no ambiguity.
    let (s, r) = qa.post(&count(None)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["A"]["totalCount"], json!(22));
    let (s, r) = qa.post(&count(Some("qa_copy"))).await;
    assert_envelope(s, &r, 403);
    // With a role in both, the bare name is ambiguous; `appUid` picks one.
    qa.app
        .state
        .store
        .grant_role("cloudio", READER, "qa_copy", "qa_reader", "test")
        .await
        .unwrap();
    let reader = qa.app.login(READER, crate::query::READER_PW).await;
    let (s, r) = qa.app.api(&reader, &count(None)).await;
    assert_envelope(s, &r, 400);
    let message = r["message"].as_str().unwrap();
    for needle in ["A: ", "`Things`", "qa", "qa_copy", "`appUid`"] {
        assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    }
    let (s, r) = qa.app.api(&reader, &count(Some("qa"))).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["A"]["totalCount"], json!(22));
    let (s, r) = qa.app.api(&reader, &count(Some("qa_copy"))).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["A"]["totalCount"], json!(23));
    // Both in one request, each under its alias.
    let (s, r) = qa
        .app
        .api(
            &reader,
            &json!({
                "Original": {"ds": "Things", "appUid": "qa",
                             "query": {"filter": [{"category": {"is": "copy"}}]}},
                "Copy": {"ds": "Things", "appUid": "qa_copy",
                         "query": {"filter": [{"category": {"is": "copy"}}],
                                   "projection": {"thingId": 1, "name": 1}}}
            }),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["Original"]["data"], json!([]));
    assert_eq!(
        r["data"]["Copy"]["data"],
        json!([{"thingId": 23, "name": "only in the copy", "_rs": "Q"}])
    );
    // A name in neither app is still a 403.
    let (s, r) = qa
        .app
        .api(&reader, &json!({"A": {"ds": "Nope", "query": {}}}))
        .await;
    assert_envelope(s, &r, 403);
    qa.stop().await;
});
