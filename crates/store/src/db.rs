//! Pools and connections over the concrete drivers (never sqlx's `Any`), with binding and
//! decoding of [`Value`]s per dialect.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use query::{AttrType, Dialect, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{
    AssertSqlSafe, Column, Connection, Executor, MySql, Postgres, Row, Sqlite, TypeInfo, ValueRef,
};

use crate::attach::SqlitePools;
use crate::error::{Result, StoreError};
use crate::health::FileHealth;
use crate::writer::Writer;

/// Where the database lives. Its `Debug` hides a password in the URL.
#[derive(Clone)]
pub enum DbTarget {
    /// Embedded SQLite: `cloudio.db` in this directory, one `<app>.db` per app beside it.
    SqliteDir(PathBuf),
    /// `postgres://...`
    Postgres(String),
    /// `mysql://...` (MySQL 8 or MariaDB 10.6+).
    Mysql(String),
}

impl std::fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbTarget::SqliteDir(dir) => f.debug_tuple("SqliteDir").field(dir).finish(),
            DbTarget::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
            DbTarget::Mysql(url) => f.debug_tuple("Mysql").field(&redact_url(url)).finish(),
        }
    }
}

/// `url` with its password (in the user info, or a `password=` parameter) replaced by `***`,
/// for logs and messages.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some((user, _)) = authority[..at].split_once(':')
        {
            out = format!("{scheme}://{user}:***@{}", &rest[at + 1..]);
        }
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{base}?{}", params.join("&"));
    }
    out
}

impl DbTarget {
    /// `--database-url` wins over `--data-dir`.
    pub fn from_config(data_dir: &Path, database_url: Option<&str>) -> Result<Self> {
        match database_url {
            None => Ok(DbTarget::SqliteDir(data_dir.to_path_buf())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(DbTarget::Postgres(url.to_string()))
            }
            Some(url) if url.starts_with("sqlite://") => {
                let dir = url.trim_start_matches("sqlite://");
                Ok(DbTarget::SqliteDir(PathBuf::from(if dir.is_empty() {
                    "."
                } else {
                    dir
                })))
            }
            Some(url) if url.starts_with("mysql://") || url.starts_with("mariadb://") => {
                Ok(DbTarget::Mysql(url.replacen("mariadb://", "mysql://", 1)))
            }
            Some(_) => Err(StoreError::Invalid(
                "--database-url must start with sqlite://, postgres:// or mysql://".into(),
            )),
        }
    }
}

/// A connection pool on one of the supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite {
        /// The pool, a function of the app databases each of its connections attaches (as the
        /// writer's does): replaced by one more when a patch adds a new app's file while the
        /// server runs (see [`crate::attach`]). Take `pools.current()` for each use.
        pools: Arc<SqlitePools>,
        dir: PathBuf,
        /// Writers of this process queue here, in order, before `BEGIN IMMEDIATE`: SQLite's own
        /// busy handler polls with growing sleeps, which made tail latencies of a second.
        write_lock: Arc<tokio::sync::Mutex<()>>,
        /// Short writes are batched through here (see [`Writer`]).
        writer: Writer,
        /// Whether the files are still those opened; writes are refused once they are not.
        health: Arc<FileHealth>,
    },
    Postgres(PgPool),
    /// MySQL/MariaDB. `database` (from the URL, default `cloudio`) holds the platform's tables;
    /// each app's tables live in the database `<database>_<app>`.
    Mysql {
        pool: MySqlPool,
        database: String,
    },
}

impl Db {
    pub async fn connect(target: &DbTarget, max_connections: u32) -> Result<Db> {
        match target {
            DbTarget::SqliteDir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
                let main = dir.join("cloudio.db");
                let apps = attached_apps(dir);
                let limit = sqlite_attach_limit()?;
                if apps.len() > limit {
                    return Err(StoreError::Invalid(format!(
                        "{} holds {} app databases, but the embedded SQLite database attaches at \
                         most {limit} (SQLITE_MAX_ATTACHED): move some apps to PostgreSQL or \
                         MySQL, or remove the files of apps no longer used",
                        dir.display(),
                        apps.len()
                    )));
                }
                check_writable(dir, &main, &apps)?;
                // SQLite work is CPU-bound in each connection's own thread and writers queue on one
                // lock: more connections than twice the cores add threads and page caches (2 MiB
                // each), not throughput.
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let size =
                    max_connections.clamp(1, u32::try_from(2 * cores).unwrap_or(u32::MAX).max(2));
                let pools = SqlitePools::open(&main, apps.clone(), limit, size)
                    .await
                    .map_err(|e| in_file(&main, &apps, e))?;
                let files: Vec<PathBuf> = std::iter::once(main.clone())
                    .chain(
                        apps.iter()
                            .map(|(schema, _)| dir.join(format!("{schema}.db"))),
                    )
                    .collect();
                let health = Arc::new(FileHealth::open(&files)?);
                let write_lock = Arc::<tokio::sync::Mutex<()>>::default();
                let pools = Arc::new(pools);
                tokio::spawn(SqlitePools::shrink_when_idle(Arc::downgrade(&pools)));
                let writer =
                    Writer::start(&main, pools.clone(), write_lock.clone(), health.clone())?;
                Ok(Db::Sqlite {
                    pools,
                    dir: dir.clone(),
                    write_lock,
                    writer,
                    health,
                })
            }
            DbTarget::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| {
                        StoreError::Invalid(format!("bad database URL {}: {e}", redact_url(url)))
                    })?
                    .options([("timezone", "UTC")]);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    // Ping only connections idle for a while (the server may have restarted or
                    // a firewall dropped them), not every acquire: that was a round trip per
                    // request.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for < Duration::from_secs(1) {
                                return Ok(true);
                            }
                            Ok(conn.ping().await.is_ok())
                        })
                    })
                    .connect_with(opts)
                    .await?;
                Ok(Db::Postgres(pool))
            }
            DbTarget::Mysql(url) => {
                let (opts, database) = mysql_options(url)?;
                // The platform's database first, on a connection without one.
                let mut conn = sqlx::MySqlConnection::connect_with(&opts).await?;
                conn.execute(AssertSqlSafe(format!(
                    "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"
                )))
                .await?;
                let _ = conn.close().await;
                let pool = MySqlPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for < Duration::from_secs(1) {
                                return Ok(true);
                            }
                            Ok(conn.ping().await.is_ok())
                        })
                    })
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // Times are UTC, strings are standard SQL (`\` is not an escape,
                            // `||` is not OR), bad values are errors, not warnings, and a
                            // division keeps the digits of a double (`AVG` of integers).
                            conn.execute(
                                "SET time_zone = '+00:00', sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT,\
                                 NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES,NO_ZERO_DATE,\
                                 NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO', \
                                 div_precision_increment = 30",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts.database(&database))
                    .await?;
                Ok(Db::Mysql { pool, database })
            }
        }
    }

    /// A pool that sees every app database: on SQLite, when app databases were created since
    /// the pool was opened, a new pool attaches them (the old one is closed).
    pub async fn reopen(self, max_connections: u32) -> Result<Db> {
        match self {
            Db::Sqlite {
                pools, dir, writer, ..
            } if *pools.apps() != attached_apps(&dir) => {
                writer.stop();
                pools.close().await;
                Db::connect(&DbTarget::SqliteDir(dir), max_connections).await
            }
            db => Ok(db),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite { .. } => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
            Db::Mysql { .. } => Dialect::Mysql,
        }
    }

    /// The schema holding an app's tables: on PostgreSQL the app uid (`-` as `_`, `cloudio` for
    /// the platform); on SQLite the attached database of that name (`main` for the platform);
    /// on MySQL the platform's database, or `<platform database>_<app>`, so that one server
    /// holds several installations (and tests) side by side.
    pub fn schema_of(&self, app_uid: &str) -> String {
        let schema = crate::migrate::app_schema(app_uid);
        match self {
            Db::Sqlite { .. } if app_uid == crate::PLATFORM_APP => "main".into(),
            Db::Mysql { database, .. } if app_uid == crate::PLATFORM_APP => database.clone(),
            Db::Mysql { database, .. } => format!("{database}_{schema}"),
            _ => schema,
        }
    }

    /// The schema (database) holding the platform's tables: `cloudio`, or on MySQL the
    /// database named by the URL.
    pub fn platform_schema(&self) -> &str {
        match self {
            Db::Mysql { database, .. } => database,
            _ => crate::PLATFORM_APP,
        }
    }

    /// SQLite's batching writer, for short writes; `None` on PostgreSQL, whose writers do not
    /// queue.
    pub fn writer(&self) -> Option<&Writer> {
        match self {
            Db::Sqlite { writer, .. } => Some(writer),
            Db::Postgres(_) | Db::Mysql { .. } => None,
        }
    }

    pub async fn acquire(&self) -> Result<Conn> {
        Ok(match self {
            Db::Sqlite { pools, .. } => Conn::Sqlite(pools.current().acquire().await?),
            Db::Postgres(pool) => Conn::Postgres(pool.acquire().await?),
            Db::Mysql { pool, .. } => Conn::Mysql(pool.acquire().await?),
        })
    }

    /// This process's turn to write: on SQLite, writers queue here in order (SQLite's own busy
    /// handler polls with growing sleeps); on PostgreSQL there is nothing to wait for. Hold it
    /// for as long as the write lasts.
    pub async fn write_turn(&self) -> WriteTurn {
        match self {
            Db::Sqlite { write_lock, .. } => WriteTurn(Some(write_lock.clone().lock_owned().await)),
            Db::Postgres(_) | Db::Mysql { .. } => WriteTurn(None),
        }
    }

    /// A transaction that will write: on SQLite it takes this process's write turn and then the
    /// database's write lock at once (`BEGIN IMMEDIATE`), so a read never has to upgrade.
    pub async fn begin_write(&self) -> Result<Tx> {
        self.check_files()?;
        Ok(match self {
            Db::Sqlite { pools, .. } => {
                let turn = self.write_turn().await;
                Tx::Sqlite(pools.current().begin_with("BEGIN IMMEDIATE").await?, turn)
            }
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Mysql { pool, .. } => Tx::Mysql(pool.begin().await?),
        })
    }

    /// A transaction that reads and writes only if it must (a script's `db` call): on SQLite a
    /// deferred `BEGIN` without the write turn, so reads of many requests overlap; a write in
    /// it takes SQLite's lock then (waiting up to the busy timeout).
    pub async fn begin_read(&self) -> Result<Tx> {
        Ok(match self {
            Db::Sqlite { pools, .. } => Tx::Sqlite(pools.current().begin().await?, WriteTurn(None)),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Mysql { pool, .. } => Tx::Mysql(pool.begin().await?),
        })
    }

    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.check_files()?;
        self.acquire().await?.raw().execute(sql, params).await
    }

    /// On SQLite, before a write: are the files still those opened (see [`FileHealth`])? A
    /// write to a deleted or replaced file would be acknowledged and then lost.
    pub(crate) fn check_files(&self) -> Result<()> {
        match self {
            Db::Sqlite { health, .. } => health.check_identity(),
            Db::Postgres(_) | Db::Mysql { .. } => Ok(()),
        }
    }

    pub async fn fetch_all(
        &self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> Result<Vec<Vec<Value>>> {
        self.acquire()
            .await?
            .raw()
            .fetch_all(sql, params, types)
            .await
    }

    pub async fn fetch_optional(
        &self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> Result<Option<Vec<Value>>> {
        Ok(self.fetch_all(sql, params, types).await?.into_iter().next())
    }

    /// For `/v1/status` and the periodic check: a round trip on PostgreSQL; on SQLite, every
    /// file still the one opened and a SQLite database (its header), and each schema readable.
    /// A database found deleted, replaced or corrupt stays failed until the server restarts.
    pub async fn ping(&self) -> Result<()> {
        match self {
            Db::Postgres(_) | Db::Mysql { .. } => self.execute("SELECT 1", &[]).await.map(|_| ()),
            Db::Sqlite { health, pools, .. } => {
                health.check_contents()?;
                // A pool and the files each of its connections attaches.
                let (pool, apps) = pools.with_apps();
                let mut conn = Conn::Sqlite(pool.acquire().await?);
                let schemas = std::iter::once("main").chain(apps.iter().map(|(s, _)| s.as_str()));
                for schema in schemas {
                    let sql = format!("SELECT COUNT(*) FROM {schema}.sqlite_master");
                    match conn.raw().fetch_all(&sql, &[], &[AttrType::Integer]).await {
                        Ok(_) => {}
                        // The file went bad, not the moment.
                        Err(StoreError::Corrupt(e)) => {
                            return Err(health.fail(format!("{schema}: {e}")));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Why the database was given up (SQLite files deleted, replaced or corrupt), if it was.
    pub fn failure(&self) -> Option<String> {
        match self {
            Db::Sqlite { health, .. } => health.failure().map(str::to_string),
            Db::Postgres(_) | Db::Mysql { .. } => None,
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite { pools, writer, .. } => {
                writer.stop();
                pools.close().await
            }
            Db::Postgres(pool) => pool.close().await,
            Db::Mysql { pool, .. } => pool.close().await,
        }
    }

    /// `(in use + idle, idle)` connections, for metrics.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self {
            Db::Sqlite { pools, .. } => {
                let pool = pools.current();
                (pool.size(), pool.num_idle())
            }
            Db::Postgres(pool) => (pool.size(), pool.num_idle()),
            Db::Mysql { pool, .. } => (pool.size(), pool.num_idle()),
        }
    }
}

/// Connection options from a `mysql://` URL, and the platform's database (the URL's, default
/// `cloudio`), checked as an identifier since it becomes part of every platform table's name.
pub(crate) fn mysql_options(url: &str) -> Result<(MySqlConnectOptions, String)> {
    let bad = |e: String| StoreError::Invalid(format!("bad database URL {}: {e}", redact_url(url)));
    let opts = MySqlConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
    let database = opts
        .get_database()
        .filter(|d| !d.is_empty())
        .unwrap_or(crate::PLATFORM_APP)
        .to_string();
    if !query::meta::is_identifier(&database) {
        return Err(bad(format!("`{database}` is not a plain database name")));
    }
    // No database on the connection itself: the platform's may not exist yet.
    let opts = MySqlConnectOptions::from_str(url)
        .map_err(|e| bad(e.to_string()))?
        .charset("utf8mb4");
    let opts = clear_database(opts);
    Ok((opts, database))
}

/// The options of a MySQL pool's connections, for a connection of its own.
pub(crate) fn mysql_options_of(db: &Db) -> Result<(MySqlConnectOptions, String)> {
    match db {
        Db::Mysql { pool, database } => Ok(((*pool.connect_options()).clone(), database.clone())),
        _ => Err(StoreError::Invalid("not a MySQL database".into())),
    }
}

fn clear_database(opts: MySqlConnectOptions) -> MySqlConnectOptions {
    // sqlx has no "unset": an empty name means none.
    opts.database("")
}

/// The database files must be writable, and so must their directory (SQLite creates `-wal` and
/// `-shm` files beside them): found out here, the error names the file; found out by SQLite
/// later, it was only "attempt to write a readonly database".
fn check_writable(dir: &Path, main: &Path, attached: &[(String, String)]) -> Result<()> {
    let files = std::iter::once(main.to_path_buf()).chain(
        attached
            .iter()
            .map(|(schema, _)| dir.join(format!("{schema}.db"))),
    );
    for db in files {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            let path = PathBuf::from(name);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "{} cannot be opened for writing: {e}",
                        path.display()
                    )));
                }
            }
        }
    }
    let probe = dir.join(format!(".cloudio-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create files in {}: {e}",
            dir.display()
        ))),
    }
}

/// An error opening the SQLite pool, naming the files it was opening.
fn in_file(main: &Path, attached: &[(String, String)], e: sqlx::Error) -> StoreError {
    let mut files = main.display().to_string();
    for (_, path) in attached {
        files.push_str(", ");
        files.push_str(&path.replace("''", "'"));
    }
    match StoreError::from(e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{files}: {m}")),
        StoreError::Other(m) => StoreError::Other(format!("{files}: {m}")),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{files}: {m}")),
        other => other,
    }
}

/// SQLite's wait for a lock held by another process (the CLI, another node on the same files).
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Attaches one app database (from [`attached_apps`]: a checked identifier and an escaped
/// path) at `synchronous = NORMAL`: as for the main database, with WAL that is safe against a
/// crash of the process, where FULL would fsync every commit.
pub(crate) fn attach_statements(schema: &str, path: &str) -> [String; 2] {
    [
        format!("ATTACH DATABASE '{path}' AS {schema}"),
        format!("PRAGMA {schema}.synchronous = NORMAL"),
    ]
}

pub(crate) fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
}

/// Opens one SQLite file directly (an app's own database), for that app's migrations.
pub(crate) async fn open_sqlite_file(path: &Path) -> Result<sqlx::SqliteConnection> {
    Ok(sqlx::SqliteConnection::connect_with(&sqlite_options(path)).await?)
}

/// The app databases beside `cloudio.db`: `<schema>.db` files, attached under their schema name.
/// Names are checked identifiers, and the path is escaped for the SQL string literal.
fn attached_apps(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().and_then(|e| e.to_str()) == Some("db")
            && stem != crate::PLATFORM_APP
            && query::meta::is_identifier(stem)
        {
            out.push((stem.to_string(), sql_path(&path)));
        }
    }
    out.sort();
    out
}

/// A file's path as the inside of an SQL string literal (`'` doubled).
pub(crate) fn sql_path(path: &Path) -> String {
    path.to_string_lossy().replace('\'', "''")
}

/// How many databases one SQLite connection may attach: `SQLITE_MAX_ATTACHED` as the bundled
/// SQLite was built (libsqlite3-sys does not set it: SQLite's default, 10).
fn sqlite_attach_limit() -> Result<usize> {
    let conn = rusqlite::Connection::open_in_memory()?;
    let limit = conn.limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED)?;
    Ok(usize::try_from(limit).unwrap_or(0))
}

/// Rewrites `?` placeholders into the dialect's form. Only for the platform's own SQL, which has
/// no `?` inside literals; compiled client queries are rendered per dialect already.
pub fn portable(dialect: Dialect, sql: &str) -> Cow<'_, str> {
    if dialect == Dialect::Mysql {
        return mysql_upserts(sql);
    }
    if dialect != Dialect::Postgres || !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The platform's upserts in MySQL's form. `ON CONFLICT (..) DO UPDATE SET C = excluded.C`
/// becomes `ON DUPLICATE KEY UPDATE C = VALUES(C)`. `ON CONFLICT DO NOTHING` becomes
/// `INSERT IGNORE`, whose row count tells an insert from a duplicate (callers rely on it;
/// sqlx always sets `CLIENT_FOUND_ROWS`, under which a no-op update counts 1 too), except into
/// the tables whose foreign keys must fail loudly (`INSERT IGNORE` makes warnings of those):
/// there a no-op update of the first column.
fn mysql_upserts(sql: &str) -> Cow<'_, str> {
    const CHECKED: [&str; 3] = [".io_user_roles ", ".io_roles ", ".io_apps "];
    if let Some(head) = sql.strip_suffix(" ON CONFLICT DO NOTHING")
        && !CHECKED.iter().any(|t| head.contains(t))
        && let Some(rest) = head.strip_prefix("INSERT INTO ")
    {
        return Cow::Owned(format!("INSERT IGNORE INTO {rest}"));
    }
    if let Some(head) = sql.strip_suffix(" ON CONFLICT DO NOTHING") {
        let first = head
            .split_once('(')
            .and_then(|(_, rest)| rest.split([',', ')']).next())
            .map(str::trim)
            .unwrap_or_default();
        return Cow::Owned(format!("{head} ON DUPLICATE KEY UPDATE {first} = {first}"));
    }
    let Some(at) = sql.find(" ON CONFLICT (") else {
        return Cow::Borrowed(sql);
    };
    let Some(set) = sql[at..].find(" DO UPDATE SET ").map(|i| at + i) else {
        return Cow::Borrowed(sql);
    };
    let mut out = format!("{} ON DUPLICATE KEY UPDATE ", &sql[..at]);
    let mut rest = &sql[set + " DO UPDATE SET ".len()..];
    while let Some(i) = rest.find("excluded.") {
        out.push_str(&rest[..i]);
        rest = &rest[i + "excluded.".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push_str(&format!("VALUES({})", &rest[..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// A pooled connection.
pub enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
    Mysql(PoolConnection<MySql>),
}

impl Conn {
    pub fn raw(&mut self) -> Raw<'_> {
        match self {
            Conn::Sqlite(c) => Raw::Sqlite(c),
            Conn::Postgres(c) => Raw::Postgres(c),
            Conn::Mysql(c) => Raw::Mysql(c),
        }
    }
}

/// A transaction; dropped without [`Tx::commit`] it rolls back.
/// See [`Db::write_turn`].
#[must_use]
pub struct WriteTurn(
    /// Held, never read: dropping it passes the turn on.
    #[allow(dead_code)]
    pub(crate) Option<tokio::sync::OwnedMutexGuard<()>>,
);

pub enum Tx {
    /// With this process's write turn, when the transaction writes.
    Sqlite(sqlx::Transaction<'static, Sqlite>, WriteTurn),
    Postgres(sqlx::Transaction<'static, Postgres>),
    Mysql(sqlx::Transaction<'static, MySql>),
}

impl Tx {
    pub fn raw(&mut self) -> Raw<'_> {
        match self {
            Tx::Sqlite(c, _) => Raw::Sqlite(c),
            Tx::Postgres(c) => Raw::Postgres(c),
            Tx::Mysql(c) => Raw::Mysql(c),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(..) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
            Tx::Mysql(_) => Dialect::Mysql,
        }
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t, _turn) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
            Tx::Mysql(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// Where statements run: a pool connection or transaction ([`Raw`], async) or SQLite's writer
/// connection ([`crate::WriteConn`], synchronous, its futures always ready), so code that runs
/// statements is written once for both; on the writer's thread such code is run to its end by
/// [`crate::writer::finish_now`].
pub trait Exec: Send {
    fn dialect(&self) -> Dialect;
    /// Runs a statement and decodes each cell as the given type (by position).
    fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> impl Future<Output = Result<Vec<Vec<Value>>>> + Send;
    /// Runs a statement with no typing: column names and cells as the database gives them.
    fn fetch_named(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<(Vec<String>, Vec<Vec<Value>>)>> + Send;
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> impl Future<Output = Result<u64>> + Send;
}

impl Exec for Raw<'_> {
    fn dialect(&self) -> Dialect {
        Raw::dialect(self)
    }
    fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> impl Future<Output = Result<Vec<Vec<Value>>>> + Send {
        Raw::fetch_all(self, sql, params, types)
    }
    fn fetch_named(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<(Vec<String>, Vec<Vec<Value>>)>> + Send {
        Raw::fetch_named(self, sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> impl Future<Output = Result<u64>> + Send {
        Raw::execute(self, sql, params)
    }
}

/// A borrowed connection of either kind: the one place that binds and decodes.
pub enum Raw<'c> {
    Sqlite(&'c mut sqlx::SqliteConnection),
    Postgres(&'c mut sqlx::PgConnection),
    Mysql(&'c mut sqlx::MySqlConnection),
}

impl Raw<'_> {
    pub fn dialect(&self) -> Dialect {
        match self {
            Raw::Sqlite(_) => Dialect::Sqlite,
            Raw::Postgres(_) => Dialect::Postgres,
            Raw::Mysql(_) => Dialect::Mysql,
        }
    }

    /// Runs one statement (placeholders in the dialect's form); returns rows affected.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            Raw::Sqlite(c) => {
                let q = bind_sqlite(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                Ok(q.execute(&mut **c).await?.rows_affected())
            }
            Raw::Postgres(c) => {
                let q = bind_pg(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                Ok(q.execute(&mut **c).await?.rows_affected())
            }
            Raw::Mysql(c) => {
                let q = bind_mysql(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                Ok(q.execute(&mut **c).await?.rows_affected())
            }
        }
    }

    /// Runs a query and decodes each cell as the given type (by position).
    pub async fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> Result<Vec<Vec<Value>>> {
        match self {
            Raw::Sqlite(c) => {
                let q = bind_sqlite(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let rows = q.fetch_all(&mut **c).await?;
                rows.iter().map(|r| decode_sqlite(r, Some(types))).collect()
            }
            Raw::Postgres(c) => {
                let q = bind_pg(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let rows = q.fetch_all(&mut **c).await?;
                rows.iter().map(|r| decode_pg(r, Some(types))).collect()
            }
            Raw::Mysql(c) => {
                let q = bind_mysql(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let rows = q.fetch_all(&mut **c).await?;
                rows.iter().map(|r| decode_mysql(r, Some(types))).collect()
            }
        }
    }

    /// Runs a query with no typing (a script's own SQL): the column names, and each cell as the
    /// database stores it.
    pub async fn fetch_named(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
        match self {
            Raw::Sqlite(c) => {
                let q = bind_sqlite(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let rows = q.fetch_all(&mut **c).await?;
                let names = column_names(rows.first());
                let rows = rows
                    .iter()
                    .map(|r| decode_sqlite(r, None))
                    .collect::<Result<_>>()?;
                Ok((names, rows))
            }
            Raw::Postgres(c) => {
                let q = bind_pg(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let rows = q.fetch_all(&mut **c).await?;
                let names = column_names(rows.first());
                let rows = rows
                    .iter()
                    .map(|r| decode_pg(r, None))
                    .collect::<Result<_>>()?;
                Ok((names, rows))
            }
            Raw::Mysql(c) => {
                let q = bind_mysql(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let rows = q.fetch_all(&mut **c).await?;
                let names = column_names(rows.first());
                let rows = rows
                    .iter()
                    .map(|r| decode_mysql(r, None))
                    .collect::<Result<_>>()?;
                Ok((names, rows))
            }
        }
    }

    /// Runs a multi-statement script with no parameters (migrations).
    pub async fn execute_script(&mut self, sql: &str) -> Result<()> {
        match self {
            Raw::Sqlite(c) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                    .execute(&mut **c)
                    .await?;
            }
            Raw::Postgres(c) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                    .execute(&mut **c)
                    .await?;
            }
            Raw::Mysql(c) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                    .execute(&mut **c)
                    .await?;
            }
        }
        Ok(())
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
type MysqlQuery<'q> = sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>;

/// How a [`Value`] is stored in SQLite: booleans as integers, dates, times and JSON as text.
/// The one mapping for the pool ([`bind_sqlite`]) and the writer (`writer.rs`).
pub(crate) enum SqliteParam<'a> {
    Null,
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
}

pub(crate) fn sqlite_param(v: &Value) -> SqliteParam<'_> {
    match v {
        Value::Null => SqliteParam::Null,
        Value::Bool(b) => SqliteParam::Int(i64::from(*b)),
        Value::Int(i) => SqliteParam::Int(*i),
        Value::Float(f) => SqliteParam::Float(*f),
        Value::Text(s) => SqliteParam::Text(Cow::Borrowed(s)),
        Value::Date(d) => SqliteParam::Text(Cow::Owned(d.format("%Y-%m-%d").to_string())),
        Value::DateTime(t) => SqliteParam::Text(Cow::Owned(query::value::format_datetime(t))),
        Value::Json(j) => SqliteParam::Text(Cow::Owned(j.to_string())),
    }
}

fn bind_sqlite<'q>(mut q: SqliteQuery<'q>, params: &[Value]) -> SqliteQuery<'q> {
    for v in params {
        q = match sqlite_param(v) {
            SqliteParam::Null => q.bind(None::<String>),
            SqliteParam::Int(i) => q.bind(i),
            SqliteParam::Float(f) => q.bind(f),
            SqliteParam::Text(s) => q.bind(s.into_owned()),
        };
    }
    q
}

fn bind_pg<'q>(mut q: PgQuery<'q>, params: &[Value]) -> PgQuery<'q> {
    for v in params {
        q = match v {
            Value::Null => q.bind(PgNull),
            Value::Bool(b) => q.bind(*b),
            Value::Int(i) => q.bind(*i),
            Value::Float(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.clone()),
            Value::Date(d) => q.bind(*d),
            Value::DateTime(t) => q.bind(*t),
            Value::Json(j) => q.bind(sqlx::types::Json(j.clone())),
        };
    }
    q
}

/// MySQL: times as naive UTC (every session's `time_zone` is `+00:00`), JSON as text.
fn bind_mysql<'q>(mut q: MysqlQuery<'q>, params: &[Value]) -> MysqlQuery<'q> {
    for v in params {
        q = match v {
            Value::Null => q.bind(None::<String>),
            Value::Bool(b) => q.bind(*b),
            Value::Int(i) => q.bind(*i),
            Value::Float(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.clone()),
            Value::Date(d) => q.bind(*d),
            Value::DateTime(t) => q.bind(t.naive_utc()),
            Value::Json(j) => q.bind(j.to_string()),
        };
    }
    q
}

/// A NULL of unspecified type (oid 0), so PostgreSQL infers it from the column or operator
/// instead of insisting on `text`.
struct PgNull;

impl sqlx::Type<Postgres> for PgNull {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for PgNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

fn decode_err(col: usize, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("cannot decode column {col}: {e}"))
}

fn column_names<R: Row>(row: Option<&R>) -> Vec<String> {
    row.map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
        .unwrap_or_default()
}

/// Decodes a row; with `types`, each cell is converted to its attribute's type.
fn decode_sqlite(row: &SqliteRow, types: Option<&[AttrType]>) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let storage = raw.type_info().name().to_ascii_uppercase();
        let cell = match storage.as_str() {
            "INTEGER" => Value::Int(row.try_get::<i64, _>(i)?),
            "REAL" => Value::Float(row.try_get::<f64, _>(i)?),
            "BLOB" => Value::Text(String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(i)?).into()),
            _ => Value::Text(row.try_get::<String, _>(i)?),
        };
        out.push(match types {
            Some(types) => {
                let ty = types.get(i).copied().unwrap_or(AttrType::String);
                coerce(cell, ty).map_err(|e| decode_err(i, e))?
            }
            None => cell,
        });
    }
    Ok(out)
}

fn decode_pg(row: &PgRow, types: Option<&[AttrType]>) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let cell = match col.type_info().name() {
            "INT2" => Value::Int(row.try_get::<i16, _>(i)?.into()),
            "INT4" => Value::Int(row.try_get::<i32, _>(i)?.into()),
            "INT8" => Value::Int(row.try_get::<i64, _>(i)?),
            "FLOAT4" => Value::Float(row.try_get::<f32, _>(i)?.into()),
            "FLOAT8" => Value::Float(row.try_get::<f64, _>(i)?),
            "NUMERIC" => {
                let d: sqlx::types::BigDecimal = row.try_get(i)?;
                Value::Float(d.to_string().parse::<f64>().map_err(|e| decode_err(i, e))?)
            }
            "BOOL" => Value::Bool(row.try_get::<bool, _>(i)?),
            "DATE" => Value::Date(row.try_get::<NaiveDate, _>(i)?),
            "TIMESTAMP" => Value::DateTime(row.try_get::<NaiveDateTime, _>(i)?.and_utc()),
            "TIMESTAMPTZ" => Value::DateTime(row.try_get::<DateTime<Utc>, _>(i)?),
            "JSON" | "JSONB" => Value::Json(row.try_get::<serde_json::Value, _>(i)?),
            "UUID" => Value::Text(row.try_get::<uuid::Uuid, _>(i)?.to_string()),
            _ => Value::Text(row.try_get::<String, _>(i)?),
        };
        out.push(match types {
            Some(types) => {
                let ty = types.get(i).copied().unwrap_or(AttrType::String);
                coerce(cell, ty).map_err(|e| decode_err(i, e))?
            }
            None => cell,
        });
    }
    Ok(out)
}

fn decode_mysql(row: &MySqlRow, types: Option<&[AttrType]>) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let name = col.type_info().name().to_ascii_uppercase();
        let unsigned = name.contains("UNSIGNED");
        let cell = match name.trim_end_matches(" UNSIGNED") {
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" if unsigned => {
                let v: u64 = row.try_get(i)?;
                Value::Int(i64::try_from(v).map_err(|e| decode_err(i, e))?)
            }
            "TINYINT" => Value::Int(row.try_get::<i8, _>(i)?.into()),
            "SMALLINT" => Value::Int(row.try_get::<i16, _>(i)?.into()),
            "MEDIUMINT" | "INT" => Value::Int(row.try_get::<i32, _>(i)?.into()),
            "BIGINT" => Value::Int(row.try_get::<i64, _>(i)?),
            "BOOLEAN" => Value::Bool(row.try_get::<bool, _>(i)?),
            "FLOAT" => Value::Float(row.try_get::<f32, _>(i)?.into()),
            "DOUBLE" => Value::Float(row.try_get::<f64, _>(i)?),
            "DECIMAL" => {
                let d: sqlx::types::BigDecimal = row.try_get(i)?;
                Value::Float(d.to_string().parse::<f64>().map_err(|e| decode_err(i, e))?)
            }
            "DATE" => Value::Date(row.try_get::<NaiveDate, _>(i)?),
            "DATETIME" => Value::DateTime(row.try_get::<NaiveDateTime, _>(i)?.and_utc()),
            "TIMESTAMP" => Value::DateTime(row.try_get::<DateTime<Utc>, _>(i)?),
            "JSON" => Value::Json(row.try_get::<serde_json::Value, _>(i)?),
            "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
                Value::Text(String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(i)?).into())
            }
            _ => Value::Text(row.try_get::<String, _>(i)?),
        };
        out.push(match types {
            Some(types) => {
                let ty = types.get(i).copied().unwrap_or(AttrType::String);
                coerce(cell, ty).map_err(|e| decode_err(i, e))?
            }
            None => cell,
        });
    }
    Ok(out)
}

/// Converts a decoded cell into the attribute's type (SQLite keeps dates as text, booleans as
/// integers, and so on).
pub(crate) fn coerce(v: Value, ty: AttrType) -> std::result::Result<Value, String> {
    use AttrType as T;
    Ok(match (ty, v) {
        (_, Value::Null) => Value::Null,
        (T::Integer, Value::Float(f)) if f.fract() == 0.0 => Value::Int(f as i64),
        (T::Decimal | T::Double | T::Percent, Value::Int(i)) => Value::Float(i as f64),
        (T::Boolean, Value::Int(i)) => Value::Bool(i != 0),
        (T::Date, Value::Text(s)) => {
            Value::Date(query::value::parse_date(&s).ok_or_else(|| format!("bad date {s:?}"))?)
        }
        (T::Date, Value::DateTime(t)) => Value::Date(t.date_naive()),
        (T::DateTime, Value::Text(s)) => Value::DateTime(
            query::value::parse_datetime(&s).ok_or_else(|| format!("bad date-time {s:?}"))?,
        ),
        (T::DateTime, Value::Date(d)) => Value::DateTime(d.and_time(Default::default()).and_utc()),
        (T::Json, Value::Text(s)) => {
            Value::Json(serde_json::from_str(&s).map_err(|e| format!("bad JSON: {e}"))?)
        }
        (T::String | T::Email | T::Phone | T::Url | T::UserId | T::Yn, Value::Int(i)) => {
            Value::Text(i.to_string())
        }
        (_, v) => v,
    })
}
