//! API keys (spec section 3, "Service accounts and API keys"): issued through the `cloudio`
//! app's `IoApiKeys` datasource, exchanged at `/v1/auth`, revoked.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both;

fn denied() -> Value {
    json!({"code": 403, "status": "ERROR", "title": "Access Denied",
           "message": "Access Denied - Invalid username and/or password!"})
}

/// Issues a key for `user` as the administrator; returns `(apiKey, secret, row)`.
async fn issue(app: &TestApp, admin: &Login, user: &str) -> (String, String, Value) {
    let (status, body) = app
        .api(
            admin,
            &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "I", "userName": user, "description": "ci"}]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let row = body["data"]["k"]["data"][0].clone();
    (
        row["apiKey"].as_str().expect("apiKey").to_string(),
        row["secret"].as_str().expect("secret").to_string(),
        row,
    )
}

/// Polls `GET /v1/session` until 401; the bound is the spec's second plus slack.
async fn assert_ends(app: &TestApp, l: &Login) {
    let start = Instant::now();
    loop {
        let (status, body) = app.session(&l.jwt, &l.csrf).await;
        if status == 401 {
            return;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "session still live: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both!(
    a_key_is_issued_once_and_exchanged_for_a_session,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("agent", "agent-password").await;
        let admin = app.admin().await;
        let (key, secret, row) = issue(&app, &admin, "agent").await;
        assert_eq!(row["userName"], "agent");
        assert_eq!(row["orgUid"], "cloudio");
        assert_eq!(row["revokedFlag"], "N");
        assert_eq!(row["createdBy"], "admin");
        assert!(row.get("secretHash").is_none(), "{row}");

        // Listed without the secret or its hash.
        let (status, body) = app
            .api(
                &admin,
                &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio", "query": {}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let text = body.to_string();
        assert!(
            !text.contains(&secret) && !text.contains("sha256"),
            "{text}"
        );
        assert_eq!(body["data"]["k"]["data"][0]["apiKey"], json!(key));
        // The hash is not a filter either: write-only attributes do not exist for queries.
        let (status, _) = app
            .api(
                &admin,
                &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "query": {"filter": [{"secretHash": {"notNull": true}}]}}}),
            )
            .await;
        assert_eq!(status, 400);

        // Exchanged: the session is the key's user's.
        let (status, body) = app.login_response(&key, &secret).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["userName"], "agent");
        assert_eq!(body["orgUid"], "cloudio");
        let l = app.login(&key, &secret).await;
        let (status, body) = app.session(&l.jwt, &l.csrf).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["userName"], "agent");

        // A wrong secret, a secret of another key, and an unknown key: the login 403.
        let (_, other_secret, _) = issue(&app, &admin, "agent").await;
        for (k, s) in [
            (key.as_str(), "wrong"),
            (key.as_str(), ""),
            (key.as_str(), other_secret.as_str()),
            ("00000000-0000-4000-8000-000000000000", secret.as_str()),
        ] {
            let (status, body) = app.login_response(k, s).await;
            assert_eq!((status, body), (403, denied()), "{k}:{s}");
        }
        app.stop().await;
    }
);

on_both!(a_disabled_user_s_key_logs_in_no_more, |kind| async move {
    let app = TestApp::spawn(kind).await;
    app.create_user("agent", "agent-password").await;
    let admin = app.admin().await;
    let (key, secret, _) = issue(&app, &admin, "agent").await;
    app.state
        .set_user_enabled("cloudio", "agent", false, "test")
        .await
        .unwrap();
    let (status, body) = app.login_response(&key, &secret).await;
    assert_eq!((status, body), (403, denied()));
    app.stop().await;
});

on_both!(revoking_a_key_ends_its_sessions, |kind| async move {
    let app = TestApp::spawn(kind).await;
    app.create_user("agent", "agent-password").await;
    let admin = app.admin().await;
    let (key, secret, row) = issue(&app, &admin, "agent").await;
    let (key2, secret2, _) = issue(&app, &admin, "agent").await;
    let l = app.login(&key, &secret).await;
    let other = app.login(&key2, &secret2).await;
    let by_password = app.login("agent", "agent-password").await;
    for s in [&l, &other, &by_password] {
        assert_eq!(app.session(&s.jwt, &s.csrf).await.0, 200);
    }

    // Through the datasource.
    let (status, body) = app
        .api(
            &admin,
            &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "U", "apiKey": key, "revokedFlag": "Y",
                                    "lastUpdateDate": row["lastUpdateDate"]}]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ends(&app, &l).await;
    let (status, body) = app.login_response(&key, &secret).await;
    assert_eq!((status, body), (403, denied()));
    // The user's other sessions stay.
    assert_eq!(app.session(&other.jwt, &other.csrf).await.0, 200);
    assert_eq!(
        app.session(&by_password.jwt, &by_password.csrf).await.0,
        200
    );

    // A revocation is final.
    let (_, body) = app
        .api(
            &admin,
            &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "query": {"filter": [{"apiKey": {"is": key}}]}}}),
        )
        .await;
    let now = body["data"]["k"]["data"][0].clone();
    assert_eq!(now["apiKey"], json!(key), "{body}");
    assert_eq!(now["revokedFlag"], "Y");
    let (status, body) = app
        .api(
            &admin,
            &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "U", "apiKey": key, "revokedFlag": "N",
                                    "lastUpdateDate": now["lastUpdateDate"]}]}}),
        )
        .await;
    assert_envelope(status, &body, 400);
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Behind the server's back (as `cloudio apikey revoke` does, from another process): the
    // guard's cache notices within its recheck interval.
    assert!(
        app.state
            .store
            .revoke_api_key("cloudio", &key2, "cli")
            .await
            .unwrap()
    );
    assert_ends(&app, &other).await;
    assert_eq!(
        app.session(&by_password.jwt, &by_password.csrf).await.0,
        200
    );
    app.stop().await;
});

on_both!(deleting_a_key_ends_its_sessions, |kind| async move {
    let app = TestApp::spawn(kind).await;
    app.create_user("agent", "agent-password").await;
    let admin = app.admin().await;
    let (key, secret, row) = issue(&app, &admin, "agent").await;
    let l = app.login(&key, &secret).await;
    let (status, body) = app
        .api(
            &admin,
            &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "D", "apiKey": key,
                                    "lastUpdateDate": row["lastUpdateDate"]}]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ends(&app, &l).await;
    assert_eq!(app.login_response(&key, &secret).await.0, 403);
    app.stop().await;
});

on_both!(
    clients_cannot_choose_a_secret_or_use_the_datasource,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("agent", "agent-password").await;
        let admin = app.admin().await;
        let (status, body) = app
            .api(
                &admin,
                &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "I", "userName": "agent",
                                    "secretHash": apikey_hash("chosen")}]}}),
            )
            .await;
        assert_envelope(status, &body, 400);
        assert!(
            body["message"].as_str().unwrap().contains("secretHash"),
            "{body}"
        );
        // A key for a user that does not exist is refused.
        let (status, body) = app
            .api(
                &admin,
                &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "I", "userName": "nobody"}]}}),
            )
            .await;
        assert!(status == 400 || status == 409, "{status} {body}");
        // Only administrators see or issue keys.
        let agent = app.login("agent", "agent-password").await;
        let (status, body) = app
            .api(
                &agent,
                &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio", "query": {}}}),
            )
            .await;
        assert_envelope(status, &body, 403);
        let (status, body) = app
            .api(
                &agent,
                &json!({"k": {"ds": "IoApiKeys", "appUid": "cloudio",
                          "data": [{"_rs": "I", "userName": "agent"}]}}),
            )
            .await;
        assert_envelope(status, &body, 403);
        app.stop().await;
    }
);

fn apikey_hash(secret: &str) -> String {
    server::auth::apikey::hash(secret)
}

on_both!(
    wrong_secrets_count_toward_the_login_limit,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("agent", "agent-password").await;
        let admin = app.admin().await;
        let (key, secret, _) = issue(&app, &admin, "agent").await;
        for i in 0..10 {
            let (status, body) = app.login_response(&key, "wrong").await;
            assert_eq!((status, body), (403, denied()), "attempt {i}");
        }
        // The key is locked now, even with the right secret.
        let (status, body) = app.login_response(&key, &secret).await;
        assert_envelope(status, &body, 429);
        app.stop().await;
    }
);
