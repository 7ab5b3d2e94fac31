//! Credentials: header parsing, password hashing, JWTs, and the request guard.

pub mod apikey;
pub mod guard;
pub mod header;
pub mod jwt;
pub mod password;

use header::HeaderError;

/// The credential header: `Authorization`, else `Authentication` (the documentation's tables
/// name the latter, its samples send the former).
pub fn credential_header(headers: &axum::http::HeaderMap) -> Result<&str, HeaderError> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)
        .or_else(|| headers.get("authentication"))
        .ok_or(HeaderError::Missing)?;
    v.to_str().map_err(|_| HeaderError::Format)
}
