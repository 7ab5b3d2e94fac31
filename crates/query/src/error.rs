//! The crate's one error type.

/// A query the compiler refuses. The message is meant for the client (the server sends it in a
/// 400): it names the offending field, attribute, operator or value, and never reveals metadata
/// the client may not see (a write-only attribute is reported as unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
}

impl QueryError {
    pub fn new(message: impl Into<String>) -> Self {
        QueryError {
            message: message.into(),
        }
    }
}

/// Shorthand for `Err(QueryError::new(format!(...)))`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::QueryError::new(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// A client value for an error message: its JSON, cut to a readable length.
pub(crate) fn show(v: &serde_json::Value) -> String {
    const MAX: usize = 60;
    let s = v.to_string();
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}
