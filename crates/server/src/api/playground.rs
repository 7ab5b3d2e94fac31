//! `GET /playground`: the API playground, one self-contained page embedded in the binary (no
//! CDN, no request to anywhere but this server); `GET /` redirects there.
//!
//! The page logs in with `/v1/auth`, reads `/v1/catalog` for the datasources, attributes and
//! operators the user may use, and sends `/v1/api` and `/v1/fn` requests; a developer also sees
//! the SQL each request ran (`?debug=sql`).

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The page (HTML, CSS and JavaScript in one file).
pub const PAGE: &str = include_str!("../../assets/playground.html");

/// The page's Content-Security-Policy: scripts are only the page's own inline script (by its
/// hash), requests go only to this server, nothing may frame it.
fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(s, _)| s);
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'none'; base-uri 'none'; \
             frame-ancestors 'none'"
        )
    })
}

/// `GET /`: to the playground.
#[utoipa::path(get, path = "/", tag = "status",
    summary = "To the playground",
    security(()),
    responses((status = 303, description = "Redirect to `/playground`",
        headers(("location" = String, description = "`/playground`")))))]
pub async fn get_root() -> Redirect {
    Redirect::to("/playground")
}

/// `GET /playground`.
#[utoipa::path(get, path = "/playground", tag = "status",
    summary = "The API playground",
    description = "A page that logs in, lists the datasources the user may use, builds queries and posts, sends them and shows the answer, the elapsed time and (for developers) the SQL.",
    security(()),
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn get_playground() -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(policy()) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}
