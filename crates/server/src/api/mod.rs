//! Handlers, one module per resource, named `verb_noun`.

pub mod auth;
pub mod data;
pub mod functions;
pub mod patches;
pub mod sso;
pub mod status;
pub mod stream;
pub mod wf;

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
