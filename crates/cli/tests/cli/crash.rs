//! Crash safety: the server killed with SIGKILL in the middle of a large post holds, after a
//! restart, either all of that request's rows or none.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both;

const ROWS: usize = 40_000;

async fn employees(base: &str, l: &Login) -> i64 {
    let r = client()
        .post(format!("{base}/v1/api?csrf={}", l.csrf))
        .header("Authorization", format!("Bearer {}", l.jwt))
        .json(&json!({"c": {"ds": "Employees", "query": {"count": true, "limit": 0}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    b["data"]["c"]["totalCount"].as_i64().unwrap()
}

/// Evidence that the post's transaction has started writing: on PostgreSQL a backend of this
/// database holding a transaction id; on SQLite uncommitted pages spilled into the demo app's
/// write-ahead log.
async fn writing(db: &TestDb, wal_before: u64) -> bool {
    match &db.url {
        Some(url) => {
            let name = url.rsplit('/').next().unwrap().to_string();
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_xid IS NOT NULL \
                 AND pid <> pg_backend_pid()",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            n > 0
        }
        None => wal_size(db) > wal_before,
    }
}

fn wal_size(db: &TestDb) -> u64 {
    std::fs::metadata(db.dir.path().join("demo.db-wal")).map_or(0, |m| m.len())
}

on_both!(
    sigkill_during_a_large_post_leaves_all_or_nothing,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let env = [("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)];
        let server = Proc::serve(&db, &["--listen", "127.0.0.1:0", "--demo"], &env).await;
        let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        assert_eq!(employees(&server.base(), &admin).await, 1000);

        let rows: Vec<Value> = (0..ROWS)
        .map(|i| json!({"_rs": "I", "name": format!("Crash test employee {i}"), "salary": i, "badge": "CRASH"}))
        .collect();
        let body = json!({"bulk": {"ds": "Employees", "data": rows}});
        let wal_before = wal_size(&db);
        let url = server.url(&format!("/v1/api?csrf={}", admin.csrf));
        let jwt = admin.jwt.clone();
        let request = tokio::spawn(async move {
            client()
                .post(url)
                .header("Authorization", format!("Bearer {jwt}"))
                .json(&body)
                .send()
                .await
        });
        // Kill only once the transaction is demonstrably writing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !writing(&db, wal_before).await {
            assert!(
                !request.is_finished(),
                "the post finished before it could be interrupted"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the post never started writing"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut server = server;
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(10)).await;
        let outcome = request.await.unwrap();
        assert!(
            outcome.is_err() || !outcome.unwrap().status().is_success(),
            "the killed request must not report success"
        );

        let server = Proc::serve(&db, &["--listen", "127.0.0.1:0", "--demo"], &env).await;
        let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        let n = employees(&server.base(), &admin).await;
        assert!(
            n == 1000 || n == 1000 + ROWS as i64,
            "partial write survived the crash: {n} rows"
        );
        // The database is usable afterwards: the same post now goes through whole.
        let rows: Vec<Value> = (0..100)
            .map(|i| json!({"_rs": "I", "name": format!("After {i}")}))
            .collect();
        let r = client()
            .post(server.url(&format!("/v1/api?csrf={}", admin.csrf)))
            .header("Authorization", format!("Bearer {}", admin.jwt))
            .json(&json!({"bulk": {"ds": "Employees", "data": rows}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(employees(&server.base(), &admin).await, n + 100);
        server.stop().await;
    }
);
