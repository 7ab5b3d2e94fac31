//! Status, metrics, a database that goes away, and graceful shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

on_both!(status_and_metrics, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let r = app.client.get(app.url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "OK");
    assert_eq!(b["database"], "OK");
    assert_eq!(b["cache"], "DISABLED");
    assert!(b["version"].is_string() && b["uptimeSeconds"].is_u64());
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"cloudio_http_requests_total{method="GET",route="/v1/status",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("cloudio_http_request_duration_seconds_count"));
    app.stop().await;
});

on_both!(
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

on_both!(shutdown_lets_in_flight_requests_finish, |kind| async move {
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
