//! The SQLite we link is built as `.cargo/config.toml` asks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use query::{AttrType, Value};
use store::{Db, DbTarget};

#[tokio::test]
async fn sqlite_plans_do_not_depend_on_bound_values() {
    // Without the planner stability guarantee, a cached statement with a bound LIKE pattern is
    // prepared again on every run (bench/RESULTS.md measured W1 +30% with it).
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&DbTarget::SqliteDir(dir.path().to_path_buf()), 2)
        .await
        .unwrap();
    let rows = db
        .fetch_all(
            "SELECT compile_options FROM pragma_compile_options WHERE compile_options = ?",
            &[Value::Text("ENABLE_QPSG".into())],
            &[AttrType::String],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "SQLite was built without SQLITE_ENABLE_QPSG");
}

#[tokio::test]
async fn pooled_connections_keep_small_page_caches() {
    // Each pooled connection keeps its page cache, per attached database, for as long as it
    // lives: 512 KiB each instead of SQLite's 2 MiB (bench/RESULTS.md, memory of a long-lived
    // process). An app's file beside `cloudio.db` is attached by every pooled connection.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app1.db"), b"").unwrap();
    let db = Db::connect(&DbTarget::SqliteDir(dir.path().to_path_buf()), 4)
        .await
        .unwrap();
    for sql in [
        "SELECT cache_size FROM pragma_cache_size",
        "SELECT cache_size FROM pragma_cache_size('app1')",
    ] {
        let rows = db.fetch_all(sql, &[], &[AttrType::Integer]).await.unwrap();
        assert_eq!(rows, vec![vec![Value::Int(-512)]], "{sql}");
    }
}
