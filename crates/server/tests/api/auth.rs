//! `POST /v1/auth` as documented, and its 400 and 403 cases.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_all;

const DENIED: &str = "Access Denied - Invalid username and/or password!";

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

on_all!(
    login_returns_the_documented_body_and_claims,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("steve", "pw-steve").await;
        let login = app.login("steve", "pw-steve").await;
        let b = &login.body;
        let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "orgUid",
                "sessionId",
                "userName",
                "displayName",
                "emailAddress",
                "csrf",
                "jwt",
                "status"
            ]
        );
        assert_eq!(b["orgUid"], "cloudio");
        assert_eq!(b["userName"], "steve");
        assert_eq!(b["displayName"], "steve");
        assert_eq!(b["emailAddress"], "steve@example.com");
        assert_eq!(b["status"], "OK");
        assert!(uuid::Uuid::parse_str(b["sessionId"].as_str().unwrap()).is_ok());
        assert!(uuid::Uuid::parse_str(&login.csrf).is_ok());
        let c = claims(&login.jwt);
        assert_eq!(c["session"], b["sessionId"]);
        assert_eq!(c["csrf"], b["csrf"]);
        assert_eq!(c["org_uid"], "cloudio");
        assert_eq!(c["sub"], "steve");
        let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
        assert!((iat - chrono::Utc::now().timestamp()).abs() < 60);
        assert_eq!(exp - iat, 12 * 3600);
        // A second login makes a second, distinct session.
        let again = app.login("steve", "pw-steve").await;
        assert_ne!(again.body["sessionId"], b["sessionId"]);
        app.stop().await;
    }
);

on_all!(
    both_header_names_and_empty_bodies_are_accepted,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        let good = token_header("admin", ADMIN_PASSWORD);
        for (name, body) in [
            ("Authentication", "{}"),
            ("Authorization", ""),
            ("authorization", " \n"),
        ] {
            let r = app.post_auth_raw(Some((name, good.clone())), body).await;
            assert_eq!(r.status(), 200, "{name} with body {body:?}");
        }
        // Authorization wins over Authentication.
        let r = app
            .client
            .post(app.url("/v1/auth"))
            .header("Authorization", good.clone())
            .header("Authentication", token_header("admin", "wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = app
            .client
            .post(app.url("/v1/auth"))
            .header("Authorization", token_header("admin", "wrong"))
            .header("Authentication", good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        // orgUid selects the org; an unknown org is the same 403.
        let r = app
            .post_auth_raw(
                Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
                r#"{"orgUid":"cloudio"}"#,
            )
            .await;
        assert_eq!(r.status(), 200);
        let r = app
            .post_auth_raw(
                Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
                r#"{"orgUid":"other"}"#,
            )
            .await;
        assert_eq!(r.status(), 403);
        app.stop().await;
    }
);

on_all!(every_refusal_is_the_same_403, |kind| async move {
    let app = TestApp::spawn(kind).await;
    app.create_user("disabled", "pw").await;
    app.state
        .set_user_enabled("cloudio", "disabled", false, "test")
        .await
        .unwrap();
    app.create_user("expired", "pw").await;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let tomorrow = chrono::Utc::now().date_naive() + chrono::Days::new(1);
    app.state
        .store
        .set_user_dates("cloudio", "expired", None, Some(yesterday))
        .await
        .unwrap();
    app.create_user("future", "pw").await;
    app.state
        .store
        .set_user_dates("cloudio", "future", Some(tomorrow), None)
        .await
        .unwrap();
    let expected =
        json!({"code": 403, "status": "ERROR", "title": "Access Denied", "message": DENIED});
    for (user, pw) in [
        ("nobody", "pw"),
        ("admin", "wrong"),
        ("disabled", "pw"),
        ("expired", "pw"),
        ("future", "pw"),
        ("admin", ""),
    ] {
        let (status, body) = app.login_response(user, pw).await;
        assert_eq!(status, 403, "{user}");
        assert_eq!(body, expected, "{user}");
    }
    app.stop().await;
});

on_all!(malformed_headers_and_bodies_are_400, |kind| async move {
    let app = TestApp::spawn(kind).await;
    let cases: Vec<(Option<(&str, String)>, &str)> = vec![
        (None, "{}"),
        (
            Some((
                "Authorization",
                format!("Basic {}", STANDARD.encode("admin:x")),
            )),
            "{}",
        ),
        (Some(("Authorization", "Token !!!not-base64".into())), "{}"),
        (
            Some((
                "Authorization",
                format!("Token {}", STANDARD.encode("no-colon")),
            )),
            "{}",
        ),
        (Some(("Authorization", "Token".into())), "{}"),
        (
            Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
            "{not json",
        ),
        (
            Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
            r#"{"bogus": 1}"#,
        ),
        (
            Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
            r#"{"orgUid": 5}"#,
        ),
        (
            Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
            "[]",
        ),
    ];
    for (header, body) in cases {
        let r = app.post_auth_raw(header.clone(), body).await;
        let status = r.status().as_u16();
        let json: Value = r.json().await.unwrap();
        assert_envelope(status, &json, 400);
        assert_eq!(json["title"], "Invalid Request", "{header:?} {body}");
    }
    app.stop().await;
});

on_all!(
    unknown_user_costs_the_same_work_as_a_wrong_password,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        // Median of several attempts each, on different addresses' budgets (9 < the limit of 10).
        async fn median(app: &TestApp, user: &str) -> std::time::Duration {
            let mut times = Vec::new();
            for _ in 0..9 {
                let t = std::time::Instant::now();
                let (status, _) = app.login_response(user, "wrong-password").await;
                assert_eq!(status, 403);
                times.push(t.elapsed());
            }
            times.sort();
            times[4]
        }
        let known = median(&app, "admin").await;
        app.state
            .store
            .clear_login_failures("addr:127.0.0.1")
            .await
            .unwrap();
        let unknown = median(&app, "no-such-user").await;
        // Both paths run one Argon2id verification; without the dummy hash the unknown-user path
        // would be an order of magnitude faster.
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!(
            ratio > 0.33 && ratio < 3.0,
            "known {known:?} unknown {unknown:?}"
        );
        app.stop().await;
    }
);
