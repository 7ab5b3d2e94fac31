//! SQLite's pool and the app databases its connections attach (embedded database only).
//!
//! Each app's tables live in `<schema>.db` beside `cloudio.db`, attached under the schema's
//! name by every pooled connection (`after_connect`) and by the writer's connection. The list
//! is fixed when a pool opens, but a patch that brings a new app adds its file while the server
//! runs (`SqlitePools::add`).
//!
//! Discarding the older connections in `before_acquire` would need to know which ones attached
//! the new file, and sqlx gives no cheap way to tell connections apart: the `sqlite3` handle is
//! reached through a round trip to the connection's thread (what `test_before_acquire(false)`
//! saves on every acquire), and the age `before_acquire` sees is stamped after `after_connect`
//! returns, so a connection that read the list just before the change would pass as newer. So
//! the pool is a function of the list: adding a file opens a new pool whose connections attach
//! it (its first connection proves they can) and makes it the current one. Every acquire that
//! starts after `SqlitePools::add` returned takes a connection of that pool; requests holding
//! a connection of the old pool finish on it, and the old pool's connections close as they come
//! back once its last handle is gone (it is never closed explicitly: a caller that took its
//! handle just before the swap still gets a connection).
//!
//! The list only grows, so a connection that attached its first `n` entries attaches the rest
//! by position: the writer compares generations before each batch and attaches what it lacks
//! (outside any transaction, where `ATTACH` must run).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::db::{Db, attach_statements, sql_path, sqlite_options};
use crate::error::{Result, StoreError};
use crate::health::FileHealth;

/// `(schema, path)`: a checked identifier and the file's path escaped for an SQL string
/// literal (see `attach_statements`).
pub(crate) type AppFile = (String, String);

/// SQLite's current pool and the app files its connections attach; shared by every clone of
/// the [`Db`] and by the writer.
#[derive(Debug)]
pub struct SqlitePools {
    state: RwLock<State>,
    /// Bumped by every file added.
    generation: AtomicU64,
    /// One file added at a time, each to the latest list.
    adding: tokio::sync::Mutex<()>,
    /// How many databases one connection may attach (`SQLITE_MAX_ATTACHED` as this SQLite was
    /// built: 10 by default).
    limit: usize,
    main: PathBuf,
    size: u32,
    /// Bumped by every use of the pool (`current`): how [`SqlitePools::shrink_when_idle`]
    /// tells a pool that worked from one that sat idle.
    used: AtomicU64,
    /// How many times the idle pool's connections gave their caches back.
    shrinks: AtomicU64,
    /// How many times the idle writer gave its cache back.
    writer_shrinks: AtomicU64,
}

/// How long the pool must go unused before its connections give back their page caches.
pub(crate) const IDLE_SHRINK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    pool: SqlitePool,
    apps: Arc<Vec<AppFile>>,
}

impl SqlitePools {
    /// A pool of `size` connections to `main`, each attaching `apps`.
    pub(crate) async fn open(
        main: &Path,
        apps: Vec<AppFile>,
        limit: usize,
        size: u32,
    ) -> std::result::Result<SqlitePools, sqlx::Error> {
        let apps = Arc::new(apps);
        let pool = open_pool(main, apps.clone(), size).await?;
        Ok(SqlitePools {
            state: RwLock::new(State { pool, apps }),
            generation: AtomicU64::new(0),
            adding: tokio::sync::Mutex::new(()),
            limit,
            main: main.to_path_buf(),
            size,
            used: AtomicU64::new(0),
            shrinks: AtomicU64::new(0),
            writer_shrinks: AtomicU64::new(0),
        })
    }

    /// Gives the page caches of the pool's connections back (`PRAGMA shrink_memory`) once the
    /// pool has gone unused for [`IDLE_SHRINK`] after being used: a burst of reads otherwise
    /// leaves every connection holding its full cache (512 KiB per attached database) for as
    /// long as the server then sits idle. The pages are in the kernel's page cache, so the
    /// first reads afterwards cost a `pread` each, not a disk read. Ends when the pools go.
    pub(crate) async fn shrink_when_idle(pools: std::sync::Weak<SqlitePools>) {
        let mut seen = 0;
        let mut pending = false;
        loop {
            tokio::time::sleep(IDLE_SHRINK).await;
            let Some(pools) = pools.upgrade() else {
                return;
            };
            let used = pools.used.load(Ordering::Relaxed);
            if used != seen {
                seen = used;
                pending = true;
                continue;
            }
            if !pending {
                continue;
            }
            let pool = pools
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .pool
                .clone();
            if pool.is_closed() {
                return;
            }
            // Only connections no request holds; each taken once (held until all are done).
            let mut taken = Vec::new();
            while let Some(conn) = pool.try_acquire() {
                taken.push(conn);
            }
            for conn in &mut taken {
                if let Err(e) = conn.execute("PRAGMA shrink_memory").await {
                    tracing::debug!(error = %e, "shrinking an idle connection's cache failed");
                }
            }
            drop(taken);
            pending = false;
            pools.shrinks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times the idle pool, and the idle writer, gave their caches back.
    pub fn idle_shrinks(&self) -> (u64, u64) {
        (
            self.shrinks.load(Ordering::Relaxed),
            self.writer_shrinks.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn writer_shrunk(&self) {
        self.writer_shrinks.fetch_add(1, Ordering::Relaxed);
    }

    /// The pool to take connections from now (a handle: cheap to clone, use it at once).
    pub fn current(&self) -> SqlitePool {
        self.used.fetch_add(1, Ordering::Relaxed);
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pool
            .clone()
    }

    /// The current pool and the files each of its connections attaches.
    pub(crate) fn with_apps(&self) -> (SqlitePool, Arc<Vec<AppFile>>) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (state.pool.clone(), state.apps.clone())
    }

    /// The current generation and its files.
    pub(crate) fn snapshot(&self) -> (u64, Arc<Vec<AppFile>>) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (self.generation.load(Ordering::Acquire), state.apps.clone())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn apps(&self) -> Arc<Vec<AppFile>> {
        self.with_apps().1
    }

    pub(crate) fn contains(&self, schema: &str) -> bool {
        self.apps().iter().any(|(s, _)| s == schema)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Adds an app's file: opens a pool whose connections attach it too (its first connection
    /// fails here if they cannot), notes the file's identity in `health`, then makes that pool
    /// the current one. Nothing changes if any step fails.
    pub(crate) async fn add(&self, schema: &str, file: &Path, health: &FileHealth) -> Result<()> {
        let _one = self.adding.lock().await;
        let mut apps = self.apps().as_ref().clone();
        if apps.iter().any(|(s, _)| s == schema) {
            return Ok(());
        }
        apps.push((schema.to_string(), sql_path(file)));
        let apps = Arc::new(apps);
        let pool = open_pool(&self.main, apps.clone(), self.size).await?;
        health.add(file)?;
        let old = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            // Under the lock: `snapshot` reads both under it.
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::replace(&mut *state, State { pool, apps })
        };
        // Dropped, not closed: see the module's documentation.
        drop(old);
        Ok(())
    }

    /// Closes the current pool (shutting down).
    pub(crate) async fn close(&self) {
        self.current().close().await
    }
}

/// A pool whose every connection attaches `apps`.
/// Page cache of each pooled (reading) connection, per attached database, in KiB (SQLite's
/// default is 2 MiB). The files sit in the kernel's page cache anyway, so a page missing here
/// costs a `pread` of memory, not a disk read; each of the pool's connections keeps its own
/// cache for as long as it lives, and at 2 MiB a server that had read widely kept ~2 MiB per
/// connection and attached database for good (bench/RESULTS.md, "Memory of a long-lived
/// process"). The writer keeps the default.
pub(crate) const POOL_CACHE_KIB: u32 = 512;

async fn open_pool(
    main: &Path,
    apps: Arc<Vec<AppFile>>,
    size: u32,
) -> std::result::Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // A file does not go away like a server: sqlx's ping on every acquire was a hop to the
        // connection's thread and back for nothing.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            let apps = apps.clone();
            Box::pin(async move {
                for (schema, path) in apps.iter() {
                    for sql in attach_statements(schema, path) {
                        conn.execute(AssertSqlSafe(sql)).await?;
                    }
                    conn.execute(AssertSqlSafe(format!(
                        "PRAGMA {schema}.cache_size = -{POOL_CACHE_KIB}"
                    )))
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(sqlite_options(main).pragma("cache_size", format!("-{POOL_CACHE_KIB}")))
        .await
}

impl Db {
    /// SQLite: how many times the idle reader pool, and the idle writer, gave their page
    /// caches back (see [`SqlitePools::shrink_when_idle`]); `None` on other databases.
    pub fn sqlite_idle_shrinks(&self) -> Option<(u64, u64)> {
        match self {
            Db::Sqlite { pools, .. } => Some(pools.idle_shrinks()),
            _ => None,
        }
    }

    /// SQLite: why a new app's file could not be attached, if it could not: every connection
    /// attaches every app file, and SQLite attaches at most `SQLITE_MAX_ATTACHED` (10 unless
    /// built otherwise).
    pub(crate) fn attach_room_problem(&self, app_uid: &str) -> Option<String> {
        let Db::Sqlite { pools, .. } = self else {
            return None;
        };
        let apps = pools.apps();
        (apps.len() >= pools.limit()).then(|| {
            let names: Vec<&str> = apps.iter().map(|(s, _)| s.as_str()).collect();
            format!(
                "app `{app_uid}` is new and needs a database file of its own, but the embedded \
                 SQLite database attaches at most {} app databases (SQLITE_MAX_ATTACHED) and \
                 holds {} already ({}): run the server on PostgreSQL or MySQL for more apps",
                pools.limit(),
                apps.len(),
                names.join(", ")
            )
        })
    }

    /// SQLite: attaches `file` as `schema` on a connection of its own beside every app file
    /// attached now, as each connection will once it is added: a file that cannot be attached
    /// is found before anything is written to it.
    pub(crate) async fn try_attach(&self, schema: &str, file: &Path) -> Result<()> {
        let Db::Sqlite { dir, pools, .. } = self else {
            return Ok(());
        };
        let mut conn =
            sqlx::SqliteConnection::connect_with(&sqlite_options(&dir.join("cloudio.db"))).await?;
        let mut apps = pools.apps().as_ref().clone();
        apps.push((schema.to_string(), sql_path(file)));
        let mut result = Ok(());
        'all: for (schema, path) in &apps {
            for sql in attach_statements(schema, path) {
                if let Err(e) = conn.execute(AssertSqlSafe(sql)).await {
                    result = Err(StoreError::from(e));
                    break 'all;
                }
            }
        }
        let _ = conn.close().await;
        result
    }

    /// SQLite: adds an app's file to those every connection attaches and whose health is
    /// checked (see `SqlitePools::add`); the writer attaches it before its next batch.
    pub(crate) async fn attach_app_file(&self, schema: &str, file: &Path) -> Result<()> {
        let Db::Sqlite { pools, health, .. } = self else {
            return Ok(());
        };
        pools.add(schema, file, health).await?;
        tracing::info!(schema, file = %file.display(), "app database attached");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app file with one row, made as a patch's migrations would.
    async fn app_file(dir: &Path, schema: &str) -> std::path::PathBuf {
        let file = dir.join(format!("{schema}.db"));
        let mut conn = crate::db::open_sqlite_file(&file).await.unwrap();
        conn.execute("CREATE TABLE T (X INTEGER); INSERT INTO T VALUES (7);")
            .await
            .unwrap();
        conn.close().await.unwrap();
        file
    }

    async fn count(db: &Db, schema: &str) -> Result<i64> {
        let rows = db
            .acquire()
            .await?
            .raw()
            .fetch_all(
                &format!("SELECT COUNT(*) FROM {schema}.sqlite_master"),
                &[],
                &[query::AttrType::Integer],
            )
            .await?;
        match rows.first().and_then(|r| r.first()) {
            Some(query::Value::Int(n)) => Ok(*n),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_acquired_after_an_attach_has_the_file() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let target = crate::DbTarget::SqliteDir(dir.path().to_path_buf());
        let db = Db::connect(&target, 4).await.unwrap();
        // Connections opened before, some of them in use across the attach.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(db.acquire().await.unwrap());
        }
        // Requests acquiring all along: once the attach returned, every acquire sees the file.
        let attached = Arc::new(AtomicBool::new(false));
        let after = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (db, attached, after) = (db.clone(), attached.clone(), after.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = 0;
                while mine < 20 {
                    let was = attached.load(Ordering::Acquire);
                    let schema = if was { "crm" } else { "main" };
                    count(&db, schema).await.unwrap();
                    if was {
                        mine += 1;
                        after.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let file = app_file(dir.path(), "crm").await;
        assert!(!db.app_attached("crm"));
        db.try_attach("crm", &file).await.unwrap();
        db.attach_app_file("crm", &file).await.unwrap();
        attached.store(true, Ordering::Release);
        assert!(db.app_attached("crm"));
        drop(held);
        for _ in 0..4 {
            assert_eq!(count(&db, "crm").await.unwrap(), 1);
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(after.load(Ordering::Relaxed), 60);

        // The writer's connection attaches it before its next batch.
        let writer = db.writer().unwrap();
        let n = writer
            .run(|w| w.execute("INSERT INTO crm.T VALUES (8)", &[]))
            .await
            .unwrap();
        assert_eq!(n, 1);
        let rows = writer
            .run(|w| w.fetch_all("SELECT SUM(X) FROM crm.T", &[], &[query::AttrType::Integer]))
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![query::Value::Int(15)]]);

        // Status and health cover it: replaced under the server, the database fails.
        db.ping().await.unwrap();
        std::fs::rename(&file, dir.path().join("moved.db")).unwrap();
        std::fs::copy(dir.path().join("moved.db"), &file).unwrap();
        let e = db.ping().await.unwrap_err().to_string();
        assert!(e.contains("crm.db was replaced"), "{e}");
        db.close().await;
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_attached_is_found_before_it_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let target = crate::DbTarget::SqliteDir(dir.path().to_path_buf());
        let db = Db::connect(&target, 2).await.unwrap();
        let not_a_db = dir.path().join("junk.db");
        std::fs::write(&not_a_db, b"this is not a database, not at all, no").unwrap();
        assert!(db.try_attach("junk", &not_a_db).await.is_err());
        assert!(!db.app_attached("junk"));
        // As many as SQLite attaches, then a problem that names the limit.
        let limit = match &db {
            Db::Sqlite { pools, .. } => pools.limit(),
            _ => unreachable!(),
        };
        assert_eq!(limit, 10, "libsqlite3-sys builds SQLite with its default");
        for i in 0..limit {
            let schema = format!("a{i}");
            assert!(db.attach_room_problem(&schema).is_none());
            let file = app_file(dir.path(), &schema).await;
            db.try_attach(&schema, &file).await.unwrap();
            db.attach_app_file(&schema, &file).await.unwrap();
        }
        // The replaced pools closed their connections: the descriptors open on `cloudio.db`
        // are those of one pool (2), the writer, and the probe's.
        let main = dir.path().join("cloudio.db");
        let open = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|p| *p == main)
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while open() > 4 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(open() <= 4, "{} descriptors on {}", open(), main.display());
        let problem = db.attach_room_problem("a10").unwrap();
        assert!(
            problem.contains("SQLITE_MAX_ATTACHED") && problem.contains("10"),
            "{problem}"
        );
        let file = app_file(dir.path(), "a10").await;
        assert!(db.try_attach("a10", &file).await.is_err());
        assert_eq!(count(&db, "a9").await.unwrap(), 1);
        db.close().await;
        std::fs::remove_file(&file).unwrap();
        std::fs::remove_file(&not_a_db).unwrap();
        // A directory with more app files than that is refused at open, by name.
        for i in 10..12 {
            app_file(dir.path(), &format!("a{i}")).await;
        }
        let e = Db::connect(&target, 2).await.unwrap_err().to_string();
        assert!(
            e.contains("12 app databases") && e.contains("at most 10"),
            "{e}"
        );
    }
}
