//! What the nodes sharing one database share beyond data: a start-up lock, secrets made at
//! first start, the metadata version, and (PostgreSQL) a `NOTIFY` channel for invalidations.
//!
//! - Start-up is serialised across nodes (a PostgreSQL session advisory lock held on a
//!   connection of its own), so first-start objects and app loads never race.
//! - A shared secret is inserted if absent and then read back: every node ends with the one
//!   that was stored first.
//! - The metadata version is bumped in the same transaction as any app's metadata, so a node
//!   that compares it with the version it loaded knows whether its catalog is stale, even when
//!   it missed a notification.

use query::{AttrType, Dialect, Value};
use sqlx::Connection;

use crate::db::{Db, Tx, portable};
use crate::error::{Result, StoreError};
use crate::platform::Store;

/// Channel of PostgreSQL `NOTIFY` for cluster invalidations.
pub const CLUSTER_CHANNEL: &str = "cloudio_cluster";

/// The advisory lock held while a node starts ("cloudio" + 2).
const START_LOCK: i64 = 0x636c_6f75_6469_6f02;

/// Held while a node starts (bootstrap, app loads); dropping or releasing it lets the next
/// node start. On SQLite there is nothing to hold: one process writes at a time anyway.
pub enum StartLock {
    None,
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

impl StartLock {
    pub async fn release(self) {
        // Closing the session releases its locks; a failed close drops the socket, which does
        // the same.
        match self {
            StartLock::None => {}
            StartLock::Postgres(conn) => {
                let _ = conn.close().await;
            }
            StartLock::Mysql(conn) => {
                let _ = conn.close().await;
            }
        }
    }
}

impl Db {
    /// Waits until no other node is starting, then holds the start-up lock.
    pub async fn start_lock(&self) -> Result<StartLock> {
        match self {
            Db::Postgres(pool) => {
                let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(START_LOCK)
                    .execute(&mut conn)
                    .await?;
                Ok(StartLock::Postgres(conn))
            }
            Db::Mysql { database, .. } => {
                let (opts, _) = crate::db::mysql_options_of(self)?;
                let mut conn = sqlx::MySqlConnection::connect_with(&opts).await?;
                let got: (Option<i64>,) = sqlx::query_as("SELECT GET_LOCK(?, 600)")
                    .bind(format!("cloudio.start.{database}"))
                    .fetch_one(&mut conn)
                    .await?;
                if got.0 != Some(1) {
                    return Err(StoreError::Unavailable(
                        "another node held the start-up lock for 10 minutes".into(),
                    ));
                }
                Ok(StartLock::Mysql(conn))
            }
            Db::Sqlite { .. } => Ok(StartLock::None),
        }
    }
}

impl Store {
    /// The shared secret `name`: `candidate` if none was stored yet, else the stored one.
    pub async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String> {
        let table = self.t("io_cluster");
        let insert = match self.dialect() {
            Dialect::Mysql => {
                format!("INSERT IGNORE INTO {table} (NAME, TEXT_VALUE) VALUES (?, ?)")
            }
            _ => format!(
                "INSERT INTO {table} (NAME, TEXT_VALUE) VALUES (?, ?) ON CONFLICT DO NOTHING"
            ),
        };
        self.db
            .execute(
                &portable(self.dialect(), &insert),
                &[Value::Text(name.into()), Value::Text(candidate.into())],
            )
            .await?;
        let rows = self
            .db
            .fetch_all(
                &portable(
                    self.dialect(),
                    &format!("SELECT TEXT_VALUE FROM {table} WHERE NAME = ?"),
                ),
                &[Value::Text(name.into())],
                &[AttrType::String],
            )
            .await?;
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(Value::Text(s)) => Ok(s),
            _ => Err(StoreError::Other(format!(
                "shared secret `{name}` is missing"
            ))),
        }
    }

    /// The metadata version: changes whenever any app's metadata does.
    pub async fn metadata_version(&self) -> Result<i64> {
        let sql = format!(
            "SELECT VERSION FROM {} WHERE NAME = 'metadata'",
            self.t("io_cluster")
        );
        let rows = self.db.fetch_all(&sql, &[], &[AttrType::Integer]).await?;
        Ok(
            match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
                Some(Value::Int(v)) => v,
                _ => 0,
            },
        )
    }

    /// Bumps the metadata version inside the transaction that changes metadata.
    pub(crate) async fn bump_metadata_version(&self, tx: &mut Tx) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET VERSION = VERSION + 1 WHERE NAME = 'metadata'",
            self.t("io_cluster")
        );
        tx.raw().execute(&sql, &[]).await?;
        Ok(())
    }

    /// Sends `payload` to every node listening (PostgreSQL `NOTIFY`; nothing elsewhere).
    pub async fn notify_cluster(&self, payload: &str) -> Result<()> {
        if self.dialect() != Dialect::Postgres {
            return Ok(());
        }
        self.db
            .execute(
                &format!("SELECT pg_notify('{CLUSTER_CHANNEL}', $1)"),
                &[Value::Text(payload.into())],
            )
            .await?;
        Ok(())
    }

    /// Whether this database carries cluster notifications ([`Store::listen_cluster`]).
    pub fn has_notifications(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// Listens for cluster notifications on a connection of its own until it fails: `on(None)`
    /// once listening (anything sent before may have been missed), then `on(Some(payload))` for
    /// each notification. Returns at once where the database has no notifications.
    pub async fn listen_cluster(&self, mut on: impl FnMut(Option<String>) + Send) -> Result<()> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(());
        };
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        listener.listen(CLUSTER_CHANNEL).await?;
        on(None);
        loop {
            // `None`: the connection was lost. Not the silent reconnect of `recv`: the caller
            // must know that notifications may have been missed meanwhile.
            match listener.try_recv().await? {
                Some(n) => on(Some(n.payload().to_string())),
                None => {
                    return Err(StoreError::Unavailable(
                        "the notification connection was lost".into(),
                    ));
                }
            }
        }
    }
}
