//! The store's one error type. Driver errors are translated here, once.

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused, pool timed out, closed).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Every connection of the pool stayed in use for the whole acquire timeout: the server is
    /// busy, the database is not down.
    #[error("no database connection became free: {0}")]
    Busy(String),
    /// A unique or primary-key constraint was violated.
    #[error("duplicate value: {0}")]
    Duplicate(String),
    /// A value did not fit the column (type, length, NOT NULL, foreign key, check).
    #[error("value rejected by the database: {0}")]
    Constraint(String),
    /// A migration file failed; names the file and the statement.
    #[error("migration {file} failed at statement {statement}: {message}")]
    Migration {
        file: String,
        statement: usize,
        message: String,
    },
    /// The database file is not a database or is damaged (SQLite NOTADB, CORRUPT).
    #[error("database file corrupt: {0}")]
    Corrupt(String),
    /// The database chose this transaction as a deadlock's victim, or a lock wait ran out
    /// (MySQL/InnoDB, whose gap locks make concurrent upserts of one key deadlock where
    /// PostgreSQL queues them): running the transaction again succeeds.
    #[error("transaction aborted by a lock conflict: {0}")]
    Retry(String),
    /// Invalid configuration or metadata (e.g. an unsupported database URL).
    #[error("{0}")]
    Invalid(String),
    /// Anything else from the driver; logged, never shown to clients.
    #[error("database error: {0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The one table of driver error codes. SQLite: the extended result code (the same numbers
/// through sqlx and rusqlite); PostgreSQL: the SQLSTATE. `None`: not one we translate.
fn sqlite_code(extended: i32, message: String) -> Option<StoreError> {
    Some(match (extended, extended & 0xff) {
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
        (2067 | 1555, _) => StoreError::Duplicate(message),
        // Any other constraint (NOT NULL 1299, CHECK 275, FOREIGN KEY 787, ...), and a
        // datatype mismatch (20).
        (_, 19) | (20, _) => StoreError::Constraint(message),
        // NOTADB, and CORRUPT with its extended codes: the file is not (or no longer) ours.
        (26, _) | (_, 11) => StoreError::Corrupt(message),
        // READONLY, IOERR, FULL, CANTOPEN: the file is not usable.
        (_, 8 | 10 | 13 | 14) => StoreError::Unavailable(message),
        _ => return None,
    })
}

fn pg_code(sqlstate: &str, message: String) -> Option<StoreError> {
    Some(match sqlstate {
        "23505" => StoreError::Duplicate(message),
        // Class 23 (integrity) and 22 (data exception).
        c if c.starts_with("23") || c.starts_with("22") => StoreError::Constraint(message),
        // Admin shutdown, cannot connect now, connection exceptions.
        c if c.starts_with("57P") || c.starts_with("08") => StoreError::Unavailable(message),
        _ => return None,
    })
}

/// MySQL/MariaDB error numbers (their SQLSTATE 23000 covers duplicates and foreign keys alike).
fn mysql_code(number: u16, message: String) -> Option<StoreError> {
    Some(match number {
        // ER_DUP_ENTRY, ER_DUP_KEY, ER_DUP_UNIQUE
        1062 | 1022 | 1169 => StoreError::Duplicate(message),
        // NOT NULL, foreign keys (both directions), too long, out of range, bad value, check.
        1048 | 1451 | 1452 | 1216 | 1217 | 1406 | 1264 | 1265 | 1366 | 1292 | 3819 | 4025 => {
            StoreError::Constraint(message)
        }
        // Deadlock, lock wait timeout.
        1213 | 1205 => StoreError::Retry(message),
        // Server gone, lost connection, too many connections, shutting down.
        2002 | 2003 | 2006 | 2013 | 1040 | 1053 => StoreError::Unavailable(message),
        _ => return None,
    })
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::PoolTimedOut => StoreError::Busy(e.to_string()),
            E::Io(_) | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => {
                StoreError::Unavailable(e.to_string())
            }
            E::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let message = db.message().to_string();
                let known = if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    code.parse().ok().and_then(|n| sqlite_code(n, message))
                } else if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    mysql_code(my.number(), message)
                } else {
                    pg_code(&code, message)
                };
                known.unwrap_or_else(|| StoreError::Other(e.to_string()))
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(err, msg) => {
                let text = msg.clone().unwrap_or_else(|| err.to_string());
                sqlite_code(err.extended_code, text)
                    .unwrap_or_else(|| StoreError::Other(e.to_string()))
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}
