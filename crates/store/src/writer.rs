//! SQLite's writer: one thread with its own connection that runs short write jobs in batches.
//!
//! Through a pool, every single-row write paid for its own turn, connection hand-off, statement
//! round trip to the driver's worker thread and commit, one after the other; the server spent
//! most of its time waking threads. Here the jobs queued while a batch commits form the next
//! batch: one `BEGIN IMMEDIATE`, each job inside its own savepoint (a failing job undoes only
//! itself), one `COMMIT`, and only then the answers. A job learns it succeeded only once its
//! batch is durable in the WAL; if the commit fails, every job of the batch gets the error.
//!
//! The writer takes the process's write turn ([`crate::Db::write_turn`]) for each batch, so it
//! and the pool's write transactions never wait on SQLite's busy handler in this process.
//!
//! Its connection attaches every app file, like the pool's; a file a patch attached while the
//! server runs is attached here before the next batch (`ATTACH` cannot run in a transaction,
//! and between batches there is none).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Waker};

use query::{AttrType, Dialect, Value};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::attach::{IDLE_SHRINK, SqlitePools};
use crate::db::{SQLITE_BUSY_TIMEOUT, SqliteParam, attach_statements, coerce, sqlite_param};
use crate::error::{Result, StoreError};
use crate::health::FileHealth;

/// At most this many jobs share one transaction.
const MAX_BATCH: usize = 256;

/// A job: its code, run on the writer's connection (perhaps twice, see [`run_batch`]), and its
/// caller waiting for the answer.
trait Job: Send {
    /// Runs the code and keeps its outcome; says whether it succeeded.
    fn run(&mut self, conn: &mut WriteConn<'_>) -> bool;
    /// Answers the caller: the code's own error, else the batch's fate.
    fn answer(self: Box<Self>, committed: Result<()>);
    /// Whether the job wants a transaction of its own (see [`Writer::run_alone`]).
    fn alone(&self) -> bool;
}

struct Pending<F, T, E> {
    f: F,
    alone: bool,
    out: Option<std::result::Result<T, E>>,
    reply: tokio::sync::oneshot::Sender<std::result::Result<T, E>>,
}

impl<F, T, E> Job for Pending<F, T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: Fn(&mut WriteConn<'_>) -> std::result::Result<T, E> + Send + 'static,
{
    fn run(&mut self, conn: &mut WriteConn<'_>) -> bool {
        let out = catch_unwind(AssertUnwindSafe(|| (self.f)(conn))).unwrap_or_else(|_| {
            tracing::error!("a write job panicked");
            Err(StoreError::Other("the write failed inside the server".into()).into())
        });
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<()>) {
        let out = match self.out {
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => committed.map(|()| v).map_err(E::from),
            None => Err(E::from(committed.err().unwrap_or_else(|| {
                StoreError::Other("the write did not run".into())
            }))),
        };
        let _ = self.reply.send(out);
    }

    fn alone(&self) -> bool {
        self.alone
    }
}

enum Msg {
    Job(Box<dyn Job>),
    Stop,
}

/// A handle on the writer thread; clones share it. The thread ends on [`Writer::stop`] or when
/// the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

impl Writer {
    /// Starts the writer's thread, which opens its own connection (`cloudio.db` with the app
    /// databases attached).
    pub(crate) fn start(
        main: &Path,
        pools: Arc<SqlitePools>,
        turn: Arc<tokio::sync::Mutex<()>>,
        health: Arc<FileHealth>,
    ) -> Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let main = main.to_path_buf();
        // The thread opens its own connection, off the start-up path; the pool has just opened
        // the same files, so this fails only if the disk does meanwhile.
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || match open(&main) {
                Ok(conn) => {
                    let mut conn = Attaching {
                        conn,
                        pools,
                        generation: None,
                        done: 0,
                    };
                    match conn.sync() {
                        Ok(()) => run(conn, rx, turn, &health),
                        Err(e) => refuse(&e, rx),
                    }
                }
                Err(e) => refuse(&StoreError::from(e), rx),
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Writer { tx })
    }

    /// Runs `f` on the writer's connection in the next batch; answers after that batch commits.
    /// `f` must be short (it holds the database's write lock for every job of its batch) and
    /// may run twice: when its batch cannot commit, its work is undone and it runs again alone.
    /// When `f` fails, its work is undone and its error is the answer; the error type is the
    /// caller's (anything a [`StoreError`] converts into).
    pub async fn run<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: Fn(&mut WriteConn<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        self.submit(f, false).await
    }

    /// As [`Writer::run`], in a transaction of its own: for jobs that write many rows. In a
    /// shared batch a job runs inside a savepoint, and SQLite then keeps a copy of every page
    /// each of its statements changes until the job ends (a 10,000-row post wrote 185 MB to a
    /// temporary file that way).
    pub async fn run_alone<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: Fn(&mut WriteConn<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        self.submit(f, true).await
    }

    async fn submit<T, E, F>(&self, f: F, alone: bool) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: Fn(&mut WriteConn<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Pending {
            f,
            alone,
            out: None,
            reply,
        };
        self.tx
            .send(Msg::Job(Box::new(job)))
            .map_err(|_| StoreError::Unavailable("the database is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the database writer stopped".into()))?
    }

    /// Asks the thread to finish its batch and close its connection.
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

fn open(main: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        main,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The same settings as the pool's connections (`sqlite_options`, `attach_statements`).
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The writer's connection and the app files it has attached.
struct Attaching {
    conn: Connection,
    /// The list of app files is theirs.
    pools: Arc<SqlitePools>,
    /// The generation of the list last attached; `None` before the first.
    generation: Option<u64>,
    /// How many of the list's files are attached (the list only grows).
    done: usize,
}

impl Attaching {
    /// Attaches the files added to the list since the last call (none, mostly: one atomic
    /// read). Outside any transaction.
    fn sync(&mut self) -> Result<()> {
        if self.generation == Some(self.pools.generation()) {
            return Ok(());
        }
        let (generation, apps) = self.pools.snapshot();
        for (schema, path) in apps.iter().skip(self.done) {
            for sql in attach_statements(schema, path) {
                self.conn.execute_batch(&sql)?;
            }
            self.done += 1;
        }
        self.generation = Some(generation);
        Ok(())
    }
}

/// The writer could not open its connection: every job gets the reason.
fn refuse(e: &StoreError, rx: mpsc::Receiver<Msg>) {
    tracing::error!(error = %e, "the SQLite writer cannot open the database");
    while let Ok(Msg::Job(job)) = rx.recv() {
        job.answer(Err(StoreError::Unavailable(e.to_string())));
    }
}

fn run(
    mut conn: Attaching,
    rx: mpsc::Receiver<Msg>,
    turn: Arc<tokio::sync::Mutex<()>>,
    health: &FileHealth,
) {
    // A job that wants its own transaction, taken from the queue while filling a batch.
    let mut next: Option<Box<dyn Job>> = None;
    let mut stopping = false;
    // Whether the connection has worked since it last gave its page cache back: after
    // `IDLE_SHRINK` without a job it does (`PRAGMA shrink_memory`), as the pool's do.
    let mut dirty = false;
    while !stopping {
        let first = match next.take() {
            Some(j) => j,
            None => {
                let msg = if dirty {
                    match rx.recv_timeout(IDLE_SHRINK) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = conn.conn.execute_batch("PRAGMA shrink_memory") {
                                tracing::debug!(error = %e, "shrinking the writer's cache failed");
                            }
                            conn.pools.writer_shrunk();
                            dirty = false;
                            continue;
                        }
                        other => other.ok(),
                    }
                } else {
                    rx.recv().ok()
                };
                match msg {
                    Some(Msg::Job(j)) => j,
                    Some(Msg::Stop) | None => break,
                }
            }
        };
        dirty = true;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && !batch[0].alone() {
            match rx.try_recv() {
                Ok(Msg::Job(j)) if j.alone() => {
                    next = Some(j);
                    break;
                }
                Ok(Msg::Job(j)) => batch.push(j),
                Ok(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _turn = turn.blocking_lock();
        // A write to a deleted or replaced file would be acknowledged, then lost; a job may be
        // for an app whose file was attached since the last batch.
        if let Err(e) = health.check_identity().and_then(|()| conn.sync()) {
            for job in batch {
                job.answer(Err(e.clone()));
            }
            continue;
        }
        if batch.len() == 1 {
            run_alone(&mut conn.conn, batch.remove(0));
        } else {
            run_batch(&mut conn.conn, batch);
        }
    }
    if let Some(j) = next {
        let _turn = turn.blocking_lock();
        match health.check_identity().and_then(|()| conn.sync()) {
            Ok(()) => run_alone(&mut conn.conn, j),
            Err(e) => j.answer(Err(e)),
        }
    }
}

/// One job, one transaction (no savepoint: the transaction is the job's).
fn run_alone(conn: &mut Connection, mut job: Box<dyn Job>) {
    let done = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
        if job.run(&mut WriteConn { conn: &mut *conn }) {
            conn.execute_batch("COMMIT")
        } else {
            conn.execute_batch("ROLLBACK")
        }
    });
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    job.answer(done.map_err(StoreError::from));
}

/// One transaction for the whole batch, a savepoint per job: a job that fails undoes only its
/// own work. If the commit itself fails (a deferred constraint that one job broke, say), the
/// batch is rolled back and each job runs again in a transaction of its own, so only the
/// culprit fails.
fn run_batch(conn: &mut Connection, mut batch: Vec<Box<dyn Job>>) {
    let committed = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
        for job in &mut batch {
            conn.execute_batch("SAVEPOINT job")?;
            if !job.run(&mut WriteConn { conn: &mut *conn }) {
                conn.execute_batch("ROLLBACK TO job")?;
            }
            conn.execute_batch("RELEASE job")?;
        }
        conn.execute_batch("COMMIT")
    });
    let Err(e) = committed else {
        for job in batch {
            job.answer(Ok(()));
        }
        return;
    };
    let e = StoreError::from(e);
    let _ = conn.execute_batch("ROLLBACK");
    if batch.len() == 1 || !matches!(e, StoreError::Constraint(_) | StoreError::Duplicate(_)) {
        tracing::warn!(error = %e, jobs = batch.len(), "a write batch failed");
        for job in batch {
            job.answer(Err(e.clone()));
        }
        return;
    }
    for job in batch {
        run_alone(conn, job);
    }
}

/// The writer's connection, as seen by a job: binds [`Value`]s and decodes rows like
/// [`crate::Raw`] does for the pool. Holds the connection mutably, so it is `Send` (a job's
/// code may be written once for the pool and the writer).
pub struct WriteConn<'c> {
    conn: &'c mut Connection,
}

impl WriteConn<'_> {
    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(StoreError::from)?;
        for (i, v) in params.iter().enumerate() {
            bind(&mut stmt, i + 1, v).map_err(StoreError::from)?;
        }
        Ok(stmt.raw_execute().map_err(StoreError::from)? as u64)
    }

    /// Runs one statement and decodes each returned cell as the given type (by position).
    pub fn fetch_all(
        &self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> Result<Vec<Vec<Value>>> {
        Ok(self.query(sql, params, Some(types))?.1)
    }

    /// Runs one statement with no typing: column names and cells as SQLite stores them.
    pub fn fetch_named(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
        self.query(sql, params, None)
    }

    fn query(
        &self,
        sql: &str,
        params: &[Value],
        types: Option<&[AttrType]>,
    ) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(StoreError::from)?;
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        for (i, v) in params.iter().enumerate() {
            bind(&mut stmt, i + 1, v).map_err(StoreError::from)?;
        }
        let width = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(StoreError::from)? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                let cell = match row.get_ref(i).map_err(StoreError::from)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Real(f) => Value::Float(f),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                };
                cells.push(match types {
                    Some(types) => {
                        let ty = types.get(i).copied().unwrap_or(AttrType::String);
                        coerce(cell, ty).map_err(|e| {
                            StoreError::Other(format!("cannot decode column {i}: {e}"))
                        })?
                    }
                    None => cell,
                });
            }
            out.push(cells);
        }
        Ok((names, out))
    }
}

impl crate::db::Exec for WriteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> impl Future<Output = Result<Vec<Vec<Value>>>> + Send {
        std::future::ready(WriteConn::fetch_all(self, sql, params, types))
    }
    fn fetch_named(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<(Vec<String>, Vec<Vec<Value>>)>> + Send {
        std::future::ready(WriteConn::fetch_named(self, sql, params))
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> impl Future<Output = Result<u64>> + Send {
        std::future::ready(WriteConn::execute(self, sql, params))
    }
}

/// Runs a future made only of writer-connection steps (always ready: see [`crate::Exec`]) to
/// its end, on the writer's own thread.
pub fn finish_now<T, E: From<StoreError>>(
    f: impl Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => Err(E::from(StoreError::Other(
            "a writer job waited on something outside the writer".into(),
        ))),
    }
}

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, i: usize, v: &Value) -> rusqlite::Result<()> {
    match sqlite_param(v) {
        SqliteParam::Null => stmt.raw_bind_parameter(i, rusqlite::types::Null),
        SqliteParam::Int(n) => stmt.raw_bind_parameter(i, n),
        SqliteParam::Float(f) => stmt.raw_bind_parameter(i, f),
        SqliteParam::Text(s) => stmt.raw_bind_parameter(i, s.as_ref()),
    }
}
