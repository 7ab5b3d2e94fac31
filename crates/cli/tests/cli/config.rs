//! Configuration as the binary reads it: a TOML file checked at start, and `CLOUDIO_*` variables.

use std::time::Duration;

use crate::helpers::*;
use crate::on_both;

/// Starts `serve` expecting it to refuse, and returns what it said.
async fn refused(db: &TestDb, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut p = Proc::spawn(db, args, envs);
    let st = p.wait_exit(START_DEADLINE).await;
    let out = p.output();
    assert!(!st.success() && st.code().is_some(), "{st}\n{out}");
    assert!(!out.contains("listening on"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_key_fails_at_start() {
    let db = TestDb::new(Kind::Sqlite).await;
    let file = db.dir.path().join("cloudio.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nsession_idle_sec = 60\n").unwrap();
    let path = file.display().to_string();
    let out = refused(&db, &["--config", &path], &[]).await;
    assert!(out.contains("session_idle_sec"), "{out}");
    assert!(
        out.contains("cloudio.toml"),
        "the message should name the file: {out}"
    );

    // The same file named by the environment.
    let out = refused(&db, &[], &[("CLOUDIO_CONFIG", &path)]).await;
    assert!(out.contains("session_idle_sec"), "{out}");
    // Nothing was created: the configuration is checked before the database is touched.
    assert!(!db.dir.path().join("jwt.secret").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_values_are_all_reported() {
    let db = TestDb::new(Kind::Sqlite).await;
    let file = db.dir.path().join("cloudio.toml");
    std::fs::write(&file, "body_limit_bytes = 1\nmax_connections = 0\n").unwrap();
    let out = refused(&db, &["--config", &file.display().to_string()], &[]).await;
    assert!(
        out.contains("body_limit_bytes") && out.contains("max_connections"),
        "{out}"
    );
}

on_both!(a_valid_config_file_is_used, |kind| async move {
    let db = TestDb::new(kind).await;
    let file = db.dir.path().join("cloudio.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nshutdown_grace_secs = 2\n").unwrap();
    let server = Proc::serve(
        &db,
        &["--config", &file.display().to_string()],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
});

on_both!(cloudio_listen_works_like_the_flag, |kind| async move {
    let db = TestDb::new(kind).await;
    // The file asks for an address this machine does not have (TEST-NET-1): the variable must
    // win over the file, as the flag would.
    let file = db.dir.path().join("cloudio.toml");
    std::fs::write(&file, "listen = \"192.0.2.1:0\"\n").unwrap();
    let mut server = Proc::spawn(
        &db,
        &["--config", &file.display().to_string()],
        &[
            ("CLOUDIO_LISTEN", "127.0.0.1:0"),
            ("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    let addr = server.wait_listening().await;
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let r = client().get(server.url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(10)).await.success());
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_from_the_environment() {
    let db = TestDb::new(Kind::Sqlite).await;
    let dir = db.dir.path().join("from-env");
    let dir_s = dir.display().to_string();
    let mut server = Proc::spawn_args(
        &db,
        &["serve".into(), "--listen".into(), "127.0.0.1:0".into()],
        &[
            ("CLOUDIO_DATA_DIR", &dir_s),
            ("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    server.wait_listening().await;
    assert!(dir.join("jwt.secret").exists(), "{}", server.output());
    server.stop().await;
}
