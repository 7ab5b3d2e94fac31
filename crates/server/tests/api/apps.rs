//! Loading apps: the migration runner (order, records, changed files, failures, concurrent
//! nodes) and metadata validation that reports every problem at once.

use std::path::Path;

use store::migrate::{self, Migration};

use crate::helpers::*;
use crate::{on_all, on_both};

fn m(name: &str, sql: &str) -> Migration {
    Migration {
        name: name.into(),
        sql: sql.into(),
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

async fn open(db: &TestDb) -> store::Store {
    server::startup::open_store(&db.config()).await.unwrap()
}

on_all!(
    migrations_run_once_in_order_and_changed_files_are_reported,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let store = open(&db).await;
        // Files arrive out of order; timestamp order decides (the second depends on the first).
        let files = vec![
            m(
                "io_20240102000000_add_row.sql",
                "INSERT INTO T1 (ID, NAME) VALUES (1, 'one');",
            ),
            m(
                "io_20240101000000_create.sql",
                "CREATE TABLE T1 (ID INTEGER PRIMARY KEY, NAME TEXT);",
            ),
        ];
        let mut sorted = files.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let report = migrate::run(&store.db, "app1", &sorted).await.unwrap();
        assert_eq!(
            report.applied,
            [
                "io_20240101000000_create.sql",
                "io_20240102000000_add_row.sql"
            ]
        );
        // Run again: nothing applied, nothing changed.
        let report = migrate::run(&store.db, "app1", &sorted).await.unwrap();
        assert!(
            report.applied.is_empty() && report.changed.is_empty(),
            "{report:?}"
        );
        // A recorded file edited later: ignored, reported with both checksums.
        let mut edited = sorted.clone();
        edited[1].sql = "INSERT INTO T1 (ID, NAME) VALUES (2, 'two');".into();
        let report = migrate::run(&store.db, "app1", &edited).await.unwrap();
        assert!(report.applied.is_empty());
        assert_eq!(report.changed.len(), 1);
        assert_eq!(report.changed[0].0, "io_20240102000000_add_row.sql");
        assert_ne!(report.changed[0].1, report.changed[0].2);
        // The table lives in the app's own schema; it has exactly the one row.
        let store = store::Store::new(store.db.reopen(2).await.unwrap());
        let schema = store.schema_of("app1");
        let rows = store
            .db
            .fetch_all(
                &format!("SELECT NAME FROM {schema}.T1"),
                &[],
                &[query::AttrType::String],
            )
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![query::Value::Text("one".into())]]);
    }
);

// SQLite and PostgreSQL only: MySQL commits DDL statement by statement, so a failed file
// leaves its earlier statements behind there (docs/api.md, "MySQL/MariaDB").
on_both!(
    a_failing_migration_names_file_and_statement_and_leaves_nothing,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let store = open(&db).await;
        let files = vec![
            m(
                "io_20240101000000_ok.sql",
                "CREATE TABLE GOOD (ID INTEGER);",
            ),
            m(
                "io_20240102000000_broken.sql",
                "CREATE TABLE HALF (ID INTEGER);\nINSERT INTO NO_SUCH_TABLE VALUES (1);\nCREATE TABLE NEVER (ID INTEGER);",
            ),
            m(
                "io_20240103000000_after.sql",
                "CREATE TABLE AFTER_BROKEN (ID INTEGER);",
            ),
        ];
        let err = migrate::run(&store.db, "app2", &files)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("io_20240102000000_broken.sql") && err.contains("statement 2"),
            "{err}"
        );
        assert_eq!(
            store
                .table_columns("app2", "GOOD")
                .await
                .unwrap()
                .map(|c| c.len()),
            Some(1)
        );
        assert_eq!(
            store.table_columns("app2", "HALF").await.unwrap(),
            None,
            "the failed file is rolled back"
        );
        assert_eq!(
            store.table_columns("app2", "AFTER_BROKEN").await.unwrap(),
            None,
            "the run stops"
        );
        // Fixed, the run resumes at the failed file.
        let mut fixed = files.clone();
        fixed[1].sql = "CREATE TABLE HALF (ID INTEGER);".into();
        let report = migrate::run(&store.db, "app2", &fixed).await.unwrap();
        assert_eq!(
            report.applied,
            [
                "io_20240102000000_broken.sql",
                "io_20240103000000_after.sql"
            ]
        );
    }
);

on_all!(
    several_nodes_migrating_at_once_apply_each_file_once,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let files: Vec<Migration> = (0..5)
            .map(|i| {
                m(
                    &format!("io_2024010{}000000_t{i}.sql", i + 1),
                    &format!("CREATE TABLE C{i} (ID INTEGER);"),
                )
            })
            .collect();
        // Four "nodes": separate pools over the same database, started together.
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(open(&db).await);
        }
        let mut runs = tokio::task::JoinSet::new();
        for s in stores {
            let files = files.clone();
            runs.spawn(async move { migrate::run(&s.db, "app3", &files).await });
        }
        let mut applied: Vec<String> = Vec::new();
        while let Some(r) = runs.join_next().await {
            applied.extend(r.unwrap().expect("no node fails").applied);
        }
        applied.sort();
        let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        assert_eq!(
            applied, names,
            "every file applied exactly once across the nodes"
        );
    }
);

#[tokio::test]
async fn platform_migrations_are_named_by_the_documented_pattern() {
    for d in [query::Dialect::Sqlite, query::Dialect::Postgres] {
        for f in migrate::platform_migrations(d) {
            assert!(migrate::is_migration_name(&f.name), "{}", f.name);
        }
    }
}

on_all!(
    app_validation_reports_every_problem_naming_file_and_field,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "app.json", r#"{"appUid": "broken", "name": "Broken"}"#);
        write(
            d,
            "migrations/io_20240101000000_t.sql",
            "CREATE TABLE ITEMS (ITEM_ID INTEGER PRIMARY KEY, LABEL TEXT, CREATED_BY TEXT, CREATION_DATE TEXT, \
         LAST_UPDATED_BY TEXT, LAST_UPDATE_DATE TEXT);",
        );
        write(
            d,
            "datasources/Items.json",
            r#"{"name": "Items", "table": "ITEMS", "primaryKey": ["itemId"], "keyGeneration": "auto",
            "attributes": [{"code": "itemId", "type": "Integer"}, {"code": "label", "type": "String"},
                           {"code": "colour", "type": "String"}, {"code": "label", "type": "String"}]}"#,
        );
        write(
            d,
            "datasources/Ghost.json",
            r#"{"name": "Ghost", "table": "NO_SUCH_TABLE", "primaryKey": ["id"], "keyGeneration": "none",
            "attributes": [{"code": "id", "type": "String"}]}"#,
        );
        write(
            d,
            "datasources/Typo.json",
            r#"{"name": "Typo", "table": "ITEMS", "primaryKey": ["itemId"], "attributes": [{"code": "itemId", "type": "Integr"}]}"#,
        );
        write(
            d,
            "datasources/NoKey.json",
            r#"{"name": "NoKey", "table": "ITEMS", "primaryKey": [], "keyGeneration": "none", "attributes": [{"code": "label", "type": "String"}]}"#,
        );
        write(
            d,
            "roles.json",
            r#"{"roles": [{"roleUid": "r", "grants": {"Nope": ["query"], "Items": ["fly"]}}]}"#,
        );
        let config = server::Config {
            app_dirs: vec![d.to_path_buf()],
            ..db.config()
        };
        let err = match server::Server::build(config.clone(), Some(ADMIN_PASSWORD.into())).await {
            Ok(_) => panic!("a broken app must stop the start"),
            Err(e) => e.to_string(),
        };
        for needle in [
            "datasources/Items.json: `attributes[3].code`: duplicate attribute `label`",
            "datasources/Items.json: attribute `colour`: column `COLOUR` does not exist in table `ITEMS`",
            "datasources/Ghost.json: `table`: table `NO_SUCH_TABLE` does not exist",
            "datasources/Typo.json",
            "Integr",
            "datasources/NoKey.json: `primaryKey`: a datasource needs a primary key",
            "roles.json: `roles[0].grants.Nope`: unknown datasource",
            "unknown action `fly`",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        // Nothing of the app's metadata was stored (its migration did run: it is recorded).
        let store = server::startup::open_store(&config).await.unwrap();
        let meta = store.load_metadata().await.unwrap();
        assert!(meta.datasources.iter().all(|(app, _, _)| app != "broken"));
    }
);
