//! One error shape everywhere, and a request id on every response.

use serde_json::Value;

use crate::helpers::*;
use crate::on_all;

async fn call(app: &TestApp, req: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
    let _ = app;
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap(), id)
}

on_all!(framework_errors_use_the_envelope, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let (s, b, id) = call(&app, app.client.get(app.url("/v1/nope"))).await;
    assert_envelope(s, &b, 404);
    assert!(id.is_some());
    let (s, b, _) = call(&app, app.client.get(app.url("/v1/auth"))).await;
    assert_envelope(s, &b, 405);
    let (s, b, _) = call(&app, app.client.delete(app.url("/v1/status"))).await;
    assert_envelope(s, &b, 405);
    // Over the configured 64 KiB limit.
    let big = format!("{{\"orgUid\": \"{}\"}}", "x".repeat(100 * 1024));
    let (s, b, _) = call(
        &app,
        app.client
            .post(app.url("/v1/auth"))
            .header("Authorization", token_header("admin", ADMIN_PASSWORD))
            .body(big),
    )
    .await;
    assert_envelope(s, &b, 413);
    assert_eq!(b["title"], "Payload Too Large");
    app.stop().await;
});

on_all!(
    a_panic_is_a_500_that_quotes_the_request_id_and_nothing_else,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        let (s, b, id) = call(&app, app.client.get(app.url("/test/panic"))).await;
        assert_envelope(s, &b, 500);
        let id = id.expect("x-request-id");
        let message = b["message"].as_str().unwrap();
        assert!(message.contains(&id), "{message}");
        assert!(
            !message.contains("secret detail") && !message.contains("panic"),
            "{message}"
        );
        // The server keeps serving.
        let (s, _, _) = call(&app, app.client.get(app.url("/v1/status"))).await;
        assert_eq!(s, 200);
        app.stop().await;
    }
);

on_all!(
    request_ids_are_echoed_when_sane_and_made_otherwise,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        let r = app
            .client
            .get(app.url("/v1/status"))
            .header("x-request-id", "abc-123")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "abc-123");
        let r = app
            .client
            .get(app.url("/v1/status"))
            .header("x-request-id", "bad id\"<>")
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        app.stop().await;
    }
);
