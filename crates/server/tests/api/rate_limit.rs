//! Brute-force limit: 10 failures in 5 minutes per user or per address -> 429 with Retry-After,
//! kept in the database so that it holds across nodes.

use serde_json::Value;

use crate::helpers::*;
use crate::on_all;

on_all!(
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

on_all!(
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

/// Logins sent all at once, on one client: the statuses, in no particular order.
async fn concurrent_logins(app: &TestApp, logins: Vec<(&'static str, &'static str)>) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for (user, password) in logins {
        let client = app.client.clone();
        let url = app.url("/v1/auth");
        tasks.spawn(async move {
            client
                .post(url)
                .header("Authorization", token_header(user, password))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        });
    }
    tasks.join_all().await
}

on_all!(
    a_concurrent_burst_checks_exactly_the_limit,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("victim", "right").await;
        let statuses = concurrent_logins(&app, vec![("victim", "wrong"); 100]).await;
        let denied = statuses.iter().filter(|s| **s == 403).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((denied, limited), (10, 90), "{statuses:?}");
        // Past the limit, the right password is refused too.
        assert_eq!(app.login_response("victim", "right").await.0, 429);
        app.stop().await;
    }
);

on_all!(
    a_right_password_inside_a_burst_past_the_limit_is_refused,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        app.create_user("victim", "right").await;
        // Ten failures fill the window first...
        let first = concurrent_logins(&app, vec![("victim", "wrong"); 10]).await;
        assert!(first.iter().all(|s| *s == 403), "{first:?}");
        // ...then a burst with the right password among wrong ones: nothing gets in.
        let mut burst = vec![("victim", "wrong"); 20];
        burst.insert(7, ("victim", "right"));
        let statuses = concurrent_logins(&app, burst).await;
        assert!(statuses.iter().all(|s| *s == 429), "{statuses:?}");
        app.stop().await;
    }
);

on_all!(
    a_successful_login_takes_back_its_attempt_under_the_address,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        // Twenty successes from one address never add up to the limit.
        for i in 0..20 {
            assert_eq!(
                app.login_response("admin", ADMIN_PASSWORD).await.0,
                200,
                "login {i}"
            );
        }
        app.stop().await;
    }
);

on_all!(
    more_right_logins_at_once_than_the_limit_all_get_in,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        // Counted before their check, they wait for places (each success gives its own back)
        // rather than being refused.
        let statuses = concurrent_logins(&app, vec![("admin", ADMIN_PASSWORD); 30]).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        app.stop().await;
    }
);

on_all!(
    logins_the_client_gave_up_on_hold_no_place,
    |kind| async move {
        let app = TestApp::spawn(kind).await;
        // Clients that hang up while their logins wait for Argon2 (one per core at a time).
        let impatient = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(30))
            .build()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (client, url) = (impatient.clone(), app.url("/v1/auth"));
            tasks.spawn(async move {
                let _ = client
                    .post(url)
                    .header("Authorization", token_header("admin", ADMIN_PASSWORD))
                    .body("{}")
                    .send()
                    .await;
            });
        }
        tasks.join_all().await;
        // Their attempts still end, right passwords giving their places back: none is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for key in ["user:cloudio/admin", "addr:127.0.0.1"] {
            loop {
                let (left, _) = app.state.store.login_failures(key, 0).await.unwrap();
                if left == 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{left} attempts left under {key}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        assert_eq!(app.login_response("admin", ADMIN_PASSWORD).await.0, 200);
        app.stop().await;
    }
);
