//! The request guard: the JWT negative suite, csrf, sessions, revocation and the token cache.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_all;

fn claims_of(jwt: &str) -> Value {
    serde_json::from_slice(&B64.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn sign(claims: &Value, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

async fn expect_401(app: &TestApp, jwt: &str, csrf: &str, why: &str) {
    let (status, body) = app.session(jwt, csrf).await;
    assert_envelope(status, &body, 401);
    assert_eq!(body["title"], "Unauthorized", "{why}: {body}");
}

on_all!(session_returns_the_login_and_roles, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let login = app.admin().await;
    let (status, body) = app.session(&login.jwt, &login.csrf).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessionId"], login.body["sessionId"]);
    assert_eq!(body["csrf"], login.body["csrf"]);
    assert_eq!(body["userName"], "admin");
    // The first-start admin holds every platform role (spec section 8).
    let mut roles: Vec<&str> = body["roles"]["cloudio"]
        .as_array()
        .expect("cloudio roles")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        ["administrator", "developer", "patch_administrator"],
        "{body}"
    );
    assert_eq!(
        body["roles"].as_object().map(|o| o.len()),
        Some(1),
        "{body}"
    );
    assert!(body.get("jwt").is_none());
    // The csrf may come as a header instead of the query parameter, and the token under the
    // documentation's `Authentication` header name.
    let r = app
        .client
        .get(app.url("/v1/session"))
        .header("Authentication", format!("Bearer {}", login.jwt))
        .header("X-CSRF-Token", &login.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
});

on_all!(jwt_negative_suite, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let login = app.admin().await;
    let other = app.admin().await;
    let csrf = login.csrf.clone();
    let claims = claims_of(&login.jwt);
    let secret = JWT_SECRET.as_bytes();
    let now = chrono::Utc::now().timestamp();

    // alg: none, with and without a signature.
    let payload = login.jwt.split('.').nth(1).unwrap();
    let none_header = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    expect_401(
        &app,
        &format!("{none_header}.{payload}."),
        &csrf,
        "alg none",
    )
    .await;
    let sig = login.jwt.split('.').nth(2).unwrap();
    expect_401(
        &app,
        &format!("{none_header}.{payload}.{sig}"),
        &csrf,
        "alg none signed",
    )
    .await;
    // Another algorithm with the same secret.
    expect_401(
        &app,
        &sign(&claims, Algorithm::HS512, secret),
        &csrf,
        "HS512",
    )
    .await;
    expect_401(
        &app,
        &sign(&claims, Algorithm::HS384, secret),
        &csrf,
        "HS384",
    )
    .await;
    // The wrong key.
    expect_401(
        &app,
        &sign(
            &claims,
            Algorithm::HS256,
            b"another-secret-another-secret-00",
        ),
        &csrf,
        "wrong key",
    )
    .await;
    // Expired beyond the 30 s skew; within the skew it still passes.
    let mut c = claims.clone();
    c["exp"] = json!(now - 31);
    expect_401(&app, &sign(&c, Algorithm::HS256, secret), &csrf, "expired").await;
    c["exp"] = json!(now - 5);
    let (status, _) = app
        .session(&sign(&c, Algorithm::HS256, secret), &csrf)
        .await;
    assert_eq!(status, 200, "expired within the skew");
    // iat in the future.
    let mut c = claims.clone();
    c["iat"] = json!(now + 120);
    expect_401(
        &app,
        &sign(&c, Algorithm::HS256, secret),
        &csrf,
        "iat in future",
    )
    .await;
    // Tampered payload with the original signature.
    let mut c = claims.clone();
    c["sub"] = json!("root");
    let tampered = format!(
        "{}.{}.{}",
        login.jwt.split('.').next().unwrap(),
        B64.encode(c.to_string()),
        sig
    );
    expect_401(&app, &tampered, &csrf, "tampered").await;
    // Garbage and truncated tokens.
    expect_401(&app, "not-a-jwt", &csrf, "garbage").await;
    expect_401(&app, &login.jwt[..login.jwt.len() - 3], &csrf, "truncated").await;
    // A token signed by us but naming another session's csrf / another user.
    let mut c = claims.clone();
    c["csrf"] = json!(other.csrf);
    expect_401(
        &app,
        &sign(&c, Algorithm::HS256, secret),
        &other.csrf,
        "csrf of another session",
    )
    .await;
    let mut c = claims.clone();
    c["sub"] = json!("someone-else");
    expect_401(
        &app,
        &sign(&c, Algorithm::HS256, secret),
        &csrf,
        "sub of another user",
    )
    .await;
    // Missing csrf, and another session's csrf with this token.
    let r = app
        .client
        .get(app.url("/v1/session"))
        .header("Authorization", format!("Bearer {}", login.jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "missing csrf");
    expect_401(&app, &login.jwt, &other.csrf, "another session's csrf").await;
    // Missing header, wrong scheme.
    let r = app
        .client
        .get(app.url(&format!("/v1/session?csrf={csrf}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .get(app.url(&format!("/v1/session?csrf={csrf}")))
        .header("Authorization", format!("Token {}", login.jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // And the genuine token still works after all that (from the cache, after the csrf checks).
    let (status, _) = app.session(&login.jwt, &csrf).await;
    assert_eq!(status, 200);
    app.stop().await;
});

on_all!(logout_ends_the_session_at_once, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let login = app.admin().await;
    assert_eq!(app.session(&login.jwt, &login.csrf).await.0, 200); // now cached
    let r = app
        .client
        .post(app.url(&format!("/v1/logout?csrf={}", login.csrf)))
        .header("Authorization", format!("Bearer {}", login.jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "OK"}));
    expect_401(&app, &login.jwt, &login.csrf, "logged out").await;
    app.stop().await;
});

on_all!(
    disabling_or_changing_a_password_ends_sessions_at_once,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("u1", "pw1").await;
        app.create_user("u2", "pw2").await;
        let a = app.login("u1", "pw1").await;
        let b = app.login("u2", "pw2").await;
        let admin = app.admin().await;
        for l in [&a, &b, &admin] {
            assert_eq!(app.session(&l.jwt, &l.csrf).await.0, 200); // cached
        }
        app.state
            .set_user_enabled("cloudio", "u1", false, "admin")
            .await
            .unwrap();
        expect_401(&app, &a.jwt, &a.csrf, "disabled user").await;
        let hash = app.state.engine.hasher.hash("new-pw".into()).await.unwrap();
        app.state
            .set_user_password("cloudio", "u2", &hash, "admin")
            .await
            .unwrap();
        expect_401(&app, &b.jwt, &b.csrf, "changed password").await;
        // Other users are untouched; the new password works, the old one not.
        assert_eq!(app.session(&admin.jwt, &admin.csrf).await.0, 200);
        assert_eq!(app.login_response("u2", "pw2").await.0, 403);
        app.login("u2", "new-pw").await;
        app.stop().await;
    }
);

on_all!(
    a_change_made_elsewhere_is_seen_within_a_second,
    |kind| async move {
        // A second node (or the CLI) disables the user directly in the database; this node's
        // cache must notice within `token_recheck_millis` (1 s).
        let app = TestApp::spawn(kind).await;
        let login = app.admin().await;
        assert_eq!(app.session(&login.jwt, &login.csrf).await.0, 200);
        app.state
            .store
            .set_enabled("cloudio", "admin", false, "elsewhere")
            .await
            .unwrap();
        let start = Instant::now();
        loop {
            let (status, _) = app.session(&login.jwt, &login.csrf).await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                start.elapsed() < Duration::from_millis(1500),
                "revocation not seen after 1.5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        app.stop().await;
    }
);

on_all!(idle_sessions_expire, |kind| async move {
    let db = TestDb::new(kind).await;
    let config = server::Config {
        token_recheck_millis: 0,
        ..db.config()
    };
    let app = TestApp::spawn_on(db, config).await;
    let login = app.admin().await;
    assert_eq!(app.session(&login.jwt, &login.csrf).await.0, 200);
    let sid = login.body["sessionId"].as_str().unwrap();
    let long_ago = chrono::Utc::now().timestamp_micros() - 31 * 60 * 1_000_000;
    app.state.store.touch_session(sid, long_ago).await.unwrap();
    expect_401(&app, &login.jwt, &login.csrf, "idle for 31 minutes").await;
    app.stop().await;
});

on_all!(
    a_rotated_secret_still_verifies_old_tokens,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let config = db.config();
        let app = TestApp::spawn_with(config.clone()).await;
        let login = app.admin().await;
        app.stop().await;
        let rotated = server::Config {
            jwt_secret: Some(server::Secret::new(
                "rotated-secret-rotated-secret-rotated-01",
            )),
            jwt_previous_secrets: vec![server::Secret::new(JWT_SECRET)],
            ..config.clone()
        };
        let app = TestApp::spawn_with(rotated).await;
        assert_eq!(app.session(&login.jwt, &login.csrf).await.0, 200);
        let fresh = app.admin().await;
        app.stop().await;
        // Without the previous secret, old tokens are refused; new ones still work.
        let forgot = server::Config {
            jwt_previous_secrets: vec![],
            ..app_config_with_secret(&config)
        };
        let app = TestApp::spawn_on(db, forgot).await;
        expect_401(&app, &login.jwt, &login.csrf, "old secret dropped").await;
        assert_eq!(app.session(&fresh.jwt, &fresh.csrf).await.0, 200);
        app.stop().await;
    }
);

fn app_config_with_secret(c: &server::Config) -> server::Config {
    server::Config {
        jwt_secret: Some(server::Secret::new(
            "rotated-secret-rotated-secret-rotated-01",
        )),
        ..c.clone()
    }
}
