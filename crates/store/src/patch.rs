//! A patch on the database: an app's pending migrations and its new metadata in one step.
//!
//! Unlike start-up and `cloudio migrate` (one transaction per file, earlier files stay
//! applied), a patch runs every pending file and the metadata change in one transaction, so a
//! failure leaves schema and metadata as they were. Each file runs in a savepoint: the first
//! that fails is rolled back alone, the later ones are not run, and the tables are then
//! inspected as the files before it left them, so every problem is reported in one go.
//!
//! - PostgreSQL: one transaction under a transaction-scoped advisory lock (the same key as the
//!   migration runner), DDL included.
//! - SQLite: an app's tables live in its own file. The process's write turn and the platform
//!   file's write lock are taken first (as every writer does), then the app file's. Both commit
//!   only when everything succeeded, the app file first; SQLite cannot commit two files in WAL
//!   mode atomically, so a crash between the two commits leaves the schema changed with the
//!   files unrecorded (they would be run again).
//! - SQLite, a new app: its file is made, migrated on a connection of its own, and attached to
//!   every connection of the process (pool and writer, see [`crate::attach`]) between the two
//!   commits, before the metadata that serves it is committed. Until then no connection has it
//!   attached, so a patch that is not committed removes the file it made: nothing of the app
//!   remains. SQLite attaches at most `SQLITE_MAX_ATTACHED` files (10): one more is a problem
//!   of the patch.
//!
//! Verifying is the same run, rolled back at the end.

use std::collections::HashMap;
use std::path::Path;

use query::{AttrType, Value};
use sqlx::Connection;

use crate::db::{Db, Raw, Tx, open_sqlite_file};
use crate::error::{Result, StoreError};
use crate::metadata::AppMetadata;
use crate::migrate::{
    LOCK_KEY, Migration, Report, app_schema, apply_statements, note_changed, record, recorded,
};
use crate::platform::Store;

/// Upper-cased column names of each table asked for, `None` for a missing table.
pub type Columns = HashMap<String, Option<Vec<String>>>;

/// What a patch run found and did.
#[derive(Debug, Default)]
pub struct PatchRun {
    /// Every file not recorded yet, in order: what the patch runs.
    pub pending: Vec<String>,
    /// Files run (or, verifying, that ran and were rolled back), and recorded or changed ones.
    pub report: Report,
    /// A failed file (naming file and statement), then what the check found.
    pub problems: Vec<String>,
    /// Whether the patch was committed.
    pub committed: bool,
}

impl Db {
    /// Whether the app's tables are reachable through this pool: always on PostgreSQL and
    /// MySQL; on SQLite once its file is attached (when the pool opened, or by the patch that
    /// brought the app: see [`crate::attach`]).
    pub fn app_attached(&self, app_uid: &str) -> bool {
        match self {
            Db::Postgres(_) | Db::Mysql { .. } => true,
            Db::Sqlite { pools, .. } => pools.contains(&app_schema(app_uid)),
        }
    }
}

/// The columns of `tables` (SQLite), as a patch's check sees them.
async fn sqlite_columns(raw: &mut Raw<'_>, tables: &[String]) -> Result<Columns> {
    let mut columns = Columns::new();
    for table in tables {
        let rows = raw
            .fetch_all(
                "SELECT upper(name) FROM pragma_table_info(?)",
                &[Value::Text(table.clone())],
                &[AttrType::String],
            )
            .await?;
        columns.insert(table.clone(), column_names(rows));
    }
    Ok(columns)
}

impl Store {
    /// Runs `migrations` of `meta.app_uid` not recorded yet, then asks `check` about the columns
    /// of `tables` as the migrations left them; if neither a file nor `check` found a problem
    /// and `commit` is set, stores `meta` and commits, else rolls everything back.
    pub async fn run_patch(
        &self,
        meta: &AppMetadata,
        migrations: &[Migration],
        tables: &[String],
        commit: bool,
        by: &str,
        check: impl FnOnce(&Columns) -> Vec<String>,
    ) -> Result<PatchRun> {
        let app_uid = meta.app_uid.as_str();
        let schema = app_schema(app_uid);
        if !query::meta::is_identifier(&schema) {
            return Err(StoreError::Invalid(format!(
                "app uid `{app_uid}` is not a valid schema name"
            )));
        }
        if let Db::Mysql { .. } = &self.db {
            return self
                .run_patch_mysql(meta, migrations, tables, commit, by, check)
                .await;
        }
        let mut run = PatchRun::default();
        let mut tracking = match &self.db {
            Db::Postgres(_) | Db::Mysql { .. } => self.db.begin_write().await?,
            // Not `BEGIN IMMEDIATE`: on a connection with the app files attached it would lock
            // them all, and the app's own file is migrated on a connection of its own. The
            // process's write turn, then a write that takes the platform file's lock alone.
            Db::Sqlite { pools, .. } => {
                self.db.check_files()?;
                let turn = self.db.write_turn().await;
                let mut tx = Tx::Sqlite(pools.current().begin().await?, turn);
                tx.raw()
                    .execute(
                        "UPDATE io_migrations SET APP_UID = APP_UID WHERE 1 = 0",
                        &[],
                    )
                    .await?;
                tx
            }
        };
        match &self.db {
            Db::Postgres(_) => {
                let raw = &mut tracking.raw();
                raw.execute("SELECT pg_advisory_xact_lock($1)", &[Value::Int(LOCK_KEY)])
                    .await?;
                for (i, m) in migrations.iter().enumerate() {
                    if let Some(old) = recorded(raw, app_uid, &m.name).await? {
                        note_changed(&mut run.report, app_uid, m, old);
                        continue;
                    }
                    run.pending.push(m.name.clone());
                    if !run.problems.is_empty() {
                        continue;
                    }
                    let savepoint = format!("patch_{i}");
                    raw.execute_script(&format!("SAVEPOINT {savepoint}"))
                        .await?;
                    let applied = async {
                        raw.execute_script(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                            .await?;
                        raw.execute_script(&format!("SET LOCAL search_path TO {schema}"))
                            .await?;
                        apply_statements(raw, m).await?;
                        raw.execute_script("SET LOCAL search_path TO DEFAULT")
                            .await?;
                        record(raw, app_uid, m).await
                    }
                    .await;
                    match applied {
                        Ok(()) => {
                            raw.execute_script(&format!("RELEASE SAVEPOINT {savepoint}"))
                                .await?;
                            run.report.applied.push(m.name.clone());
                        }
                        Err(e) => {
                            raw.execute_script(&format!("ROLLBACK TO SAVEPOINT {savepoint}"))
                                .await?;
                            run.problems.push(failed(m, e));
                        }
                    }
                }
                let mut columns = Columns::new();
                for table in tables {
                    let rows = raw
                        .fetch_all(
                            "SELECT upper(a.attname) FROM pg_catalog.pg_attribute a \
                             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                             WHERE n.nspname = lower($1) AND c.relname = lower($2) \
                             AND a.attnum > 0 AND NOT a.attisdropped",
                            &[Value::Text(schema.clone()), Value::Text(table.clone())],
                            &[AttrType::String],
                        )
                        .await?;
                    columns.insert(table.clone(), column_names(rows));
                }
                run.problems.extend(check(&columns));
                if run.problems.is_empty() && commit {
                    self.write_app_metadata(&mut tracking, meta, by).await?;
                    tracking.commit().await?;
                    run.committed = true;
                }
            }
            Db::Mysql { .. } => {}
            Db::Sqlite { .. } if app_uid == crate::PLATFORM_APP => {
                // The platform's tables are in the file `tracking` writes already: a second
                // connection would wait for its lock. Its patches carry no migrations (the
                // caller refuses them), so only the columns are checked, here.
                if !migrations.is_empty() {
                    return Err(StoreError::Invalid(
                        "a patch of the platform's app cannot carry migrations".into(),
                    ));
                }
                let columns = sqlite_columns(&mut tracking.raw(), tables).await?;
                run.problems.extend(check(&columns));
                if run.problems.is_empty() && commit {
                    self.write_app_metadata(&mut tracking, meta, by).await?;
                    tracking.commit().await?;
                    run.committed = true;
                }
            }
            Db::Sqlite { dir, .. } => {
                let file = dir.join(format!("{schema}.db"));
                // A new app (its file not attached in this process): the file is made here (or
                // taken as it is, if `cloudio migrate` made it) and attached to every connection
                // once its migrations are committed, before the metadata is, so the app is never
                // served without its tables. A file made here for a patch that is not committed
                // (a verify, a problem, an error) is removed again: it was never attached, and
                // its rolled-back migrations left nothing in it.
                let new = !self.db.app_attached(app_uid);
                if new && let Some(problem) = self.db.attach_room_problem(app_uid) {
                    for m in migrations {
                        match recorded(&mut tracking.raw(), app_uid, &m.name).await? {
                            Some(old) => note_changed(&mut run.report, app_uid, m, old),
                            None => run.pending.push(m.name.clone()),
                        }
                    }
                    run.problems.push(problem);
                    return Ok(run);
                }
                let made = new && !file.exists();
                let mut conn = match open_sqlite_file(&file).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        if made {
                            remove_sqlite_file(&file);
                        }
                        return Err(e);
                    }
                };
                let result = async {
                    if new && let Err(e) = self.db.try_attach(&schema, &file).await {
                        tracing::warn!(app = app_uid, error = %e, "cannot attach a new app's file");
                        run.problems.push(format!(
                            "app `{app_uid}` is new and its database file cannot be attached \
                             (the server's log says why)"
                        ));
                    }
                    let mut app_tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                    for (i, m) in migrations.iter().enumerate() {
                        if let Some(old) = recorded(&mut tracking.raw(), app_uid, &m.name).await? {
                            note_changed(&mut run.report, app_uid, m, old);
                            continue;
                        }
                        run.pending.push(m.name.clone());
                        if !run.problems.is_empty() {
                            continue;
                        }
                        let raw = &mut Raw::Sqlite(&mut app_tx);
                        let savepoint = format!("patch_{i}");
                        raw.execute_script(&format!("SAVEPOINT {savepoint}"))
                            .await?;
                        let applied = match apply_statements(raw, m).await {
                            Ok(()) => record(&mut tracking.raw(), app_uid, m).await,
                            Err(e) => Err(e),
                        };
                        match applied {
                            Ok(()) => {
                                raw.execute_script(&format!("RELEASE SAVEPOINT {savepoint}"))
                                    .await?;
                                run.report.applied.push(m.name.clone());
                            }
                            Err(e) => {
                                raw.execute_script(&format!("ROLLBACK TO SAVEPOINT {savepoint}"))
                                    .await?;
                                raw.execute_script(&format!("RELEASE SAVEPOINT {savepoint}"))
                                    .await?;
                                run.problems.push(failed(m, e));
                            }
                        }
                    }
                    let mut columns = Columns::new();
                    for table in tables {
                        let rows = Raw::Sqlite(&mut app_tx)
                            .fetch_all(
                                "SELECT upper(name) FROM pragma_table_info(?)",
                                &[Value::Text(table.clone())],
                                &[AttrType::String],
                            )
                            .await?;
                        columns.insert(table.clone(), column_names(rows));
                    }
                    run.problems.extend(check(&columns));
                    if run.problems.is_empty() && commit {
                        self.write_app_metadata(&mut tracking, meta, by).await?;
                        app_tx.commit().await?;
                        if new {
                            self.db.attach_app_file(&schema, &file).await?;
                        }
                        tracking.commit().await?;
                        run.committed = true;
                    } else {
                        app_tx.rollback().await?;
                    }
                    Ok::<_, StoreError>(())
                }
                .await;
                // Closed before its file may be removed.
                let closed = conn.close().await;
                if made && !self.db.app_attached(app_uid) {
                    remove_sqlite_file(&file);
                }
                result?;
                closed?;
            }
        }
        if !run.committed {
            tracing::info!(
                app = app_uid,
                problems = run.problems.len(),
                "patch not committed"
            );
        }
        Ok(run)
    }
}

impl Store {
    /// MySQL commits DDL as it runs, so a patch cannot be one transaction there: applying runs
    /// the pending migrations first (the migration runner: under its lock, the first failure
    /// reported and nothing after it run), then checks the tables and stores the metadata in
    /// one transaction. Verifying runs no migration: it lists them as pending and checks the
    /// tables only when none is pending (what they would make cannot be seen beforehand).
    async fn run_patch_mysql(
        &self,
        meta: &AppMetadata,
        migrations: &[Migration],
        tables: &[String],
        commit: bool,
        by: &str,
        check: impl FnOnce(&Columns) -> Vec<String>,
    ) -> Result<PatchRun> {
        let app_uid = meta.app_uid.as_str();
        let mut run = PatchRun::default();
        let mut conn = self.db.acquire().await?;
        // The tracking table is found in the connection's database: a script may have left the
        // pooled connection in an app's (`USE`).
        conn.raw()
            .execute_script(&format!("USE {}", self.db.platform_schema()))
            .await?;
        for m in migrations {
            match recorded(&mut conn.raw(), app_uid, &m.name).await? {
                Some(old) => note_changed(&mut run.report, app_uid, m, old),
                None => run.pending.push(m.name.clone()),
            }
        }
        drop(conn);
        if commit && !run.pending.is_empty() {
            match crate::migrate::run(&self.db, app_uid, migrations).await {
                Ok(report) => run.report.applied = report.applied,
                Err(e) => {
                    let name = run.pending.first().cloned().unwrap_or_default();
                    run.problems.push(failed(
                        &Migration {
                            name,
                            sql: String::new(),
                        },
                        e,
                    ));
                    return Ok(run);
                }
            }
        } else if !run.pending.is_empty() {
            return Ok(run);
        }
        let schema = self.schema_of(app_uid);
        let mut columns = Columns::new();
        for table in tables {
            let rows = self
                .db
                .fetch_all(
                    "SELECT UPPER(COLUMN_NAME) FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                    &[Value::Text(schema.clone()), Value::Text(table.clone())],
                    &[AttrType::String],
                )
                .await?;
            columns.insert(table.clone(), column_names(rows));
        }
        run.problems.extend(check(&columns));
        if run.problems.is_empty() && commit {
            let mut tx = self.db.begin_write().await?;
            self.write_app_metadata(&mut tx, meta, by).await?;
            tx.commit().await?;
            run.committed = true;
        }
        Ok(run)
    }
}

/// Removes a new app's database file that a patch made and did not keep, with any journal
/// SQLite left beside it (none, normally: closing the last connection removes them).
fn remove_sqlite_file(file: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %Path::new(&name).display(),
                error = %e,
                "cannot remove the database file of a patch that was not applied"
            ),
        }
    }
}

/// The message for a file that failed: the migration runner's own (file and statement).
fn failed(m: &Migration, e: StoreError) -> String {
    match e {
        e @ StoreError::Migration { .. } => format!("migrations: {e}"),
        e => format!("migrations: {}: {e}", m.name),
    }
}

fn column_names(rows: Vec<Vec<Value>>) -> Option<Vec<String>> {
    let cols: Vec<String> = rows
        .into_iter()
        .flatten()
        .filter_map(|v| match v {
            Value::Text(s) => Some(s),
            _ => None,
        })
        .collect();
    (!cols.is_empty()).then_some(cols)
}
