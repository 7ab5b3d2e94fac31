//! The engine's one error type; `server::error` maps it to HTTP once.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad alias, query, row or argument; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// A datasource or function the user may not use (or that does not exist: same answer).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    /// Optimistic locking, or a duplicate key.
    #[error("{0}")]
    Conflict(String),
    /// `throw new UserError(msg)`: the message, exactly.
    #[error("{0}")]
    User(String),
    /// A script failed: "<Datasource>.<hook>: <error>" or "<module>.<function>: <error>".
    #[error("{0}")]
    Script(String),
    /// Every script worker stayed busy for the whole wall-clock limit.
    #[error("all script workers are busy")]
    Busy,
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A failure inside the server (logged; the client sees only the request id).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The message a script sees when one of its `db` calls fails: what a client would see,
    /// never a driver's text.
    pub fn public_message(&self) -> String {
        match self {
            Error::Store(store::StoreError::Duplicate(_)) => {
                "A row with the same key already exists.".into()
            }
            Error::Store(store::StoreError::Constraint(_)) => {
                "A value was rejected by the database (type, length or a required value).".into()
            }
            Error::Store(store::StoreError::Busy(_)) => "The server is busy.".into(),
            Error::Store(store::StoreError::Unavailable(_)) => {
                "The database is unavailable.".into()
            }
            Error::Store(e) => {
                tracing::warn!(error = %e, "a script's db call failed");
                "The database failed to run the statement (details are in the server log).".into()
            }
            Error::Busy => "All script workers are busy.".into(),
            Error::Internal(m) => {
                tracing::error!(error = %m, "a script's db call failed inside the server");
                "The server failed to run this call (details are in the server log).".into()
            }
            e => e.to_string(),
        }
    }
}

impl From<script::ScriptError> for Error {
    fn from(e: script::ScriptError) -> Self {
        match e {
            script::ScriptError::User(m) => Error::User(m),
            script::ScriptError::Script(m) => Error::Script(m),
            script::ScriptError::NotFound(m) => Error::NotFound(m),
            script::ScriptError::Busy => Error::Busy,
        }
    }
}

impl From<query::QueryError> for Error {
    fn from(e: query::QueryError) -> Self {
        Error::Invalid(e.to_string())
    }
}
