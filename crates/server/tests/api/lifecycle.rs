//! Status, metrics, a database that goes away, and graceful shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::on_all;

on_all!(status_and_metrics, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let r = app.client.get(app.url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "OK");
    assert_eq!(b["database"], "OK");
    assert_eq!(b["cache"], "DISABLED");
    assert!(b["version"].is_string() && b["uptimeSeconds"].is_u64());
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"cloudio_http_requests_total{method="GET",route="/v1/status",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("cloudio_http_request_duration_seconds_count"));
    app.stop().await;
});

on_all!(
    a_database_that_goes_away_is_a_503_not_a_panic,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.state.store.db.close().await;
        let r = app.client.get(app.url("/v1/status")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["status"], "ERROR");
        assert_eq!(b["database"], "ERROR");
        let (status, body) = app.login_response("admin", ADMIN_PASSWORD).await;
        assert_envelope(status, &body, 503);
        assert!(
            !body["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("pool"),
            "{body}"
        );
        app.stop().await;
    }
);

on_all!(shutdown_lets_in_flight_requests_finish, |kind| async move {
    let mut app = TestApp::spawn(kind).await;
    let client = app.client.clone();
    let url = app.url("/test/slow");
    let started = app.routes.slow_started.clone();
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    started.notified().await;
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !app.handle.is_finished(),
        "must wait for the in-flight request"
    );
    app.routes.slow_release.notify_one();
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    let status_url = app.url("/v1/status");
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("server stops after the request");
    assert!(reqwest::get(status_url).await.is_err(), "listener closed");
});

on_all!(
    requests_beyond_the_inflight_limit_wait_their_turn,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let config = server::Config {
            max_inflight_requests: 1,
            ..db.config()
        };
        let app = TestApp::spawn_on(db, config).await;
        let client = app.client.clone();
        let url = app.url("/test/slow");
        let started = app.routes.slow_started.clone();
        let slow = tokio::spawn(async move { client.get(url).send().await });
        started.notified().await;
        // The one slot is taken: a second request waits (its connection stays open), then runs.
        let client = app.client.clone();
        let status_url = app.url("/v1/status");
        let waiting = tokio::spawn(async move { client.get(status_url).send().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "the second request waits for the slot"
        );
        app.routes.slow_release.notify_one();
        assert_eq!(slow.await.unwrap().unwrap().status(), 200);
        let resp = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting request runs once the slot is free")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        app.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_connections_dropped_behind_the_pool_cost_no_request() {
    // As after a PostgreSQL restart or a firewall's idle timeout: every pooled connection dies.
    // The pool pings connections idle for over a second before handing them out.
    let app = TestApp::spawn(Kind::Postgres).await;
    let admin = app.admin().await;
    let query = serde_json::json!({"q": {"ds": "IoUsers", "query": {"limit": 1}}});
    assert_eq!(app.api(&admin, &query).await.0, 200);
    let url = app.db.as_ref().unwrap().url.clone().unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(killed >= 1, "the server's connections were there to kill");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 0..20 {
        let (status, body) = app.api(&admin, &query).await;
        assert_eq!(
            status, 200,
            "request {i} after the connections died: {body}"
        );
    }
    app.stop().await;
}

on_all!(
    a_slow_body_holds_its_connection_not_an_inflight_slot,
    |kind| async move {
        use tokio::io::AsyncWriteExt;
        let db = TestDb::new(kind).await;
        let config = server::Config {
            max_inflight_requests: 1,
            ..db.config()
        };
        let app = TestApp::spawn_on(db, config).await;
        // A logged-in client (so the guard lets the request reach its body) announces 100 bytes
        // of body and sends one.
        let admin = app.admin().await;
        let addr = app.base.trim_start_matches("http://").to_string();
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/api?csrf={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            admin.csrf, admin.jwt
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The only slot is still free for everyone else.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            app.client.get(app.url("/v1/status")).send(),
        )
        .await
        .expect("a slow body must not hold the in-flight slot")
        .unwrap();
        assert_eq!(r.status(), 200);
        drop(slow);
        app.stop().await;
    }
);
