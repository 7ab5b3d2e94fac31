//! The one executor: statements run the same way on a pool connection or transaction
//! ([`store::Raw`], async) and on SQLite's writer thread ([`store::WriteConn`], synchronous
//! and always ready), so the chain is written once over [`Exec`].

use std::future::Future;

use query::{
    AttrType, Compiled, Datasource, Dialect, KeyGeneration, OutputColumn, RowOp, Value,
    WriteContext, WriteRow, compile_lookup, compile_reread, compile_write, returning_columns,
};
use serde_json::{Map, Value as Json};
use store::{Raw, WriteConn};

use super::{Error, Result};

/// Where the chain runs: where statements run ([`store::Exec`]), and whether scripts may.
pub(crate) trait Exec: store::Exec {
    /// Whether scripts may run here (not on the writer thread, which must stay short).
    fn runs_scripts(&self) -> bool;
    /// Called before each `db` call a script makes: where statements so far ran without a
    /// transaction, one begins here.
    fn enter_script(&mut self) -> impl Future<Output = store::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl Exec for Raw<'_> {
    fn runs_scripts(&self) -> bool {
        true
    }
}

impl Exec for WriteConn<'_> {
    fn runs_scripts(&self) -> bool {
        false
    }
}

/// One statement as it ran, for a developer's SQL echo (`/v1/api?debug=sql`).
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    /// The bind values in placeholder order, as JSON (secrets replaced, see [`Traced`]).
    pub binds: Vec<Json>,
    pub micros: u64,
    /// Rows returned (queries) or affected (updates); `None` when the statement failed.
    pub rows: Option<u64>,
}

/// An executor that records every statement run through it, scripts' `db` calls included, so
/// the echo shows what really ran (compiled queries, counts, writes, the 404/409 lookup, hook
/// SQL), not a recompilation of the request.
pub(crate) struct Traced<'a, E> {
    pub inner: &'a mut E,
    pub log: &'a mut Vec<Statement>,
    /// Every bind hidden: the request touches a datasource with write-only attributes.
    pub redact_all: bool,
}

impl<E> Traced<'_, E> {
    fn record(
        &mut self,
        sql: &str,
        params: &[Value],
        started: std::time::Instant,
        rows: Option<u64>,
    ) {
        let binds = params
            .iter()
            .map(|v| match v {
                _ if self.redact_all => Json::from("<redacted>"),
                // A password hash (posted to `IoUsers` as a password) is never returned.
                Value::Text(t) if t.starts_with("$argon2") => Json::from("<redacted>"),
                v => v.to_json(),
            })
            .collect();
        self.log.push(Statement {
            sql: sql.to_string(),
            binds,
            micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            rows,
        });
    }
}

impl<E: Exec> store::Exec for Traced<'_, E> {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }
    async fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> store::Result<Vec<Vec<Value>>> {
        let started = std::time::Instant::now();
        let out = self.inner.fetch_all(sql, params, types).await;
        let rows = out.as_ref().ok().map(|r| r.len() as u64);
        self.record(sql, params, started, rows);
        out
    }
    async fn fetch_named(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> store::Result<(Vec<String>, Vec<Vec<Value>>)> {
        let started = std::time::Instant::now();
        let out = self.inner.fetch_named(sql, params).await;
        let rows = out.as_ref().ok().map(|r| r.1.len() as u64);
        self.record(sql, params, started, rows);
        out
    }
    async fn execute(&mut self, sql: &str, params: &[Value]) -> store::Result<u64> {
        let started = std::time::Instant::now();
        let out = self.inner.execute(sql, params).await;
        let rows = out.as_ref().ok().copied();
        self.record(sql, params, started, rows);
        out
    }
}

impl<E: Exec> Exec for Traced<'_, E> {
    fn runs_scripts(&self) -> bool {
        self.inner.runs_scripts()
    }
    async fn enter_script(&mut self) -> store::Result<()> {
        self.inner.enter_script().await
    }
}

/// Statements whose transaction begins only when it must, so that work which never touches
/// the database (or whose scripts never call `db`) costs no BEGIN and COMMIT.
/// - [`Lazy::new`], for a cloud function or a workflow step: a write transaction begun at the
///   first statement; a function that never touches the database holds no connection, and one
///   that does holds the write turn from its first call to its end (on SQLite a deferred
///   transaction could not always upgrade to a write after another writer committed).
/// - [`Lazy::read_first`], for a query with hooks: its own statements run on a pooled
///   connection without a transaction; from a script's first `db` call on, everything runs in
///   one transaction (on SQLite a deferred one, writing only if a script does).
///
/// [`Lazy::commit`] commits whatever began.
pub(crate) struct Lazy<'d> {
    db: &'d store::Db,
    /// Statements before any transaction run here (read-first only).
    conn: Option<store::Conn>,
    tx: Option<store::Tx>,
    read_first: bool,
}

impl<'d> Lazy<'d> {
    pub fn new(db: &'d store::Db) -> Self {
        Lazy {
            db,
            conn: None,
            tx: None,
            read_first: false,
        }
    }

    pub fn read_first(db: &'d store::Db) -> Self {
        Lazy {
            read_first: true,
            ..Lazy::new(db)
        }
    }

    async fn raw(&mut self) -> store::Result<Raw<'_>> {
        if self.tx.is_none() && !self.read_first {
            self.tx = Some(self.db.begin_write().await?);
        }
        if let Some(tx) = &mut self.tx {
            return Ok(tx.raw());
        }
        if self.conn.is_none() {
            self.conn = Some(self.db.acquire().await?);
        }
        match &mut self.conn {
            Some(c) => Ok(c.raw()),
            None => Err(store::StoreError::Other("no connection".into())),
        }
    }

    /// Whether any statement ran (a transaction or a connection was taken).
    pub fn began(&self) -> bool {
        self.tx.is_some() || self.conn.is_some()
    }

    pub async fn commit(self) -> store::Result<()> {
        match self.tx {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }
}

impl store::Exec for Lazy<'_> {
    fn dialect(&self) -> Dialect {
        self.db.dialect()
    }
    async fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> store::Result<Vec<Vec<Value>>> {
        self.raw().await?.fetch_all(sql, params, types).await
    }
    async fn fetch_named(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> store::Result<(Vec<String>, Vec<Vec<Value>>)> {
        self.raw().await?.fetch_named(sql, params).await
    }
    async fn execute(&mut self, sql: &str, params: &[Value]) -> store::Result<u64> {
        self.raw().await?.execute(sql, params).await
    }
}

impl Exec for Lazy<'_> {
    fn runs_scripts(&self) -> bool {
        true
    }
    async fn enter_script(&mut self) -> store::Result<()> {
        if self.read_first && self.tx.is_none() {
            // Back to the pool first: on SQLite the pool may have no other connection.
            self.conn = None;
            self.tx = Some(self.db.begin_read().await?);
        }
        Ok(())
    }
}

pub(crate) fn to_json_row(columns: &[OutputColumn], row: Vec<Value>) -> Json {
    let mut m = Map::with_capacity(row.len() + 1);
    for (col, v) in columns.iter().zip(row) {
        m.insert(col.name.clone(), v.to_json());
    }
    m.insert("_rs".into(), Json::from("Q"));
    Json::Object(m)
}

/// A query's rows (as the wire shows them) and, when asked, its total count.
pub(crate) async fn fetch<E: Exec>(
    exec: &mut E,
    compiled: &Compiled,
) -> Result<(Vec<Json>, Option<Json>)> {
    let types: Vec<AttrType> = compiled.columns.iter().map(|c| c.ty).collect();
    let rows = exec
        .fetch_all(&compiled.select.sql, &compiled.select.params, &types)
        .await?;
    let total = match &compiled.count {
        Some(count) => Some(
            exec.fetch_all(&count.sql, &count.params, &[AttrType::Integer])
                .await?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .map_or(Json::from(0), |v| v.to_json()),
        ),
        None => None,
    };
    let rows = rows
        .into_iter()
        .map(|r| to_json_row(&compiled.columns, r))
        .collect();
    Ok((rows, total))
}

fn bad(alias: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{alias}: {msg}"))
}

fn describe_key(key: &[(String, Value)]) -> String {
    key.iter()
        .map(|(k, v)| format!("{k}={}", v.to_json()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row as written: for inserts with server-made keys, with the new key.
fn keyed_row<'r>(ds: &Datasource, row: &'r WriteRow) -> std::borrow::Cow<'r, WriteRow> {
    if row.op == RowOp::Insert && ds.key_generation == KeyGeneration::Uuid {
        // The server makes the key; the compiler reads no randomness.
        let mut row = row.clone();
        for k in &ds.primary_key {
            row.values
                .push((k.clone(), Value::Text(uuid::Uuid::new_v4().to_string())));
        }
        std::borrow::Cow::Owned(row)
    } else {
        std::borrow::Cow::Borrowed(row)
    }
}

/// A database error while writing row `i`, named by alias and row.
fn row_error(alias: &str, i: usize, e: store::StoreError) -> Error {
    match e {
        store::StoreError::Duplicate(_) => Error::Conflict(format!(
            "{alias}: row {i}: A row with the same key already exists."
        )),
        store::StoreError::Constraint(detail) => {
            tracing::info!(%detail, "value rejected by the database");
            bad(
                alias,
                format!(
                    "row {i}: A value was rejected by the database (type, length or a required value)."
                ),
            )
        }
        e => Error::Store(e),
    }
}

/// What a write returns, computed once per alias: the columns and their types.
pub(crate) struct Returning {
    columns: Vec<OutputColumn>,
    types: Vec<AttrType>,
}

impl Returning {
    pub fn of(ds: &Datasource) -> Returning {
        let columns = returning_columns(ds);
        let types = columns.iter().map(|c| c.ty).collect();
        Returning { columns, types }
    }
}

/// Writes one row; returns it as it now stands (deleted rows as they were).
pub(crate) async fn write_row<E: Exec>(
    exec: &mut E,
    wctx: &WriteContext<'_>,
    alias: &str,
    ds: &Datasource,
    ret: &Returning,
    i: usize,
    row: &WriteRow,
) -> Result<Json> {
    let row = keyed_row(ds, row);
    let row = row.as_ref();
    let st = compile_write(ds, row, wctx).map_err(|e| bad(alias, e))?;
    if wctx.dialect == Dialect::Mysql {
        return write_row_mysql(exec, wctx, alias, ds, ret, i, row, st).await;
    }
    let returned = exec
        .fetch_all(&st.sql, &st.params, &ret.types)
        .await
        .map_err(|e| row_error(alias, i, e))?;
    let Some(stored) = returned.into_iter().next() else {
        return Err(missed(exec, wctx, alias, ds, i, row).await);
    };
    Ok(to_json_row(&ret.columns, stored))
}

/// A keyed write that matched no row: 404 if the key is gone, else 409 (stale lock).
async fn missed<E: Exec>(
    exec: &mut E,
    wctx: &WriteContext<'_>,
    alias: &str,
    ds: &Datasource,
    i: usize,
    row: &WriteRow,
) -> Error {
    let lookup = match compile_lookup(ds, &row.key, wctx.dialect) {
        Ok(l) => l,
        Err(e) => return bad(alias, e),
    };
    let exists = match exec
        .fetch_all(&lookup.sql, &lookup.params, &[AttrType::DateTime])
        .await
    {
        Ok(rows) => !rows.is_empty(),
        Err(e) => return Error::Store(e),
    };
    let key = describe_key(&row.key);
    if exists {
        Error::Conflict(format!(
            "{alias}: row {i} ({key}) was changed by someone else since the given lastUpdateDate; query it again"
        ))
    } else {
        Error::NotFound(format!("{alias}: row {i} ({key}) does not exist"))
    }
}

/// MySQL has no `RETURNING`: an insert or update is read back by its key after it ran (an
/// auto key through `LAST_INSERT_ID()`), a delete reads the row (locked) before it runs.
#[allow(clippy::too_many_arguments)]
async fn write_row_mysql<E: Exec>(
    exec: &mut E,
    wctx: &WriteContext<'_>,
    alias: &str,
    ds: &Datasource,
    ret: &Returning,
    i: usize,
    row: &WriteRow,
    st: query::Statement,
) -> Result<Json> {
    let reread = |key: &[(String, Value)], lock: bool| {
        compile_reread(ds, key, wctx.dialect, lock).map_err(|e| bad(alias, e))
    };
    let read = async |exec: &mut E, st: query::Statement| -> Result<Option<Vec<Value>>> {
        Ok(exec
            .fetch_all(&st.sql, &st.params, &ret.types)
            .await?
            .into_iter()
            .next())
    };
    match row.op {
        RowOp::Insert => {
            exec.execute(&st.sql, &st.params)
                .await
                .map_err(|e| row_error(alias, i, e))?;
            let mut key = Vec::new();
            for k in &ds.primary_key {
                let given = row
                    .values
                    .iter()
                    .chain(&row.key)
                    .find(|(code, _)| code == k)
                    .map(|(_, v)| v.clone());
                let v = match given {
                    Some(v) => v,
                    None => exec
                        .fetch_all("SELECT LAST_INSERT_ID()", &[], &[AttrType::Integer])
                        .await?
                        .into_iter()
                        .flatten()
                        .next()
                        .unwrap_or(Value::Null),
                };
                key.push((k.clone(), v));
            }
            let stored = read(exec, reread(&key, false)?).await?.ok_or_else(|| {
                Error::Internal(format!("{alias}: row {i}: inserted row not found"))
            })?;
            Ok(to_json_row(&ret.columns, stored))
        }
        RowOp::Update => {
            let n = exec
                .execute(&st.sql, &st.params)
                .await
                .map_err(|e| row_error(alias, i, e))?;
            if n == 0 {
                return Err(missed(exec, wctx, alias, ds, i, row).await);
            }
            let stored = read(exec, reread(&row.key, false)?).await?.ok_or_else(|| {
                Error::Internal(format!("{alias}: row {i}: updated row not found"))
            })?;
            Ok(to_json_row(&ret.columns, stored))
        }
        RowOp::Delete => {
            let before = read(exec, reread(&row.key, true)?).await?;
            let n = exec
                .execute(&st.sql, &st.params)
                .await
                .map_err(|e| row_error(alias, i, e))?;
            match before {
                Some(stored) if n > 0 => Ok(to_json_row(&ret.columns, stored)),
                _ => Err(missed(exec, wctx, alias, ds, i, row).await),
            }
        }
    }
}
