//! The store's one error type. Driver errors are translated here, once.

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused, pool timed out, closed).
    #[error("database unavailable: {0}")]
    Unavailable(String),
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
    /// Invalid configuration or metadata (e.g. an unsupported database URL).
    #[error("{0}")]
    Invalid(String),
    /// Anything else from the driver; logged, never shown to clients.
    #[error("database error: {0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => {
                StoreError::Unavailable(e.to_string())
            }
            E::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                match code.as_str() {
                    // PostgreSQL unique_violation; SQLite SQLITE_CONSTRAINT_UNIQUE / PRIMARYKEY.
                    "23505" | "2067" | "1555" => StoreError::Duplicate(db.message().to_string()),
                    // PostgreSQL class 23 (integrity) and 22 (data exception); SQLite
                    // constraint codes (NOT NULL 1299, CHECK 275, FOREIGN KEY 787) and
                    // datatype mismatch (20).
                    c if c.starts_with("23") || c.starts_with("22") => {
                        StoreError::Constraint(db.message().to_string())
                    }
                    "1299" | "275" | "787" | "19" | "20" => {
                        StoreError::Constraint(db.message().to_string())
                    }
                    // SQLite NOTADB, and CORRUPT with its extended codes (VTAB, SEQUENCE, INDEX);
                    // PostgreSQL's codes have five characters.
                    "26" | "11" | "267" | "523" | "779" => StoreError::Corrupt(e.to_string()),
                    // PostgreSQL admin shutdown / cannot connect now; SQLite BUSY/LOCKED stay Other.
                    c if c.starts_with("57P") || c.starts_with("08") => {
                        StoreError::Unavailable(db.message().to_string())
                    }
                    _ => StoreError::Other(e.to_string()),
                }
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}
