//! Honest health on SQLite: database files deleted, replaced or overwritten under a running
//! server make `/v1/status` a 503 and every write a 503, instead of writes acknowledged and lost
//! at the next start. (PostgreSQL has no files to lose; its status is the round trip.)

use std::io::{Seek, Write};

use serde_json::{Value, json};

use crate::helpers::*;

async fn spawn_demo() -> TestApp {
    let db = TestDb::new(Kind::Sqlite).await;
    let config = server::Config {
        demo: true,
        ..db.config()
    };
    TestApp::spawn_on(db, config).await
}

fn insert(i: usize) -> Value {
    json!({"e": {"ds": "Employees", "data": [
        {"_rs": "I", "name": format!("Ann {i}"), "badge": format!("H-{i}"), "salary": 10}
    ]}})
}

async fn status(app: &TestApp) -> (u16, Value) {
    let r = app.client.get(app.url("/v1/status")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn data_dir(app: &TestApp) -> std::path::PathBuf {
    app.db.as_ref().unwrap().dir.path().to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_database_files_refuse_writes_and_fail_status() {
    let app = spawn_demo().await;
    let admin = app.admin().await;
    assert_eq!(app.api(&admin, &insert(1)).await.0, 200);
    assert_eq!(status(&app).await.0, 200);

    for name in ["demo.db", "demo.db-wal", "demo.db-shm"] {
        let _ = std::fs::remove_file(data_dir(&app).join(name));
    }
    // The write is refused before anything asked for the status.
    let (s, body) = app.api(&admin, &insert(2)).await;
    assert_envelope(s, &body, 503);
    let (s, body) = status(&app).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["database"], "ERROR", "{body}");
    assert!(
        !body.to_string().contains("demo.db"),
        "no paths to clients: {body}"
    );
    // Writes to the platform's own file are refused too: a login writes a session.
    let (s, body) = app.login_response("admin", ADMIN_PASSWORD).await;
    assert_envelope(s, &body, 503);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_overwritten_in_place_fails_status_and_refuses_writes() {
    let app = spawn_demo().await;
    let admin = app.admin().await;
    assert_eq!(app.api(&admin, &insert(1)).await.0, 200);

    // Same inode, other bytes.
    let path = data_dir(&app).join("cloudio.db");
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&[0x5a; 8192]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let (s, body) = status(&app).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["status"], "ERROR", "{body}");
    let (s, body) = app.api(&admin, &insert(2)).await;
    assert_envelope(s, &body, 503);
    app.stop().await;
}
