//! Brute-force limit: 10 failures in 5 minutes per user or per address -> 429 with Retry-After,
//! kept in the database so that it holds across nodes.

use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

on_both!(
    ten_failures_lock_the_user_even_with_the_right_password,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        for i in 0..10 {
            assert_eq!(
                app.login_response("admin", "wrong").await.0,
                403,
                "attempt {i}"
            );
        }
        let r = app
            .post_auth_raw(
                Some(("Authorization", token_header("admin", ADMIN_PASSWORD))),
                "{}",
            )
            .await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=300).contains(&retry), "{retry}");
        let body: Value = r.json().await.unwrap();
        assert_envelope(429, &body, 429);
        assert_eq!(body["title"], "Too Many Requests");
        app.stop().await;
    }
);

on_both!(
    the_limit_holds_across_nodes_and_per_address,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let config = db.config();
        let a = TestApp::spawn_on(db, config.clone()).await;
        let b = TestApp::spawn_with(config).await;
        a.create_user("victim", "pw").await;
        // Failures spread over two nodes and several user names from one address.
        for i in 0..5 {
            assert_eq!(a.login_response("victim", "x").await.0, 403, "a{i}");
            assert_eq!(
                b.login_response(&format!("guess{i}"), "x").await.0,
                403,
                "b{i}"
            );
        }
        // The address is now over the limit on both nodes, for every user.
        assert_eq!(b.login_response("admin", ADMIN_PASSWORD).await.0, 429);
        assert_eq!(a.login_response("victim", "pw").await.0, 429);
        // Once the address's failures are gone, the user's own 5 failures don't block it.
        a.state
            .store
            .clear_login_failures("addr:127.0.0.1")
            .await
            .unwrap();
        assert_eq!(b.login_response("victim", "pw").await.0, 200);
        b.stop().await;
        a.stop().await;
    }
);
