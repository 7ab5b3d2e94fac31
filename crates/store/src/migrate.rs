//! The migration runner: `io_YYYYMMDDHHmmss_<description>.sql` files, applied in name
//! (= timestamp) order, tracked by app and file name in `io_migrations`.
//!
//! - A recorded file is never run again; if its content changed, a warning names it and its
//!   checksums.
//! - Each file runs in one transaction (both SQLite and PostgreSQL allow DDL in transactions);
//!   a failure stops the run, records nothing, and the error names file and statement.
//! - Several processes may start at once: PostgreSQL serialises runs with an advisory lock;
//!   SQLite takes the platform file's write lock per file and re-checks the record inside.
//! - A file runs with its app's schema as the default: on PostgreSQL `search_path`, on SQLite a
//!   connection to the app's own database file.

use std::path::Path;

use chrono::Utc;
use query::{AttrType, Dialect, Value};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::db::{Db, Raw, open_sqlite_file, portable};
use crate::error::{Result, StoreError};

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    pub name: String,
    pub sql: String,
}

impl Migration {
    fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<String>,
    /// Files recorded earlier, not run again.
    pub skipped: Vec<String>,
    /// Files recorded earlier whose content has changed since: (name, recorded, current).
    pub changed: Vec<(String, String, String)>,
}

/// `io_` + 14 digits + `_` + description + `.sql`.
pub fn is_migration_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("io_")
        .and_then(|r| r.strip_suffix(".sql"))
    else {
        return false;
    };
    let (ts, desc) = rest.split_at(rest.len().min(14));
    ts.len() == 14
        && ts.bytes().all(|b| b.is_ascii_digit())
        && desc.starts_with('_')
        && desc.len() > 1
}

/// Reads an app's `migrations/` folder (missing folder: none), sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<Migration>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::Invalid(format!("{}: {e}", dir.display()))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".sql") {
            continue;
        }
        if !is_migration_name(&name) {
            return Err(StoreError::Invalid(format!(
                "{}: migration files must be named io_YYYYMMDDHHmmss_<description>.sql",
                entry.path().display()
            )));
        }
        let sql = std::fs::read_to_string(entry.path())
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", entry.path().display())))?;
        out.push(Migration { name, sql });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The platform's own migrations, compiled into the binary.
pub fn platform_migrations(dialect: Dialect) -> Vec<Migration> {
    let files: &[(&str, &str)] = match dialect {
        Dialect::Postgres => &[
            (
                "io_20261128000000_platform.sql",
                include_str!("../migrations/postgres/io_20261128000000_platform.sql"),
            ),
            (
                "io_20261129000000_login_attempts.sql",
                include_str!("../migrations/postgres/io_20261129000000_login_attempts.sql"),
            ),
            (
                "io_20261129000000_scripts.sql",
                include_str!("../migrations/postgres/io_20261129000000_scripts.sql"),
            ),
            (
                "io_20261201000000_app_files.sql",
                include_str!("../migrations/postgres/io_20261201000000_app_files.sql"),
            ),
            (
                "io_20261202000000_workflows.sql",
                include_str!("../migrations/postgres/io_20261202000000_workflows.sql"),
            ),
            (
                "io_20261210000000_api_keys.sql",
                include_str!("../migrations/postgres/io_20261210000000_api_keys.sql"),
            ),
            (
                "io_20261210000100_sso.sql",
                include_str!("../migrations/postgres/io_20261210000100_sso.sql"),
            ),
            (
                "io_20261215000000_cluster.sql",
                include_str!("../migrations/postgres/io_20261215000000_cluster.sql"),
            ),
        ],
        Dialect::Mysql => &[
            (
                "io_20261128000000_platform.sql",
                include_str!("../migrations/mysql/io_20261128000000_platform.sql"),
            ),
            (
                "io_20261129000000_login_attempts.sql",
                include_str!("../migrations/mysql/io_20261129000000_login_attempts.sql"),
            ),
            (
                "io_20261129000000_scripts.sql",
                include_str!("../migrations/mysql/io_20261129000000_scripts.sql"),
            ),
            (
                "io_20261201000000_app_files.sql",
                include_str!("../migrations/mysql/io_20261201000000_app_files.sql"),
            ),
            (
                "io_20261202000000_workflows.sql",
                include_str!("../migrations/mysql/io_20261202000000_workflows.sql"),
            ),
            (
                "io_20261210000000_api_keys.sql",
                include_str!("../migrations/mysql/io_20261210000000_api_keys.sql"),
            ),
            (
                "io_20261210000100_sso.sql",
                include_str!("../migrations/mysql/io_20261210000100_sso.sql"),
            ),
            (
                "io_20261215000000_cluster.sql",
                include_str!("../migrations/mysql/io_20261215000000_cluster.sql"),
            ),
        ],
        Dialect::Sqlite => &[
            (
                "io_20261128000000_platform.sql",
                include_str!("../migrations/sqlite/io_20261128000000_platform.sql"),
            ),
            (
                "io_20261129000000_login_attempts.sql",
                include_str!("../migrations/sqlite/io_20261129000000_login_attempts.sql"),
            ),
            (
                "io_20261129000000_scripts.sql",
                include_str!("../migrations/sqlite/io_20261129000000_scripts.sql"),
            ),
            (
                "io_20261201000000_app_files.sql",
                include_str!("../migrations/sqlite/io_20261201000000_app_files.sql"),
            ),
            (
                "io_20261202000000_workflows.sql",
                include_str!("../migrations/sqlite/io_20261202000000_workflows.sql"),
            ),
            (
                "io_20261210000000_api_keys.sql",
                include_str!("../migrations/sqlite/io_20261210000000_api_keys.sql"),
            ),
            (
                "io_20261210000100_sso.sql",
                include_str!("../migrations/sqlite/io_20261210000100_sso.sql"),
            ),
            (
                "io_20261215000000_cluster.sql",
                include_str!("../migrations/sqlite/io_20261215000000_cluster.sql"),
            ),
        ],
    };
    files
        .iter()
        .map(|(n, s)| Migration {
            name: n.to_string(),
            sql: s.to_string(),
        })
        .collect()
}

/// The schema that holds an app's tables: the platform's `cloudio` schema, or the app uid with
/// `-` turned into `_`.
pub fn app_schema(app_uid: &str) -> String {
    app_uid.replace('-', "_")
}

pub(crate) const LOCK_KEY: i64 = 0x0063_6c6f_7564_696f; // "cloudio" in ASCII

const TRACKING_SQLITE: &str = "CREATE TABLE IF NOT EXISTS io_migrations (APP_UID TEXT NOT NULL, \
     FILE_NAME TEXT NOT NULL, CHECKSUM TEXT NOT NULL, APPLIED_AT TEXT NOT NULL, \
     PRIMARY KEY (APP_UID, FILE_NAME))";
const TRACKING_MYSQL: &str = "CREATE TABLE IF NOT EXISTS io_migrations (APP_UID VARCHAR(64) NOT NULL, \
     FILE_NAME VARCHAR(255) NOT NULL, CHECKSUM VARCHAR(64) NOT NULL, APPLIED_AT DATETIME(6) NOT NULL, \
     PRIMARY KEY (APP_UID, FILE_NAME)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";
const TRACKING_PG: &str = "CREATE SCHEMA IF NOT EXISTS cloudio; \
     CREATE TABLE IF NOT EXISTS cloudio.io_migrations (APP_UID TEXT NOT NULL, \
     FILE_NAME TEXT NOT NULL, CHECKSUM TEXT NOT NULL, APPLIED_AT TIMESTAMPTZ NOT NULL, \
     PRIMARY KEY (APP_UID, FILE_NAME))";

/// Applies `migrations` of `app_uid` that are not recorded yet.
pub async fn run(db: &Db, app_uid: &str, migrations: &[Migration]) -> Result<Report> {
    let schema = app_schema(app_uid);
    if !query::meta::is_identifier(&schema) {
        return Err(StoreError::Invalid(format!(
            "app uid `{app_uid}` is not a valid schema name"
        )));
    }
    match db {
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            // The lock first: `CREATE SCHEMA IF NOT EXISTS` is not safe against itself, and
            // nodes starting at once on an empty database raced on the catalog's unique index
            // ("pg_namespace_nspname_index").
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await?;
            let result = match conn.execute(TRACKING_PG).await {
                Ok(_) => run_pg(&mut conn, app_uid, &schema, migrations).await,
                Err(e) => Err(e.into()),
            };
            // Unlock even after a failure; the connection returns to the pool.
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await?;
            result
        }
        Db::Mysql { pool, database } => {
            let mut conn = pool.acquire().await?;
            let result = run_mysql(
                &mut conn,
                database,
                app_uid,
                &db.schema_of(app_uid),
                migrations,
            )
            .await;
            // Back to the platform's database, and the lock given back, even after a failure.
            let _ = conn.execute(AssertSqlSafe(format!("USE {database}"))).await;
            sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(mysql_lock_name(database))
                .execute(&mut *conn)
                .await?;
            result
        }
        Db::Sqlite { pools, dir, .. } => {
            let mut tracking = pools.current().acquire().await?;
            tracking.execute(TRACKING_SQLITE).await?;
            drop(tracking);
            let file = if app_uid == crate::PLATFORM_APP {
                dir.join("cloudio.db")
            } else {
                dir.join(format!("{schema}.db"))
            };
            run_sqlite(db, &file, app_uid, migrations).await
        }
    }
}

pub(crate) async fn recorded(
    raw: &mut Raw<'_>,
    app_uid: &str,
    name: &str,
) -> Result<Option<String>> {
    // MySQL: the connection's database is the platform's while migrations and patches run.
    let table = match raw.dialect() {
        Dialect::Postgres => "cloudio.io_migrations",
        _ => "io_migrations",
    };
    let sql = format!("SELECT CHECKSUM FROM {table} WHERE APP_UID = ? AND FILE_NAME = ?");
    let rows = raw
        .fetch_all(
            &portable(raw.dialect(), &sql),
            &[Value::Text(app_uid.into()), Value::Text(name.into())],
            &[AttrType::String],
        )
        .await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| match r.into_iter().next() {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }))
}

pub(crate) async fn record(raw: &mut Raw<'_>, app_uid: &str, m: &Migration) -> Result<()> {
    let (table, now) = match raw.dialect() {
        Dialect::Postgres => ("cloudio.io_migrations", Value::DateTime(Utc::now())),
        Dialect::Mysql => ("io_migrations", Value::DateTime(Utc::now())),
        _ => (
            "io_migrations",
            Value::Text(query::value::format_datetime(&Utc::now())),
        ),
    };
    let sql = format!(
        "INSERT INTO {table} (APP_UID, FILE_NAME, CHECKSUM, APPLIED_AT) VALUES (?, ?, ?, ?)"
    );
    raw.execute(
        &portable(raw.dialect(), &sql),
        &[
            Value::Text(app_uid.into()),
            Value::Text(m.name.clone()),
            Value::Text(m.checksum()),
            now,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) fn note_changed(report: &mut Report, app_uid: &str, m: &Migration, old: String) {
    report.skipped.push(m.name.clone());
    let new = m.checksum();
    if old != new {
        tracing::warn!(
            app = app_uid,
            file = %m.name,
            recorded = %old,
            current = %new,
            "migration file changed after it was applied; the change is ignored"
        );
        report.changed.push((m.name.clone(), old, new));
    }
}

async fn run_pg(
    conn: &mut sqlx::PgConnection,
    app_uid: &str,
    schema: &str,
    migrations: &[Migration],
) -> Result<Report> {
    let mut report = Report::default();
    for m in migrations {
        if let Some(old) = recorded(&mut Raw::Postgres(conn), app_uid, &m.name).await? {
            note_changed(&mut report, app_uid, m, old);
            continue;
        }
        let mut tx = conn.begin().await?;
        tx.execute(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .await?;
        tx.execute(AssertSqlSafe(format!("SET LOCAL search_path TO {schema}")))
            .await?;
        apply_statements(&mut Raw::Postgres(&mut tx), m).await?;
        tx.execute("SET LOCAL search_path TO DEFAULT").await?;
        record(&mut Raw::Postgres(&mut tx), app_uid, m).await?;
        tx.commit().await?;
        tracing::info!(app = app_uid, file = %m.name, "migration applied");
        report.applied.push(m.name.clone());
    }
    Ok(report)
}

/// The named lock (`GET_LOCK`) that serialises migrations of one installation on MySQL.
pub(crate) fn mysql_lock_name(database: &str) -> String {
    format!("cloudio.migrate.{database}")
}

/// MySQL: DDL commits by itself, so a file is not one transaction here: a file that fails
/// part-way leaves its earlier statements applied (and is not recorded). Runs under a named
/// lock; each file with the app's database as the default (`USE`).
async fn run_mysql(
    conn: &mut sqlx::MySqlConnection,
    platform: &str,
    app_uid: &str,
    schema: &str,
    migrations: &[Migration],
) -> Result<Report> {
    let got: (Option<i64>,) = sqlx::query_as("SELECT GET_LOCK(?, 600)")
        .bind(mysql_lock_name(platform))
        .fetch_one(&mut *conn)
        .await?;
    if got.0 != Some(1) {
        return Err(StoreError::Unavailable(
            "another node held the migration lock for 10 minutes".into(),
        ));
    }
    conn.execute(AssertSqlSafe(format!("USE {platform}")))
        .await?;
    conn.execute(TRACKING_MYSQL).await?;
    let mut report = Report::default();
    for m in migrations {
        if let Some(old) = recorded(&mut Raw::Mysql(conn), app_uid, &m.name).await? {
            note_changed(&mut report, app_uid, m, old);
            continue;
        }
        conn.execute(AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS {schema} CHARACTER SET utf8mb4"
        )))
        .await?;
        conn.execute(AssertSqlSafe(format!("USE {schema}"))).await?;
        let applied = apply_statements(&mut Raw::Mysql(conn), m).await;
        conn.execute(AssertSqlSafe(format!("USE {platform}")))
            .await?;
        applied?;
        record(&mut Raw::Mysql(conn), app_uid, m).await?;
        tracing::info!(app = app_uid, file = %m.name, "migration applied");
        report.applied.push(m.name.clone());
    }
    Ok(report)
}

async fn run_sqlite(
    db: &Db,
    file: &Path,
    app_uid: &str,
    migrations: &[Migration],
) -> Result<Report> {
    let mut report = Report::default();
    let Db::Sqlite { pools, .. } = db else {
        return Err(StoreError::Invalid("not a SQLite database".into()));
    };
    // The platform's own file is migrated on the locking connection itself; an app's file on a
    // connection of its own (its record is written after its commit: SQLite has no transaction
    // across two files, so a crash in between re-runs that one file at the next start).
    // Opened under the lock: several processes creating a new app file at once would otherwise
    // race to switch it to WAL.
    let mut app_conn: Option<sqlx::SqliteConnection> = None;
    for m in migrations {
        let mut tracking = pools.current().acquire().await?;
        // Not `BEGIN IMMEDIATE`: with the app files attached to the pool it would lock them
        // all, and the app's file is migrated below on a connection of its own ("database is
        // locked" as soon as an attached app had a new file). A write that matches nothing
        // takes the platform file's lock alone, before the record is checked.
        tracking.execute("BEGIN").await?;
        if let Err(e) = tracking
            .execute("UPDATE io_migrations SET APP_UID = APP_UID WHERE 1 = 0")
            .await
        {
            tracking.execute("ROLLBACK").await?;
            return Err(e.into());
        }
        let result = async {
            if let Some(old) = recorded(&mut Raw::Sqlite(&mut tracking), app_uid, &m.name).await? {
                note_changed(&mut report, app_uid, m, old);
                return Ok(false);
            }
            if app_uid == crate::PLATFORM_APP {
                apply_statements(&mut Raw::Sqlite(&mut tracking), m).await?;
            } else {
                if app_conn.is_none() {
                    app_conn = Some(open_sqlite_file(file).await?);
                }
                if let Some(conn) = app_conn.as_mut() {
                    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                    apply_statements(&mut Raw::Sqlite(&mut tx), m).await?;
                    tx.commit().await?;
                }
            }
            record(&mut Raw::Sqlite(&mut tracking), app_uid, m).await?;
            Ok::<_, StoreError>(true)
        }
        .await;
        match &result {
            Ok(_) => tracking.execute("COMMIT").await?,
            Err(_) => tracking.execute("ROLLBACK").await?,
        };
        if result? {
            tracing::info!(app = app_uid, file = %m.name, "migration applied");
            report.applied.push(m.name.clone());
        }
    }
    if let Some(conn) = app_conn {
        conn.close().await?;
    }
    Ok(report)
}

/// Runs a file statement by statement so an error can name the statement (1-based).
pub(crate) async fn apply_statements(raw: &mut Raw<'_>, m: &Migration) -> Result<()> {
    for (i, stmt) in split_statements(&m.sql).iter().enumerate() {
        raw.execute_script(stmt)
            .await
            .map_err(|e| StoreError::Migration {
                file: m.name.clone(),
                statement: i + 1,
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Splits SQL on top-level `;`, aware of quotes, comments and PostgreSQL dollar quoting.
/// Statements that are only whitespace or comments are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut has_code = false;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' | b'`' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                has_code = true;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| *c == b'$')
                    .map(|p| i + 1 + p);
                if let Some(end) = tag_end.filter(|e| {
                    b[i + 1..*e]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
                }) {
                    let tag = &sql[i..=end];
                    if let Some(close) = sql[end + 1..].find(tag) {
                        i = end + 1 + close + tag.len() - 1;
                    }
                }
                has_code = true;
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].trim().to_string());
                }
                start = i + 1;
                has_code = false;
            }
            c if !c.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code && start < sql.len() {
        out.push(sql[start..].trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        assert!(is_migration_name("io_20240101120000_create_employees.sql"));
        for bad in [
            "io_2024_x.sql",
            "20240101120000_x.sql",
            "io_20240101120000.sql",
            "io_2024010112000a_x.sql",
        ] {
            assert!(!is_migration_name(bad), "{bad}");
        }
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "CREATE TABLE a (x TEXT DEFAULT ';'); -- c;\n/* ; */ INSERT INTO a VALUES ('a;b');\
                   CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n-- trailing";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts[1].ends_with("('a;b')"));
        assert!(parts[2].contains("SELECT 1;"));
    }
}
