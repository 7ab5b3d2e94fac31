//! Handlers, one module per resource, named `verb_noun`.

pub mod auth;
pub mod catalog;
pub mod data;
pub mod functions;
pub mod openapi;
pub mod patches;
pub mod playground;
pub mod sso;
pub mod status;
pub mod stream;
pub mod wf;

use axum::body::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};

use crate::auth::guard::Authed;
use crate::error::ApiError;

/// The platform role that may see the SQL a request ran (`?debug=sql`).
pub const DEVELOPER_ROLE: &str = "developer";

/// Whether the caller holds `developer` in the platform app `cloudio`.
pub fn is_developer(authed: &Authed) -> bool {
    authed
        .roles
        .iter()
        .any(|(app, role)| app == store::PLATFORM_APP && role == DEVELOPER_ROLE)
}

/// The query parameters of `/v1/api` and `/v1/fn` besides `csrf` (which the guard reads).
#[derive(Debug, Default, Deserialize)]
pub struct DebugParams {
    /// `sql`: answer with every statement the request ran (developers only).
    debug: Option<String>,
}

impl DebugParams {
    /// Whether the SQL echo was asked for, and may be given: anything but `sql` is a 400, a
    /// caller without the `developer` role a 403.
    pub fn sql(&self, authed: &Authed) -> Result<bool, ApiError> {
        match self.debug.as_deref() {
            None => Ok(false),
            Some("sql") if is_developer(authed) => Ok(true),
            Some("sql") => Err(ApiError::AccessDenied(format!(
                "Access Denied - `debug=sql` requires the `{DEVELOPER_ROLE}` role of app `{}`.",
                store::PLATFORM_APP
            ))),
            Some(other) => Err(ApiError::BadRequest(format!(
                "unknown `debug` value {other:?}; the one value is `sql`"
            ))),
        }
    }
}

/// The `debug` member of an answer: every statement, in the order it ran.
pub fn debug_json(statements: Vec<crate::engine::Statement>) -> Json {
    let list: Vec<Json> = statements
        .into_iter()
        .map(|s| {
            json!({
                "sql": s.sql,
                "binds": s.binds,
                "elapsedMs": s.micros as f64 / 1000.0,
                "rows": s.rows,
            })
        })
        .collect();
    json!({"statements": list})
}

/// Parses a JSON body with an error that says what is wrong and where. An empty body parses as
/// `{}` where the endpoint allows it.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes, empty_ok: bool) -> Result<T, ApiError> {
    let text: &[u8] = if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request body",
            _ => "malformed JSON",
        };
        ApiError::BadRequest(format!("{what}: {e}"))
    })
}
