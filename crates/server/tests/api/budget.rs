//! The per-request budget (rows asked for across aliases, bytes answered) and fairness between
//! users (one user's burst queues behind itself, not in front of everybody).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Kind, TestApp, TestDb, assert_envelope};
use crate::on_all;

on_all!(
    rows_asked_for_across_aliases_are_bounded,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let config = server::Config {
            demo: true,
            ..db.config()
        };
        let app = TestApp::spawn_on(db, config).await;
        let admin = app.admin().await;
        let alias = |limit: u64| json!({"ds": "Employees", "query": {"limit": limit}});
        // 64 aliases at the largest limit each: refused before any SQL, naming the setting.
        let body: serde_json::Map<String, Value> =
            (0..64).map(|i| (format!("a{i}"), alias(10_000))).collect();
        let (s, b) = app.api(&admin, &Value::Object(body)).await;
        assert_envelope(s, &b, 400);
        let m = b["message"].as_str().unwrap();
        assert!(
            m.contains("640000 rows") && m.contains("request_max_rows"),
            "{m}"
        );
        // Two at the largest limit are within the default budget (20,000).
        let (s, b) = app
            .api(&admin, &json!({"a": alias(10_000), "b": alias(10_000)}))
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["data"]["a"]["rowsFetched"], 1000);
    }
);

on_all!(bytes_answered_are_bounded, |kind| async move {
    let db = TestDb::new(kind).await;
    let config = server::Config {
        demo: true,
        request_max_bytes: 64 * 1024,
        ..db.config()
    };
    let app = TestApp::spawn_on(db, config).await;
    let admin = app.admin().await;
    let (s, b) = app
        .api(
            &admin,
            &json!({"a": {"ds": "Employees", "query": {"limit": 1000}}}),
        )
        .await;
    assert_envelope(s, &b, 400);
    assert!(
        b["message"].as_str().unwrap().contains("request_max_bytes"),
        "{b}"
    );
    let (s, b) = app
        .api(
            &admin,
            &json!({"a": {"ds": "Employees", "query": {"limit": 50}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
});

on_all!(one_users_burst_does_not_starve_another, |kind| async move {
    let db = TestDb::new(kind).await;
    let config = server::Config {
        app_dirs: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hooks")],
        max_connections: 2,
        scripts: server::config::ScriptsConfig {
            workers: 8,
            hook_timeout_ms: 5_000,
            ..Default::default()
        },
        ..db.config()
    };
    let app = TestApp::spawn_on(db, config).await;
    let store = &app.state.store;
    store
        .grant_role("cloudio", "admin", "hooks", "clerk", "test")
        .await
        .unwrap();
    app.create_user("vic", "vic-password-1").await;
    store
        .grant_role("cloudio", "vic", "hooks", "viewer", "test")
        .await
        .unwrap();
    let admin = app.admin().await;
    let vic = app.login("vic", "vic-password-1").await;
    // The admin's burst: six requests, each holding a connection for 300 ms.
    let started = Instant::now();
    let burst: Vec<_> = (0..6)
        .map(|_| {
            app.api_in_background(
                &admin,
                json!({"q": {"ds": "Items", "query": {"params": {"busyMs": 300}}}}),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Another user is answered at once: the burst holds one connection, not both.
    let t = Instant::now();
    let (s, b) = app
        .api(&vic, &json!({"q": {"ds": "Items", "query": {}}}))
        .await;
    let vic_took = t.elapsed();
    assert_eq!(s, 200, "{b}");
    assert!(vic_took < Duration::from_millis(250), "{vic_took:?}");
    for request in burst {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // The burst ran one at a time (user_max_inflight = half of 2 connections).
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
});

on_all!(a_large_answer_is_streamed_and_whole, |kind| async move {
    let db = TestDb::new(kind).await;
    let config = server::Config {
        demo: true,
        ..db.config()
    };
    let app = TestApp::spawn_on(db, config).await;
    let admin = app.admin().await;
    let all = json!({"a": {"ds": "Employees", "query": {"limit": 1000, "sort": {"empId": 1}}},
                     "b": {"ds": "Employees", "query": {"limit": 1000, "sort": {"empId": -1}}}});
    let r = app
        .client
        .post(app.url(&format!("/v1/api?csrf={}", admin.csrf)))
        .header("Authorization", format!("Bearer {}", admin.jwt))
        .json(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Written as it is sent: no length known up front.
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    assert!(text.len() > 256 * 1024, "{} bytes", text.len());
    let streamed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(streamed["status"], "OK");
    // The same rows as pages small enough to be written at once.
    for (alias, dir) in [("a", 1), ("b", -1)] {
        let mut paged = Vec::new();
        for offset in (0..1000).step_by(100) {
            let (s, b) = app
                .api(
                    &admin,
                    &json!({"p": {"ds": "Employees", "query": {"limit": 100, "offset": offset,
                                                               "sort": {"empId": dir}}}}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            paged.extend(b["data"]["p"]["data"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(streamed["data"][alias]["data"].as_array().unwrap(), &paged);
    }
});
